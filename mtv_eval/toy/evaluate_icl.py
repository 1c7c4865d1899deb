"""Zero-shot and k-shot ICL accuracy of a model on the toy world's held-out images.

Accuracy is first-answer-token argmax at the last prompt position: prompts are rendered
with the `plain` template and encoded, left-padded and batched, by `ProcessorAdapter`,
exactly as MTV extraction and inference will see them. Queries come from the `eval`
pool, shots from the `support` pool (answers noised with probability `noise`).

    python -m mtv_eval.toy.evaluate_icl --checkpoint mtv_eval/toy/checkpoint --n 256
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mtv_eval.data.examples import Example
from mtv_eval.toy import world

Encoder = Callable[[Sequence[Sequence[Example]], Sequence[Example]], dict[str, torch.Tensor]]


def adapter_encoder(model: Any, processor: Any) -> Encoder:
    """The project's own encoding path (`ProcessorAdapter` with the plain template)."""
    from mtv_eval.models.adapter import TEMPLATES, ProcessorAdapter

    adapter = ProcessorAdapter(model, processor, template=TEMPLATES["plain"])
    return lambda shots, queries: adapter.encode(shots, queries).inputs


def episodes(
    task: str, k: int, n: int, noise: float, seed: int = 0, support_size: int = 512
) -> tuple[list[list[Example]], list[Example]]:
    """`n` held-out queries of `task`, each with `k` shots from the (noised) support pool."""
    support = world.examples(task, "support", support_size, noise=noise, noise_seed=seed)
    queries = world.examples(task, "eval", n)
    rng = random.Random(world._seed("icl-episodes", seed, task, k, noise))
    return [world.sample_shots(support, k, rng) for _ in queries], queries


@torch.no_grad()
def icl_accuracy(
    model: Any,
    processor: Any,
    tasks: Sequence[str] = tuple(world.TASKS),
    shots: Sequence[int] = (0, 1, 2),
    n: int = 256,
    noise: float = 0.0,
    seed: int = 0,
    batch_size: int = 128,
    encoder: Encoder | None = None,
) -> dict[str, dict[int, float]]:
    """Accuracy per task and shot count: {task: {k: fraction correct}}."""
    encoder = encoder or adapter_encoder(model, processor)
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, dict[int, float]] = {}
    for task in tasks:
        out[task] = {}
        for k in shots:
            shot_lists, queries = episodes(task, k, n, noise, seed)
            correct = 0
            for start in range(0, n, batch_size):
                s, q = shot_lists[start : start + batch_size], queries[start : start + batch_size]
                inputs = {key: v.to(device) for key, v in encoder(s, q).items()}
                if device.type == "cuda":
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        logits = model(**inputs).logits[:, -1]
                else:
                    logits = model(**inputs).logits[:, -1]
                target = torch.tensor(tokenizer.convert_tokens_to_ids([ex.answer for ex in q]), device=device)
                correct += int((logits.argmax(-1) == target).sum())
            out[task][k] = correct / n
    model.train(was_training)
    return out


def summary(acc: dict[str, dict[int, float]]) -> dict[int, float]:
    """Mean accuracy over tasks, per shot count."""
    ks = next(iter(acc.values())).keys()
    return {k: sum(a[k] for a in acc.values()) / len(acc) for k in ks}


def format_table(results: dict[str, dict[str, dict[int, float]]]) -> str:
    """One row per (world, task), one column per shot count."""
    lines = []
    for name, acc in results.items():
        ks = list(next(iter(acc.values())).keys())
        lines.append(f"{name:<16}" + "".join(f"{f'{k}-shot':>9}" for k in ks))
        for task, row in {**acc, "mean": summary(acc)}.items():
            lines.append(f"  {task:<14}" + "".join(f"{100 * row[k]:9.1f}" for k in ks))
    return "\n".join(lines)


def _portable(path: str) -> str:
    """The checkpoint path relative to the working directory when it lies below it, so a committed
    result does not carry one machine's absolute path."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(Path(__file__).parent / "checkpoint"))
    parser.add_argument("--n", type=int, default=256, help="held-out queries per task and shot count")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the accuracies as JSON here")
    args = parser.parse_args(argv)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(args.checkpoint).to(args.device).eval()
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    t0 = time.time()
    results = {
        f"noise={noise}": icl_accuracy(model, processor, shots=args.shots, n=args.n, noise=noise, seed=args.seed)
        for noise in args.noise
    }
    print(format_table(results))
    print(f"({args.n} held-out queries per cell, {time.time() - t0:.1f}s on {args.device})")
    if args.out:
        payload = {
            "checkpoint": _portable(args.checkpoint),
            "n": args.n,
            "seed": args.seed,
            "accuracy": results,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
