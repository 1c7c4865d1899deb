"""The embedded default: the whole comparison on the trained toy LMM, on a CPU, offline.

`mtv-eval demo` sweeps the toy LMM shipped inside the package (`mtv-eval/toy`, a 1.5M
parameter LLaVA-style model trained to do in-context learning on the toy world) over the
six `toy_*` tasks: zero-shot, ICL with 1 and 2 shots (2 is all its 75-token context
holds), and MTV with budgets from 10 to 800 support examples, far beyond what fits the
context. It then prints the comparison table and writes the plots. Everything goes
through the same lmms-eval wrappers, tasks, sweep and aggregator as the real benchmarks.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mtv_eval.toy import TOY_MODEL

TOY_TASKS = (
    "toy_single_colour",
    "toy_single_shape",
    "toy_single_position",
    "toy_multi_colour",
    "toy_multi_shape",
    "toy_multi_count",
)
MTV_BUDGETS = ("2x5", "2x25", "2x100", "2x400")
MODEL_ARGS = f"pretrained={TOY_MODEL},batch_size=64"


def run_demo(
    out: str = "runs/demo",
    tasks: tuple[str, ...] = TOY_TASKS,
    budgets: tuple[str, ...] = MTV_BUDGETS,
    limit: int | None = None,
    seed: int = 0,
    methods: tuple[str, ...] = ("mtv",),
    seeds: tuple[int, ...] = (),
    jobs: int | None = None,
) -> int:
    """Sweep, compare and plot; returns the exit code (1 when a cell failed).

    `methods` adds the baselines (random, all, fv) on every budget; `seeds` builds every
    activation cell once per seed (see `mtv_eval.harness.sweep`). `jobs` cells run at once
    in worker processes; None = 2 where there are two cores: one toy cell barely uses a
    second core, so two cells side by side nearly halve the demo's time.
    """
    from mtv_eval.harness.sweep import run_sweep, summarize
    from mtv_eval.reporting.plots import plot_collection
    from mtv_eval.reporting.results import collect, render

    out_dir = Path(out)
    print(
        f"mtv-eval demo: the trained toy LMM ({TOY_MODEL}) on {len(tasks)} toy tasks, "
        f"zero-shot vs ICL (1-2 shots, its context limit) vs MTV ({', '.join(budgets)} shots x iterations)",
        flush=True,
    )
    started = time.perf_counter()
    report = run_sweep(
        model="hf_mtv",
        model_args=f"pretrained={TOY_MODEL}",
        tasks=list(tasks),
        out=out_dir,
        limit=limit,
        batch_size=64,
        mtv_budgets=list(budgets),
        seed=seed,
        methods=list(methods),
        seeds=list(seeds),
        jobs=min(2, os.cpu_count() or 1) if jobs is None else jobs,
    )
    print(summarize(report))
    collection = collect([out_dir])
    table = render(collection, fmt="github")
    (out_dir / "comparison.md").write_text(table + "\n")
    (out_dir / "comparison.json").write_text(render(collection, fmt="json") + "\n")
    plot_collection(collection, out_dir / "comparison.png")
    print(table)
    print(
        f"\nwrote {out_dir / 'comparison.md'}, {out_dir / 'comparison.json'} and {out_dir / 'comparison.png'} "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(run_demo())
