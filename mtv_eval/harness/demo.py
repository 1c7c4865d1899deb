"""The embedded default: the whole comparison on the trained toy LMM, on a CPU, offline.

`mtv-eval demo` sweeps the toy LMM shipped inside the package (`mtv-eval/toy`, a 1.5M
parameter LLaVA-style model trained to do in-context learning on the toy world) over the
eight `toy_*` tasks: zero-shot, ICL with 1 and 2 shots (2 is all its 75-token context
holds), MTV on budgets of 10, 100 and 800 support examples, far beyond what fits the
context, each built with three seeds, and the baselines (random heads, all heads, function
vectors) on the largest budget. Every activation method runs with `mtv_pool=budget`: it
sees only the S x I support examples of its budget, its head search included, so the
budget counts every example it uses. It then prints the comparison table and writes the
plots. Everything goes through the same lmms-eval wrappers, tasks, sweep and aggregator as
the real benchmarks; the cells run in two worker processes (`jobs`).
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
    "toy_single_size",
    "toy_multi_colour",
    "toy_multi_shape",
    "toy_multi_count",
    "toy_multi_size",
)
MTV_BUDGETS = ("2x5", "2x50", "2x400")
MTV_SEEDS = (0, 1, 2)
BASELINES = ("random", "all", "fv")
# The model_args of every demo cell (the sweep adds mode, shots, budget and seed per cell).
MODEL_ARGS = f"pretrained={TOY_MODEL},mtv_pool=budget"


def run_demo(
    out: str = "runs/demo",
    tasks: tuple[str, ...] = TOY_TASKS,
    budgets: tuple[str, ...] = MTV_BUDGETS,
    limit: int | None = None,
    seed: int = 0,
    seeds: tuple[int, ...] = MTV_SEEDS,
    baselines: tuple[str, ...] = BASELINES,
    jobs: int | None = None,
) -> int:
    """Sweep, compare and plot; returns the exit code (1 when a cell failed).

    Two sweeps share `out`: zero-shot, ICL and MTV on every budget, built once per seed of
    `seeds`; then each of `baselines` on the largest budget with the first seed (random
    heads reuse that MTV, all heads and FV its means). `jobs` cells run at once in worker
    processes; None = 2 where there are two cores: one toy cell barely uses a second core,
    so two cells side by side nearly halve the demo's time.
    """
    from mtv_eval.harness.sweep import SweepError, run_sweep, summarize
    from mtv_eval.methods.vocabulary import ACTIVATION_KINDS
    from mtv_eval.reporting.plots import plot_collection
    from mtv_eval.reporting.results import collect, render

    unknown = [b for b in baselines if b not in ACTIVATION_KINDS or b == "mtv"]
    if unknown:  # checked before the first sweep, not after its minutes of work
        known = ", ".join(k for k in ACTIVATION_KINDS if k != "mtv")
        raise SweepError(f"demo: unknown baseline(s) {', '.join(unknown)}; use {known}")
    if not seeds or not budgets:
        raise SweepError("demo: seeds and budgets must not be empty")
    out_dir = Path(out)
    print(
        f"mtv-eval demo: the trained toy LMM ({TOY_MODEL}) on {len(tasks)} toy tasks, "
        f"zero-shot vs ICL (1-2 shots, its context limit) vs MTV ({', '.join(budgets)} shots x iterations, "
        f"seeds {', '.join(map(str, seeds))}) vs {', '.join(baselines)} ({budgets[-1]})",
        flush=True,
    )
    started = time.perf_counter()
    common = dict(
        model="hf_mtv",
        model_args=MODEL_ARGS,
        tasks=list(tasks),
        out=out_dir,
        limit=limit,
        batch_size=64,
        seed=seed,
        jobs=min(2, os.cpu_count() or 1) if jobs is None else jobs,
    )
    report = run_sweep(**common, mtv_budgets=list(budgets), methods=["mtv"], seeds=list(seeds))
    print(summarize(report))
    if baselines:
        baseline_report = run_sweep(**common, mtv_budgets=[budgets[-1]], methods=list(baselines), seeds=list(seeds[:1]))
        print(summarize(baseline_report))
        report.outcomes += [o for o in baseline_report.outcomes if o.status != "skipped"]
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
