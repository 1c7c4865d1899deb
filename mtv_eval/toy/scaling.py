"""Does MTV keep improving as it compresses more examples? A direct probe of a toy checkpoint.

Per task: zero-shot and ICL accuracy (shots from the noised support pool), then one MTV
per (budget, seed), built exactly as the `hf_mtv` wrapper builds it (the same support pool
of `SUPPORT_SIZE` noised examples, the same seeded head-search subset of `search_examples`,
the paper's search settings) and scored zero-shot on held-out queries. It skips lmms-eval,
so it runs anywhere torch does (the GPU machine too) and several can run at once; the demo
(`mtv-eval demo`) measures the same thing through lmms-eval. It served to choose the toy
world's noise and the toy model's training (results/toy_training/scaling*.json).

    python -m mtv_eval.toy.scaling --checkpoint mtv_eval/toy/checkpoint --noise 0.85 \\
        --budgets 2x5,2x50,2x400 --seeds 0,1,2 --out scaling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtv_eval.config import ExtractConfig, MTVConfig, SearchConfig
from mtv_eval.harness.cache import split_support
from mtv_eval.methods.mtv import build_mtv
from mtv_eval.models.adapter import TEMPLATES, ProcessorAdapter
from mtv_eval.toy import CHECKPOINT, world
from mtv_eval.toy.evaluate_icl import icl_accuracy
from mtv_eval.toy.mtv_check import zero_shot_accuracy

SUPPORT_SIZE = 512  # the toy tasks' support split (tasks/toy/*.yaml)
SEARCH_EXAMPLES = 100  # the toy tasks' search_examples


def parse_budgets(text: str) -> list[tuple[int, int]]:
    """`2x5,2x400` -> [(2, 5), (2, 400)] (shots x iterations)."""
    out = []
    for part in text.split(","):
        shots, _, iterations = part.strip().partition("x")
        if not (shots.isdigit() and iterations.isdigit()):
            raise ValueError(f"budget {part!r} is not SxI (e.g. 2x100)")
        out.append((int(shots), int(iterations)))
    return out


def probe(
    adapter: ProcessorAdapter,
    tasks: Sequence[str],
    noise: float,
    budgets: Sequence[tuple[int, int]],
    seeds: Sequence[int],
    n: int = 256,
    steps: int = SearchConfig.steps,
    search_examples: int = SEARCH_EXAMPLES,
    search_within_budget: bool = False,
    log: Any = print,
    on_task: Any = None,
) -> dict[str, Any]:
    """{task: {"zero", "icl-1", "icl-2", "mtv-SxI": [accuracy per seed]}} in percent."""
    results: dict[str, Any] = {}
    for task in tasks:
        icl = icl_accuracy(adapter.model, adapter.processor, tasks=[task], shots=(0, 1, 2), n=n, noise=noise)[task]
        row: dict[str, Any] = {"zero": 100 * icl[0], "icl-1": 100 * icl[1], "icl-2": 100 * icl[2]}
        pool = world.examples(task, "support", SUPPORT_SIZE, noise=noise)
        queries = world.examples(task, "eval", n)
        for shots, iterations in budgets:
            scores = []
            for seed in seeds:
                n_search = min(search_examples, shots * iterations) if search_within_budget else search_examples
                search_pool = [pool[i] for i in split_support(len(pool), n_search, seed)]
                config = MTVConfig(
                    extract=ExtractConfig(shots=shots, iterations=iterations, batch_size=64, seed=seed),
                    search=SearchConfig(steps=steps, seed=seed),
                )
                mtv = build_mtv(adapter, pool, search_pool, config, task=task, progress=False)
                device = next(adapter.model.parameters()).device
                scores.append(100 * zero_shot_accuracy(adapter, queries, mtv.means.to(device), mtv.mask.to(device)))
            row[f"mtv-{shots}x{iterations}"] = scores
        results[task] = row
        if on_task is not None:
            on_task(results)  # a long probe keeps what it has measured
        log(f"{task}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
    return results


def _fmt(value: float | list[float]) -> str:
    if isinstance(value, list):
        spread = statistics.stdev(value) if len(value) > 1 else 0.0
        return f"{statistics.mean(value):.1f}+-{spread:.1f}"
    return f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--noise", type=float, default=world.SUPPORT_NOISE, help="support answers' noise")
    parser.add_argument("--tasks", default=",".join(world.TASKS))
    parser.add_argument("--budgets", default="2x5,2x50,2x400")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--n", type=int, default=256, help="held-out queries per task")
    parser.add_argument("--steps", type=int, default=SearchConfig.steps, help="head search steps")
    parser.add_argument("--search-examples", type=int, default=SEARCH_EXAMPLES)
    parser.add_argument(
        "--search-within-budget",
        action="store_true",
        help="the head search uses at most SxI support examples (the budget), not --search-examples",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(args.checkpoint).to(args.device).eval()
    adapter = ProcessorAdapter(model, AutoProcessor.from_pretrained(args.checkpoint), template=TEMPLATES["plain"])
    started = time.time()

    def write(results: dict[str, Any]) -> None:
        if args.out:
            record = {"args": vars(args), "seconds": round(time.time() - started, 1), "results": results}
            Path(args.out).write_text(json.dumps(record, indent=1) + "\n")

    probe(
        adapter,
        [t for t in args.tasks.split(",") if t],
        args.noise,
        parse_budgets(args.budgets),
        [int(s) for s in args.seeds.split(",")],
        n=args.n,
        steps=args.steps,
        search_examples=args.search_examples,
        search_within_budget=args.search_within_budget,
        on_task=write,
    )


if __name__ == "__main__":
    main()
