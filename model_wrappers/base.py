"""The lmms-eval model class shared by every mtv-eval wrapper: zero-shot, ICL and MTV.

Only loading differs between models (`load` in each subclass); everything MTV needs
around `generate_until` lives here once:

- mode=zero: the query alone; mode=icl: K seeded support shots with their images,
  interleaved in the model's format and fitted to `max_context`; mode=mtv: the query
  alone with the task's MTV written into its heads (loaded from the cache or built at
  the first request of each task).
- batching with left padding through lmms-eval's `Collator`, `batch_size` honoured;
- per-sample accounting (prompt tokens, shots, images, generated tokens, seconds, peak
  memory) kept on the model and written as JSONL to `log_dir`.

lmms-eval's own model classes (e.g. `lmms_eval.models.simple.idefics2.Idefics2`) are not
subclassed: they assert that no extra model_args exist, hard-code float16 and load their
processor themselves, so every method would have to be overridden anyway.
"""

from __future__ import annotations

import json
import resource
from contextlib import nullcontext
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from loguru import logger as eval_logger
from tqdm.auto import tqdm

from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from mtv_eval.adapter import ProcessorAdapter
from mtv_eval.artifact import MTV, ArtifactError
from mtv_eval.config import ExtractConfig, MTVConfig, SearchConfig
from mtv_eval.engine.intervene import Intervention
from mtv_eval.examples import Example
from mtv_eval.method import model_identity
from mtv_eval.store import MTVKey, get_or_build
from model_wrappers.icl import choose_shots, fit_to_context
from model_wrappers.settings import WrapperSettings


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """bf16 on GPU and fp32 on CPU unless asked otherwise (fp16 on CPU is slow and lossy)."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    value = getattr(torch, requested, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {requested!r}; use auto, float32, bfloat16 or float16")
    return value


class MTVModel(lmms):
    """Base class of the mtv-eval lmms-eval models. Subclasses implement `load`."""

    is_simple = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.settings = WrapperSettings.from_kwargs(kwargs)
        s = self.settings
        self._device = pick_device(s.device)
        self._dtype = pick_dtype(s.dtype, self._device)
        model, processor = self.load(s)
        model.to(self._device).eval()
        self.adapter = self.make_adapter(model, processor)
        self._model = model
        self.batch_size_per_gpu = s.batch_size
        self.max_context = s.max_context or self.model_context_length()
        self.accounting: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.mtv_records: dict[str, dict[str, Any]] = {}
        self._mtvs: dict[str, MTV] = {}
        self._pools: dict[str, Any] = {}
        self._explicit_mtv: MTV | None = None
        if s.mtv_path:
            self._explicit_mtv = MTV.load(s.mtv_path)
            name, _ = model_identity(model)
            self._explicit_mtv.check_compatible(name, self.adapter.sites.shape)

    # ----------------------------------------------------------------- loading
    def load(self, settings: WrapperSettings) -> tuple[torch.nn.Module, Any]:
        """Load (model, processor) for `settings.pretrained`. Subclasses override."""
        raise NotImplementedError

    def make_adapter(self, model: torch.nn.Module, processor: Any) -> ProcessorAdapter:
        from mtv_eval.adapter import TEMPLATES

        template = TEMPLATES[self.settings.template] if self.settings.template else None
        return ProcessorAdapter(model, processor, template=template)

    def model_context_length(self) -> int:
        config = self.adapter.model.config
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        for name in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
            value = getattr(text, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(getattr(self.adapter.tokenizer, "model_max_length", 4096))

    # ------------------------------------------------------- lmms-eval surface
    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self.adapter.tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("mtv-eval models answer generate_until tasks only")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("mtv-eval models answer single-round generate_until tasks only")

    # --------------------------------------------------------------- examples
    def _query_example(self, task: str, split: str, doc_id: int, context: str, doc_to_visual: Any) -> Example:
        from mtv_eval.taskspec import doc_to_example

        doc = self.task_dict[task][split][doc_id]
        try:
            return doc_to_example(task, doc)
        except KeyError:
            if self.settings.mode != "zero":
                raise ValueError(
                    f"task {task!r} is not an mtv-eval task (no support split or example format), so "
                    f"mode={self.settings.mode} cannot run on it; use one of our tasks or mode=zero"
                ) from None
            visuals = [v for v in doc_to_visual(doc) if v is not None]
            return Example(segments=(*visuals, context), answer="", uid=f"{task}:{doc_id}")

    def _support_pool(self, task: str) -> Any:
        if task not in self._pools:
            from mtv_eval.taskspec import support_examples

            self._pools[task] = support_examples(task, self.task_dict[task], check=False)
        return self._pools[task]

    def _spec(self, task: str) -> Any:
        from mtv_eval.taskspec import spec_for_task

        return spec_for_task(task)

    def _icl_shots(self, task: str) -> int:
        if self.settings.shots is not None:
            return self.settings.shots
        return max(self._spec(task).icl_shots)

    def _mtv_config(self, task: str) -> MTVConfig:
        s, spec = self.settings, self._spec(task)
        search_examples = s.search_examples if s.search_examples is not None else spec.search_examples
        return MTVConfig(
            extract=ExtractConfig(
                shots=s.mtv_shots if s.mtv_shots is not None else spec.mtv_shots,
                iterations=s.mtv_iterations if s.mtv_iterations is not None else spec.mtv_iterations,
                batch_size=s.extract_batch_size,
                seed=s.seed,
            ),
            search=SearchConfig(
                steps=s.search_steps, samples=s.search_samples, pool_size=search_examples,
                select_examples=min(50, search_examples), threshold=s.mtv_threshold,
                mode=s.search_mode, seed=s.seed,
            ),
        )

    def _validate_task(self, task: str) -> None:
        """Check budgets against the support pool before any long work starts."""
        if self.settings.mode == "zero":
            return
        pool = self._support_pool(task)
        if self.settings.mode == "icl":
            k = self._icl_shots(task)
            if k > len(pool):
                raise ValueError(
                    f"task {task}: shots={k} is larger than the support pool ({len(pool)} examples); "
                    "lower shots= or use a larger support split"
                )
        if self.settings.mode == "mtv":
            config = self._mtv_config(task)
            if config.extract.shots + 1 > len(pool) or config.search.pool_size > len(pool):
                raise ValueError(
                    f"task {task}: the MTV budget needs {config.extract.shots} shots + 1 query and "
                    f"{config.search.pool_size} search examples, but the support pool has {len(pool)}; "
                    "lower mtv_shots= / search_examples= or use a larger support split"
                )

    def mtv_for(self, task: str) -> MTV:
        """The MTV of `task`: the explicit artifact, the cached one, or a new build."""
        if task in self._mtvs:
            return self._mtvs[task]
        if self._explicit_mtv is not None:
            built_for = self._explicit_mtv.metadata.get("task")
            if built_for and built_for != task:
                raise ArtifactError(f"mtv_path holds an MTV for task {built_for!r}, not {task!r}")
            self._mtvs[task] = self._explicit_mtv
            self.mtv_records[task] = {"source": "mtv_path", "path": self.settings.mtv_path}
            return self._explicit_mtv
        name, revision = model_identity(self.model)
        spec = self._spec(task)
        config = self._mtv_config(task)
        key = MTVKey(
            model_name=name, revision=self.settings.revision or revision, task=task,
            task_version=spec.version, template=self.adapter.template.name, config=config.to_dict(),
        )
        started = time.perf_counter()
        mtv, source, path = get_or_build(
            self.adapter, self._support_pool(task), key, config, self.settings.mtv_cache,
            progress=self.rank == 0, log=eval_logger.info,
        )
        self._mtvs[task] = mtv
        self.mtv_records[task] = {
            "source": source, "path": str(path), "cache_key": key.digest(),
            "seconds": round(time.perf_counter() - started, 3), "selected_heads": mtv.num_heads_selected,
            "content_hash": mtv.metadata.get("content_hash"), "config": config.to_dict(),
        }
        self._write_log(f"mtv_{task}.json", self.mtv_records[task], append=False)
        return mtv

    # --------------------------------------------------------------- generate
    def _count_tokens(self, shots: list[Example], query: Example) -> int:
        batch = self.adapter.encode([shots], [query])
        return int(batch.inputs["attention_mask"].sum())

    def generate_until(self, requests: list[Instance]) -> list[str]:
        s = self.settings
        tasks = sorted({req.args[4] for req in requests})
        for task in tasks:
            self._validate_task(task)
        if s.mode == "mtv":
            for task in tasks:
                self.mtv_for(task)

        def collate(args: tuple) -> tuple:
            return -len(args[0]), args[0]

        # One task at a time: each task has its own MTV, and lmms-eval's Collator groups
        # by generation kwargs only, which two tasks may share.
        results: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"Model Responding ({s.mode})")
        for task in tasks:
            indices = [i for i, req in enumerate(requests) if req.args[4] == task]
            ordered = lmms_utils.Collator([requests[i].args for i in indices], collate, grouping=True)
            answers: list[str] = []
            for chunk in ordered.get_batched(n=self.batch_size, batch_fn=None):
                contexts, all_gen_kwargs, doc_to_visuals, doc_ids, task_names, splits = zip(*chunk)
                answers.extend(self._generate_chunk(contexts, all_gen_kwargs[0], doc_to_visuals, doc_ids, task, splits))
                bar.update(len(chunk))
            for index, answer in zip(indices, ordered.get_original(answers)):
                results[index] = answer
        bar.close()
        return [r if r is not None else "" for r in results]

    def _generate_chunk(self, contexts, gen_kwargs, doc_to_visuals, doc_ids, task: str, splits) -> list[str]:
        s = self.settings
        queries, shots_per_row = [], []
        for context, doc_to_visual, doc_id, split in zip(contexts, doc_to_visuals, doc_ids, splits):
            query = self._query_example(task, split, doc_id, context, doc_to_visual)
            shots: list[Example] = []
            if s.mode == "icl":
                shots = choose_shots(self._support_pool(task), self._icl_shots(task), s.seed, task, doc_id, query)
            queries.append(query)
            shots_per_row.append(shots)
        batch = self.adapter.encode(shots_per_row, queries)
        lengths = batch.inputs["attention_mask"].sum(dim=-1).tolist()
        dropped = [0] * len(queries)
        if max(lengths) > self.max_context:
            for row, length in enumerate(lengths):
                if length > self.max_context:
                    fitted = fit_to_context(shots_per_row[row], queries[row], self._count_tokens, self.max_context,
                                            s.on_overflow, where=f"task {task} doc {doc_ids[row]}")
                    shots_per_row[row], dropped[row] = fitted.shots, fitted.dropped
            batch = self.adapter.encode(shots_per_row, queries)

        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_new_tokens = int(kwargs.pop("max_new_tokens", 10))
        for name in ("temperature", "do_sample", "top_p", "num_beams", "image_aspect_ratio"):
            kwargs.pop(name, None)

        inputs = batch.inputs
        prompt_tokens = inputs["attention_mask"].sum(dim=-1).tolist()
        if self._device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device)
        started = time.perf_counter()
        with torch.no_grad(), self._intervention(task):
            output = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
        seconds = time.perf_counter() - started
        peak = (torch.cuda.max_memory_allocated(self._device) / 2**20) if self._device.type == "cuda" else None
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        new_tokens = output[:, inputs["input_ids"].shape[-1]:]
        texts = []
        for row, ids in enumerate(new_tokens):
            ids = ids.tolist()
            if self.tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(self.tokenizer.eos_token_id)]
            pad = self.tokenizer.pad_token_id
            ids = [i for i in ids if i != pad]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            texts.append(text)
            record = {
                "task": task, "doc_id": doc_ids[row], "mode": s.mode,
                "prompt_tokens": int(prompt_tokens[row]), "shots_used": len(shots_per_row[row]),
                "shots_dropped": dropped[row],
                "images": len(queries[row].images) + sum(len(e.images) for e in shots_per_row[row]),
                "generated_tokens": len(ids), "seconds": seconds / len(queries),
                "batch_size": len(queries), "peak_gpu_memory_mb": peak, "peak_rss_mb": rss,
                "max_context": self.max_context,
            }
            if s.mode == "mtv":
                record["mtv_heads"] = self._mtvs[task].num_heads_selected
            self.accounting[task].append(record)
            self._write_log(f"accounting_{task}.jsonl", record, append=True)
        return texts

    def _intervention(self, task: str):
        """The MTV intervention for a batch of `task` (a no-op context outside mode=mtv)."""
        if self.settings.mode != "mtv":
            return nullcontext()
        mtv = self._mtvs[task]
        return Intervention(self.adapter.sites, mtv.means, mtv.mask, every_token=self.settings.every_token)

    def _write_log(self, name: str, record: dict[str, Any], append: bool) -> None:
        if not self.settings.log_dir or self.rank != 0:
            return
        path = Path(self.settings.log_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if append:
            with path.open("a") as handle:
                handle.write(json.dumps(record, default=str) + "\n")
        else:
            path.write_text(json.dumps(record, indent=2, default=str))
