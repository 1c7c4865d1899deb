"""Benchmarks that print figures: head-search step time, exact against fast.

Both modes score the same masks on the same example, so the ratio is the speed-up of our
head search over the public code's procedure. Variants are interleaved (A B A B ...)
and medians reported, because timings on shared machines drift between repeats.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mtv_eval.adapter import ProcessorAdapter
from mtv_eval.config import ExtractConfig
from mtv_eval.engine.mean import mean_activations
from mtv_eval.engine.search import MaskScorer
from mtv_eval.examples import Example

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synthetic_pool(count: int, size: int = 64, seed: int = 0, with_images: bool = True) -> list[Example]:
    """Random-pixel VQA-shaped examples (benchmarks only need the shapes right)."""
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "green", "yes", "no", "two", "three", "circle"]
    pool = []
    for i in range(count):
        question = f"What is shown in picture {i}? Answer with one word."
        answer = words[i % len(words)]
        if with_images:
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            segments: tuple = (Image.fromarray(pixels), question)
        else:
            segments = (question,)
        pool.append(Example(segments=segments, answer=answer, uid=f"synthetic-{i}"))
    return pool


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(variants: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each variant, run A B A B ... after one warm-up each."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarise(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def bench_search(
    arch: str = "idefics2",
    device: str = "cpu",
    dtype: str = "float32",
    samples: int = 32,
    repeats: int = 5,
    checkpoint: str | None = None,
    out: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time one head-search step (scoring `samples` masks) in exact and fast modes.

    Args:
        arch: tiny architecture to build when no checkpoint is given.
        device / dtype: where and how to run.
        samples: masks per step (32 in the paper).
        repeats: interleaved timed repeats per variant.
        checkpoint: a model folder to load instead of a tiny build.
        out: write the results as JSON here.
    """
    from mtv_eval.tiny import build_tiny, load_tiny

    torch_device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint or str(build_tiny(arch, Path(tmp) / arch, seed=seed))
        model, processor = load_tiny(path, dtype=DTYPES[dtype])
    model.to(torch_device)
    adapter = ProcessorAdapter(model, processor)
    pool = synthetic_pool(8, with_images=adapter.sites.model_type != "gpt2", seed=seed)
    means = mean_activations(adapter, pool, ExtractConfig(shots=2, iterations=4, batch_size=4), progress=False)
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(samples, adapter.sites.num_layers, adapter.sites.num_heads, generator=generator) < 0.27
    scorers = {
        "exact": MaskScorer(adapter, means, pool, mode="exact"),
        "fast_prefix_per_step": MaskScorer(adapter, means, pool, mode="fast", cache_prefixes=False),
        "fast_prefix_cached": MaskScorer(adapter, means, pool, mode="fast", cache_prefixes=True),
    }
    losses = {name: scorer.losses(0, masks) for name, scorer in scorers.items()}
    max_diff = max(float((losses[n] - losses["exact"]).abs().max()) for n in losses)
    times = time_interleaved({n: (lambda s=s: s.losses(0, masks)) for n, s in scorers.items()}, repeats, torch_device)
    stats = {name: summarise(t) for name, t in times.items()}
    exact = stats["exact"]["median_s"]
    result = {
        "benchmark": "search_step",
        "arch": adapter.sites.model_type,
        "device": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu",
        "dtype": dtype,
        "samples": samples,
        "prompt_tokens": int(adapter.encode([[]], [pool[0]]).inputs["input_ids"].shape[-1]),
        "heads": list(adapter.sites.shape[:2]),
        "max_loss_difference": max_diff,
        "timings": stats,
        "speedup_prefix_per_step": exact / stats["fast_prefix_per_step"]["median_s"],
        "speedup": exact / stats["fast_prefix_cached"]["median_s"],
        "torch": torch.__version__,
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def format_search_result(result: dict[str, Any]) -> str:
    lines = [
        f"head-search step: {result['arch']} on {result['device']} ({result['dtype']}), "
        f"{result['samples']} masks, {result['prompt_tokens']}-token prompt",
    ]
    for name, stat in result["timings"].items():
        lines.append(
            f"  {name:<22} median {stat['median_s'] * 1000:9.2f} ms  "
            f"(min {stat['min_s'] * 1000:.2f}, max {stat['max_s'] * 1000:.2f}, n={stat['n']})"
        )
    lines.append(f"  max |loss fast - loss exact| = {result['max_loss_difference']:.2e}")
    lines.append(f"  speedup with the prefix once per step: {result['speedup_prefix_per_step']:.1f}x")
    lines.append(f"speedup: {result['speedup']:.1f}")
    return "\n".join(lines)
