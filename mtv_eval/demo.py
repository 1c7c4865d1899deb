"""The embedded default: MTV end to end on a tiny model built locally, with no GPU and no hub.

Until the trained toy LMM exists, this runs the core (extraction, head search, artifact
round trip, zero-shot intervention) on a tiny random-weight LLaVA-style model. Its
accuracy means nothing (random weights); it proves the pipeline runs on a fresh machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtv_eval.adapter import ProcessorAdapter
from mtv_eval.artifact import MTV
from mtv_eval.bench import synthetic_pool
from mtv_eval.config import ExtractConfig, MTVConfig, SearchConfig
from mtv_eval.engine.forward import forward_logits
from mtv_eval.method import apply_mtv, build_mtv
from mtv_eval.tiny import build_tiny, load_tiny


def run_demo(out: str = "runs/demo", steps: int = 60, seed: int = 0) -> int:
    out_dir = Path(out)
    print("mtv-eval demo: the core engine on a TINY RANDOM-WEIGHT LLaVA-style model built locally")
    print("(no trained weights, so scores are meaningless: this shows the pipeline, not MTV's accuracy)")
    checkpoint = build_tiny("llava", out_dir / "tiny-llava", seed=seed)
    model, processor = load_tiny(checkpoint)
    adapter = ProcessorAdapter(model, processor)
    print(f"heads found: {adapter.sites.num_layers} layers x {adapter.sites.num_heads} heads x "
          f"{adapter.sites.head_dim} dims at {adapter.sites.names[0]} ...")
    pool = synthetic_pool(40, size=32, seed=seed)
    config = MTVConfig(
        extract=ExtractConfig(shots=4, iterations=20, batch_size=5, seed=seed),
        search=SearchConfig(steps=steps, pool_size=20, select_examples=10, seed=seed),
    )
    mtv = build_mtv(adapter, pool[:20], pool[20:], config, task="synthetic_demo")
    json_path = mtv.save(out_dir / "mtv" / "synthetic_demo")
    loaded = MTV.load(json_path)
    inputs = adapter.encode([[]], [pool[-1]]).inputs
    with torch.no_grad():
        clean = forward_logits(model, adapter.sites, inputs)
        with apply_mtv(model, adapter.sites, loaded):
            edited = forward_logits(model, adapter.sites, inputs)
    print(f"selected heads: {loaded.num_heads_selected} of {adapter.sites.num_layers * adapter.sites.num_heads}")
    print(f"artifact: {json_path} (+ .safetensors), content hash {loaded.metadata['content_hash']}")
    print(f"zero-shot logits changed by the MTV: max |delta| = {(edited - clean).abs().max().item():.4f}")
    print(f"build time: {mtv.metadata['total_seconds']:.1f} s")
    return 0
