"""Train the toy LLaVA to do in-context learning on the toy world.

Each training episode: a family and a task drawn uniformly, k shots (0..context_shots,
one k per batch, so a batch needs no padding) and one query, all from the `train` image
pools; each shot's answer is replaced by a random answer word with probability
`--noise` (`world.noisy_answer`). The prompt is the project's `plain` template, encoded exactly as
`ProcessorAdapter.encode` encodes it (checked before training). The loss is the
cross-entropy of the answer token after every "A:" whose answer is the true one: the
query's, and the clean shots'.

    python -m mtv_eval.toy.train --out mtv_eval/toy/checkpoint --log-dir results/toy_training --seed 0

The run writes `config.json` (all settings, seed, versions, device, parameter count) and
`train_log.jsonl` (step, loss, train accuracy, held-out ICL accuracies) to `--log-dir`.
Same seed and settings give the same episodes and initial weights; on the same device
and library versions, the same checkpoint (GPU kernels may differ in the last bits).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

from mtv_eval.toy import model as toy_model
from mtv_eval.toy import world
from mtv_eval.toy.evaluate_icl import icl_accuracy, summary


@dataclass(frozen=True)
class TrainConfig:
    out: str
    log_dir: str
    seed: int = 0
    steps: int = 4000  # the committed checkpoint
    batch_size: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 300
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    noise: float = world.SUPPORT_NOISE
    max_shots: int = toy_model.CONTEXT_SHOTS
    train_pool: int = 4096
    world_seed: int = 0
    eval_every: int = 1000
    eval_n: int = 64
    model_size: str = "base"
    device: str = "auto"
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.max_shots > toy_model.CONTEXT_SHOTS:
            raise ValueError(f"max_shots {self.max_shots} exceeds the context limit of {toy_model.CONTEXT_SHOTS} shots")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError("noise must be a probability")


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class EpisodeSampler:
    """Seeded training batches: (shots per prompt, queries, per-"A:" targets or -1)."""

    def __init__(self, cfg: TrainConfig, tokenizer: transformers.PreTrainedTokenizerFast) -> None:
        self.cfg = cfg
        self.rng = random.Random(world._seed("train-episodes", cfg.seed))
        self.pools = {f: world.pool(f, "train", cfg.train_pool, cfg.world_seed) for f in world.FAMILIES}
        self.tasks = list(world.TASKS)
        self.tokenizer = tokenizer

    def batch(self) -> tuple[list[list], list, torch.Tensor]:
        rng, cfg = self.rng, self.cfg
        k = rng.randint(0, cfg.max_shots)
        shots_per_prompt, queries, targets = [], [], []
        for _ in range(cfg.batch_size):
            task = rng.choice(self.tasks)
            family, attr = world.TASKS[task]
            items = rng.sample(self.pools[family], k + 1)
            shots, row = [], []
            for item in items[:k]:
                answer = world.noisy_answer(item.attrs[attr], cfg.noise, rng)
                shots.append(world.to_example(item, task, answer))
                row.append(answer if answer == item.attrs[attr] else None)
            query = world.to_example(items[k], task)
            row.append(query.answer)
            shots_per_prompt.append(shots)
            queries.append(query)
            targets.append(row)
        ids = [[self.tokenizer.convert_tokens_to_ids(w) if w is not None else -100 for w in row] for row in targets]
        return shots_per_prompt, queries, torch.tensor(ids)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_encoding(model, processor, encoder: toy_model.FastEncoder, sampler: EpisodeSampler) -> str:
    """Assert the fast encoder gives what ProcessorAdapter.encode gives."""
    try:
        from mtv_eval.models.adapter import TEMPLATES, ProcessorAdapter
    except ImportError as err:  # the engine package may be mid-edit; training does not need it
        return f"skipped ({type(err).__name__}: {err})"
    adapter = ProcessorAdapter(model, processor, template=TEMPLATES["plain"])
    state = sampler.rng.getstate()
    for _ in range(3):
        shots, queries, _ = sampler.batch()
        ref = adapter.encode(shots[:8], queries[:8]).inputs
        fast = encoder.encode(shots[:8], queries[:8])
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(ref[key].cpu(), fast[key]), key
        assert torch.allclose(ref["pixel_values"].float().cpu(), fast["pixel_values"], atol=1e-6)
    sampler.rng.setstate(state)
    return "identical to ProcessorAdapter.encode"


def train(cfg: TrainConfig) -> dict:
    device = pick_device(cfg.device)
    log_dir = Path(cfg.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    processor = toy_model.build_processor()
    tokenizer = processor.tokenizer
    model = toy_model.build_model(tokenizer, cfg.model_size)
    n_params = toy_model.num_parameters(model)
    model.to(device)

    t_data = time.time()
    sampler = EpisodeSampler(cfg, tokenizer)
    encoder = toy_model.FastEncoder(processor)
    for family in world.FAMILIES:
        encoder.cache(sampler.pools[family])
        encoder.cache(world.pool(family, "support", 512, cfg.world_seed))
        encoder.cache(world.pool(family, "eval", max(cfg.eval_n, 256), cfg.world_seed))
    encoding_check = check_encoding(model, processor, encoder, sampler)
    print(
        f"data ready in {time.time() - t_data:.1f}s; encoding {encoding_check}; {n_params} parameters",
        flush=True,
    )

    colon = tokenizer.convert_tokens_to_ids(":")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    use_bf16 = cfg.bf16 and device.type == "cuda"
    log_path = log_dir / "train_log.jsonl"
    log = log_path.open("w")
    config_record = {
        "config": asdict(cfg),
        "command": " ".join(sys.argv),
        "parameters": n_params,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "encoding_check": encoding_check,
        "world": {
            "tasks": world.TASKS,
            "values": world.VALUES,
            "question": world.QUESTION,
            "image_size": world.IMAGE_SIZE,
        },
        "model_config": model.config.to_dict(),
    }
    (log_dir / "config.json").write_text(json.dumps(config_record, indent=1, default=str) + "\n")

    def evaluate(step: int, n: int) -> dict:
        def enc(s, q):
            return encoder.encode(s, q)

        rec = {}
        for noise in (0.0, cfg.noise):
            acc = icl_accuracy(model, processor, shots=range(cfg.max_shots + 1), n=n, noise=noise, encoder=enc)
            rec[f"noise={noise}"] = {"per_task": acc, "mean": summary(acc)}
        means = {name: {k: round(v, 3) for k, v in r["mean"].items()} for name, r in rec.items()}
        print(f"step {step}: held-out ICL accuracy by shots {means}", flush=True)
        return rec

    model.train()
    t0 = time.time()
    running_loss, running_acc, seen = 0.0, 0.0, 0
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        shots, queries, targets = sampler.batch()
        inputs = {key: v.to(device, non_blocking=True) for key, v in encoder.encode(shots, queries).items()}
        targets = targets.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            hidden = model.model(**inputs).last_hidden_state
        positions = inputs["input_ids"] == colon  # one "A:" per shot and the query, in order
        picked = hidden[positions].view(targets.shape[0], targets.shape[1], -1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model.lm_head(picked).float()
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        running_loss += float(loss.detach())
        running_acc += float((logits[:, -1].argmax(-1) == targets[:, -1]).float().mean())
        seen += 1
        last = step == cfg.steps - 1
        if (step + 1) % 100 == 0 or last:
            rec = {
                "step": step + 1,
                "loss": running_loss / seen,
                "train_query_acc": running_acc / seen,
                "lr": lr_at(step, cfg),
                "elapsed_s": round(time.time() - t0, 1),
            }
            if (step + 1) % cfg.eval_every == 0 or last:
                rec["heldout"] = evaluate(step + 1, cfg.eval_n)
            else:
                print(
                    f"step {step + 1}: loss {rec['loss']:.4f} train acc {rec['train_query_acc']:.3f} "
                    f"({rec['elapsed_s']}s)",
                    flush=True,
                )
            log.write(json.dumps(rec) + "\n")
            log.flush()
            running_loss, running_acc, seen = 0.0, 0.0, 0
    train_s = time.time() - t0
    log.close()

    model.eval()
    model.to("cpu", dtype=torch.float32)
    model.config.toy_world = {
        **model.config.toy_world,
        "train_seed": cfg.seed,
        "train_steps": cfg.steps,
        "train_noise": cfg.noise,
        "world_seed": cfg.world_seed,
    }
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cfg.out)
    processor.save_pretrained(cfg.out)
    config_record["train_seconds"] = round(train_s, 1)
    config_record["model_config"] = model.config.to_dict()
    (log_dir / "config.json").write_text(json.dumps(config_record, indent=1, default=str) + "\n")
    print(f"trained {cfg.steps} steps in {train_s:.0f}s; saved to {cfg.out}", flush=True)
    return config_record


def parse(argv: Sequence[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig(out="", log_dir="")
    parser.add_argument("--out", required=True, help="checkpoint folder (save_pretrained)")
    parser.add_argument("--log-dir", default="results/toy_training")
    for field, value in asdict(defaults).items():
        if field in ("out", "log_dir"):
            continue
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    return TrainConfig(**args)


def main(argv: Sequence[str] | None = None) -> None:
    train(parse(argv))


if __name__ == "__main__":
    main()
