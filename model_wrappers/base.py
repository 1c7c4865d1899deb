"""The lmms-eval model class shared by every mtv-eval wrapper: zero-shot, ICL and MTV.

Only loading differs between models (`load` in each subclass); everything MTV needs
around `generate_until` lives here once:

- mode=zero: the query alone; mode=icl: K seeded support shots with their images,
  interleaved in the model's format and fitted to `max_context`; mode=mtv: the query
  alone with the task's MTV written into its heads (loaded from the cache or built at
  the first request of each task).
- batching with left padding through lmms-eval's `Collator`, `batch_size` honoured;
- per-sample accounting (prompt tokens, shots, images, generated tokens, seconds, peak
  memory) kept on the model and written as JSONL to `log_dir`;
- several processes (`accelerate launch --num_processes N -m lmms_eval ...`), as lmms-eval's
  own models: `rank`, `world_size` and `accelerator` are set from the launch, each rank's
  model sits on its own GPU (or is sharded over its own GPUs with `device_map`), each
  task's MTV is built by all ranks together and shared, accounting rows are merged on
  rank 0, progress bars and logs come from rank 0, and an error on one rank stops all
  (`mtv_eval.harness.distributed`, `mtv_eval.harness.placement`).

lmms-eval's own model classes (e.g. `lmms_eval.models.simple.idefics2.Idefics2`) are not
subclassed: they assert that no extra model_args exist, hard-code float16 and load their
processor themselves, so every method would have to be overridden anyway.
"""

from __future__ import annotations

import resource
import time
from contextlib import nullcontext
from typing import Any

import torch
from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger as eval_logger
from tqdm.auto import tqdm

from mtv_eval.data.examples import Example
from mtv_eval.engine.fidelity import ensure_fidelity
from mtv_eval.harness.accounting import Accounting
from mtv_eval.harness.distributed import launch_facts, setup_ranks
from mtv_eval.harness.icl import choose_shots, fit_to_context
from mtv_eval.harness.placement import resolve_placement
from mtv_eval.harness.provider import MTVProvider
from mtv_eval.harness.settings import RunSettings, WrapperSettings, resolve_run
from mtv_eval.models.adapter import ProcessorAdapter
from mtv_eval.progress import interactive, stage


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
        self.placement = resolve_placement(s.device, s.device_map, launch_facts())
        self.ranks = setup_ranks(cpu=self.placement.device.type == "cpu", timeout_s=s.dist_timeout)
        self.accelerator = self.ranks.accelerator
        self._rank, self._world_size = self.ranks.rank, self.ranks.world_size
        self._device = self.placement.device
        self._dtype = pick_dtype(s.dtype, self._device)
        with self.ranks.together("loading the model"):  # a rank that fails to load stops the others
            model, processor = self.load(s)
            model = self.placement.place(model).eval()
            self.adapter = self.make_adapter(model, processor)
        self._model = model
        if self.placement.sharded:  # lmms-eval gathers on `device`: with several ranks, the rank's own
            self._device = self.accelerator.device if self.ranks.distributed else self.adapter.device
        self._gpus = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
        self.batch_size_per_gpu = s.batch_size
        self.max_context = s.max_context or self.model_context_length()
        self.accounting = Accounting(s.log_dir, ranks=self.ranks)
        self._pools: dict[str, Any] = {}
        self._runs: dict[str, RunSettings] = {}
        # bars on rank 0 at a terminal only; logs and CI get the stage lines
        self.draws_bars = self.rank == 0 and interactive()
        self.provider = MTVProvider(
            self.adapter,
            s.mtv_cache,
            revision=s.revision,
            mtv_path=s.mtv_path,
            progress=self.draws_bars,
            log=self._log,
            ranks=self.ranks,
        )
        if self.ranks.distributed or self.placement.sharded:
            self._log(f"{self.world_size} process(es), data parallel; rank 0: {self.placement.describe()}")

    def _log(self, message: str) -> None:
        """A progress line on rank 0; the other ranks (running the same code) log at debug level."""
        if self.rank == 0:
            stage(message)
        else:
            eval_logger.debug(message)

    # ----------------------------------------------------------------- loading
    def load(self, settings: WrapperSettings) -> tuple[torch.nn.Module, Any]:
        """Load (model, processor) for `settings.pretrained`. Subclasses override."""
        raise NotImplementedError

    def make_adapter(self, model: torch.nn.Module, processor: Any) -> ProcessorAdapter:
        """Prompts from the processor's chat template, or `template=NAME` (a row of TEMPLATES).

        The adapter locates heads only when MTV asks for them, so zero-shot and ICL run on
        any model the processor can prompt.
        """
        from mtv_eval.models.adapter import TEMPLATES

        name = self.settings.template
        if name and name not in TEMPLATES:
            raise ValueError(f"unknown template={name!r}; use one of {', '.join(TEMPLATES)} or leave it out")
        return ProcessorAdapter(model, processor, template=TEMPLATES[name] if name else None)

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
        from mtv_eval.data.taskspec import doc_to_example

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
            from mtv_eval.data.taskspec import support_examples

            self._pools[task] = support_examples(task, self.task_dict[task], check=False)
        return self._pools[task]

    def _spec(self, task: str) -> Any:
        from mtv_eval.data.taskspec import spec_for_task

        return spec_for_task(task)

    def run_settings(self, task: str) -> RunSettings:
        """The resolved settings of `task` (`mtv_eval.harness.settings.resolve_run`)."""
        if task not in self._runs:
            self._runs[task] = resolve_run(self._spec(task), self.settings)
        return self._runs[task]

    @property
    def mtv_records(self) -> dict[str, dict[str, Any]]:
        """Where each task's MTV came from (cache, built, mtv_path), with its key and timing."""
        return self.provider.records

    def prepare_task(self, task: str) -> RunSettings:
        """Check the run against the support pool, then provide the task's MTV if it needs one.

        Everything that can fail on a bad budget fails here, before any long work starts.
        """
        run = self.run_settings(task)
        with self.ranks.together(f"preparing task {task}"):
            if run.needs():
                run.check_pool(len(self._support_pool(task)))
            if run.method.is_activation:
                # The first use of MTV on this model: the engine's forward must equal the model's own.
                ensure_fidelity(self.adapter, list(self._support_pool(task))[:3], log=eval_logger.info)
            if run.method.is_activation and task not in self.provider.records:
                self.provider.for_task(task, run, self._spec(task).version, self._support_pool(task))
                self.accounting.write_build_record(task, self.provider.records[task])
        return run

    # --------------------------------------------------------------- generate
    def _count_tokens(self, shots: list[Example], query: Example) -> int:
        batch = self.adapter.encode([shots], [query])
        return int(batch.inputs["attention_mask"].sum())

    def generate_until(self, requests: list[Instance]) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        with self.ranks.together("answering requests"):  # an error on any rank stops every rank
            self._generate_all(requests, results)
        return [r if r is not None else "" for r in results]

    def _generate_all(self, requests: list[Instance], results: list[str | None]) -> None:
        s = self.settings
        # lmms-eval pads the ranks' request lists to equal length with copies marked
        # __padding_only__; their answers are discarded, so they are neither run nor counted.
        real = [i for i, req in enumerate(requests) if not (req.metadata or {}).get("__padding_only__")]
        tasks = sorted({requests[i].args[4] for i in real})
        if self.ranks.distributed:  # every rank prepares every task, in the same order: MTV builds are shared
            lists = self.ranks.gather_text("\n".join(tasks), what="agreeing on the tasks")
            tasks = sorted({task for text in lists for task in text.split("\n") if task})
        for task in tasks:  # every budget checked before any task's MTV is built
            if self.run_settings(task).needs():
                self.run_settings(task).check_pool(len(self._support_pool(task)))
        for task in tasks:
            self.prepare_task(task)

        def collate(args: tuple) -> tuple:
            return -len(args[0]), args[0]

        # One task at a time: each task has its own MTV, and lmms-eval's Collator groups
        # by generation kwargs only, which two tasks may share.
        bar = tqdm(total=len(real), disable=not self.draws_bars, desc=f"Model Responding ({s.mode})")
        for task in tasks:
            indices = [i for i in real if requests[i].args[4] == task]
            if not indices:
                continue
            ordered = lmms_utils.Collator([requests[i].args for i in indices], collate, grouping=True)
            answers: list[str] = []
            for chunk in ordered.get_batched(n=self.batch_size, batch_fn=None):
                contexts, all_gen_kwargs, doc_to_visuals, doc_ids, task_names, splits = zip(*chunk)
                answers.extend(self._generate_chunk(contexts, all_gen_kwargs[0], doc_to_visuals, doc_ids, task, splits))
                bar.update(len(chunk))
            for index, answer in zip(indices, ordered.get_original(answers)):
                results[index] = answer
            if warning := self.accounting.trim_warning(task):
                eval_logger.warning(warning)
        bar.close()
        self.accounting.merge(tasks)  # every rank's rows into one file on rank 0

    def _generate_chunk(self, contexts, gen_kwargs, doc_to_visuals, doc_ids, task: str, splits) -> list[str]:
        s = self.settings
        queries, shots_per_row = [], []
        for context, doc_to_visual, doc_id, split in zip(contexts, doc_to_visuals, doc_ids, splits):
            query = self._query_example(task, split, doc_id, context, doc_to_visual)
            shots: list[Example] = []
            if s.mode == "icl":
                shots = choose_shots(
                    self._support_pool(task), self.run_settings(task).method.shots, s.seed, task, doc_id, query
                )
            queries.append(query)
            shots_per_row.append(shots)
        batch = self.adapter.encode(shots_per_row, queries)
        lengths = batch.inputs["attention_mask"].sum(dim=-1).tolist()
        dropped = [0] * len(queries)
        if max(lengths) > self.max_context:
            for row, length in enumerate(lengths):
                if length > self.max_context:
                    fitted = fit_to_context(
                        shots_per_row[row],
                        queries[row],
                        self._count_tokens,
                        self.max_context,
                        s.on_overflow,
                        where=f"task {task} doc {doc_ids[row]}",
                    )
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
        for gpu in self._gpus:
            torch.cuda.reset_peak_memory_stats(gpu)
        started = time.perf_counter()
        stop_ids = self.adapter.stop_token_ids()  # end of sequence, and the chat template's end of turn
        with torch.no_grad(), self._intervention(task):
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=stop_ids[0] if len(stop_ids) == 1 else (stop_ids or None),
            )
        seconds = time.perf_counter() - started
        peak = sum(torch.cuda.max_memory_allocated(gpu) for gpu in self._gpus) / 2**20 if self._gpus else None
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        new_tokens = output[:, inputs["input_ids"].shape[-1] :]
        texts = []
        for row, ids in enumerate(new_tokens):
            ids = ids.tolist()
            ends = [ids.index(stop) for stop in stop_ids if stop in ids]
            if ends:
                ids = ids[: min(ends)]
            pad = self.tokenizer.pad_token_id
            ids = [i for i in ids if i != pad]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            texts.append(text)
            record = {
                "task": task,
                "doc_id": doc_ids[row],
                "mode": s.mode,
                "prompt_tokens": int(prompt_tokens[row]),
                "shots_used": len(shots_per_row[row]),
                "shot_uids": [shot.uid for shot in shots_per_row[row]],
                "shots_dropped": dropped[row],
                "images": len(queries[row].images) + sum(len(e.images) for e in shots_per_row[row]),
                "generated_tokens": len(ids),
                "seconds": seconds / len(queries),
                "batch_size": len(queries),
                "peak_gpu_memory_mb": peak,
                "peak_rss_mb": rss,
                "max_context": self.max_context,
            }
            if task in self.provider.records:
                record["mtv_heads"] = self.provider.get(task).num_heads_selected
            self.accounting.add(task, record)
        return texts

    def _intervention(self, task: str):
        """The activation method's edit for a batch of `task` (a no-op context without an artifact)."""
        if task not in self.provider.records:
            return nullcontext()
        run = self.run_settings(task)
        return self.provider.apply(task, run.method.kind, every_token=run.every_token)
