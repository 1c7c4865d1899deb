"""Run settings: the wrappers' `model_args`, and the one resolver that turns them into a run.

lmms-eval passes `--model_args k=v,k=v` as keyword arguments. Unknown names fail with a
suggestion (a typo such as `mod=icl` must not silently run zero-shot), bad values fail
with the accepted ones, and nothing slow happens before these checks. lmms-eval turns only
"true"/"false" into booleans and leaves every other value a string, so each field is
parsed here by its declared type: booleans accept true/false/1/0/yes/no (any case), ints
and floats must parse, and anything else is an error naming the argument.

`resolve_run(spec, settings)` is the only place where a run's method, budget and seed are
decided. Precedence, highest first:

1. model_args (what the user wrote, or what the sweep sets per cell: mode, shots,
   mtv_shots, mtv_iterations, seed);
2. `$MTV_EVAL_BUDGETS` (read by `spec_for_task`);
3. the task YAML's `metadata`;
4. the defaults in `mtv_eval.config`.
"""

from __future__ import annotations

import difflib
import os
import random
import types
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from mtv_eval.config import (
    DEFAULT_DIST_TIMEOUT_S,
    DEFAULT_SELECT_EXAMPLES,
    ExtractConfig,
    FVConfig,
    MTVConfig,
    SearchConfig,
)
from mtv_eval.methods.vocabulary import ACTIVATION_KINDS, Method

MODES = ("zero", "icl", "mtv")
TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")
OVERFLOW = ("trim", "error")
LOADERS = ("native", "remote")
# Which support examples an activation method may see: the whole support split (the paper's
# code), or only as many as its budget S x I says (a seeded subset; see RunSettings.pool_limit).
MTV_POOLS = ("split", "budget")


DTYPES = ("auto", "float32", "bfloat16", "float16")


def looks_local(name: str) -> bool:
    """Whether `pretrained` is written as a filesystem path rather than a hub id (`org/name`)."""
    return name.startswith(("/", "./", "../", "~", "\\")) or name in (".", "..") or name.count("/") > 1 or "\\" in name


class WrapperArgumentError(ValueError):
    """A model_arg is unknown or has a bad value."""


@dataclass(frozen=True)
class WrapperSettings:
    """Settings shared by all mtv-eval wrappers (defaults: the task's budget, the paper).

    Attributes:
        pretrained: hub id or local folder of the checkpoint.
        mode: "zero" (zero-shot), "icl" (true multimodal ICL), "mtv" (zero-shot + MTV), or
            another activation method of `mtv_eval.methods.registry` on MTV's budget:
            "random" (random heads), "all" (every head), "fv" (function vectors).
        shots: ICL demonstrations per prompt; None = the largest of the task's budget.
        mtv_shots / mtv_iterations / search_examples: MTV budget; None = the task's.
        search_steps / search_samples / search_mode / mtv_threshold: head search settings.
        mtv_pool: "split" (default, the paper's code): the means and the head search draw from
            the whole support split, so MTV-SxI also sees `search_examples` labelled examples
            beyond its S x I; "budget": a seeded subset of S x I support examples is all they
            draw from (the search uses min(search_examples, S x I) of them), so the budget
            counts every example the method sees and compares fairly with ICL's K.
        every_token: MTV also edits generated tokens (the public code's behaviour).
        seed: seeds shot choice, extraction and head search.
        mtv_cache: folder of cached MTV artifacts (keyed by model, task and settings).
        mtv_path: use this artifact (of the mode's method) instead of building one.
        fv_heads / fv_layer: function vectors' top heads and layer (None = `FVConfig`'s); other
            modes ignore them, as they ignore the search settings, so one sweep can pass them.
        max_context: prompt-token limit; None = the model's context length.
        on_overflow: "trim" drops shots from the front (recorded); "error" stops.
        log_dir: where per-sample accounting (JSONL) and MTV build records are written.
        extract_batch_size: prompts per forward during MTV extraction.
        loader: "native" (default) loads the checkpoint with stock transformers parts;
            "remote" runs the repository's own code (Qwen-VL only, with trust_remote_code).
        device_map: shard the model over GPUs: auto / balanced / balanced_low_0 / sequential,
            or a JSON object or file (`mtv_eval.harness.placement`).
        dist_timeout: seconds a collective may wait before a multi-process run fails, where
            mtv-eval creates the process group (`mtv_eval.harness.distributed`).
    """

    pretrained: str = ""
    revision: str | None = None
    mode: str = "zero"
    shots: int | None = None
    mtv_shots: int | None = None
    mtv_iterations: int | None = None
    search_examples: int | None = None
    search_steps: int = SearchConfig.steps
    search_samples: int = SearchConfig.samples
    search_mode: str = SearchConfig.mode
    mtv_threshold: float | None = None
    mtv_pool: str = "split"
    every_token: bool = True
    seed: int = 0
    mtv_cache: str = ""
    mtv_path: str | None = None
    fv_heads: int | None = None
    fv_layer: int | None = None
    max_context: int | None = None
    on_overflow: str = "trim"
    log_dir: str | None = None
    extract_batch_size: int = ExtractConfig.batch_size
    batch_size: int = 1
    device: str | None = None
    device_map: str | None = None
    dist_timeout: int = DEFAULT_DIST_TIMEOUT_S
    dtype: str = "auto"
    trust_remote_code: bool = False
    template: str | None = None
    loader: str = "native"

    def __post_init__(self) -> None:
        if not self.pretrained:
            raise WrapperArgumentError("model_args needs pretrained=<hub id or local folder>")
        modes = (*MODES, *(k for k in ACTIVATION_KINDS if k not in MODES))
        if self.mode not in modes:
            raise WrapperArgumentError(f"unknown mode {self.mode!r}; use mode={', mode='.join(modes)}")
        if self.on_overflow not in OVERFLOW:
            raise WrapperArgumentError(f"unknown on_overflow {self.on_overflow!r}; use trim or error")
        if self.loader not in LOADERS:
            raise WrapperArgumentError(f"unknown loader {self.loader!r}; use loader=native or loader=remote")
        if self.mtv_pool not in MTV_POOLS:
            raise WrapperArgumentError(f"unknown mtv_pool {self.mtv_pool!r}; use mtv_pool=split or mtv_pool=budget")
        if self.search_mode not in ("fast", "exact"):
            raise WrapperArgumentError(f"unknown search_mode {self.search_mode!r}; use fast or exact")
        for name in ("shots", "mtv_shots", "mtv_iterations", "search_examples", "max_context", "fv_layer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise WrapperArgumentError(f"{name} must be a non-negative integer, got {value!r}")
        if self.dist_timeout < 1:
            raise WrapperArgumentError(f"dist_timeout must be >= 1 second, got {self.dist_timeout}")
        if self.batch_size < 1 or self.extract_batch_size < 1:
            raise WrapperArgumentError("batch_size and extract_batch_size must be >= 1")
        if not 0 <= self.seed < 2**32:
            raise WrapperArgumentError(f"seed={self.seed} is out of range; use an integer from 0 to 2**32 - 1")
        if self.search_steps < 0:
            raise WrapperArgumentError(f"search_steps={self.search_steps} must be >= 0")
        if self.search_samples < 2:
            raise WrapperArgumentError(
                f"search_samples={self.search_samples} must be >= 2 (the search standardises their losses)"
            )
        if self.mtv_threshold is not None and not 0 <= self.mtv_threshold < 1:
            raise WrapperArgumentError(f"mtv_threshold={self.mtv_threshold} must be in [0, 1), e.g. 0.8")
        if self.dtype not in DTYPES:
            raise WrapperArgumentError(f"unknown dtype {self.dtype!r}; use dtype={', dtype='.join(DTYPES)}")
        self._check_pretrained()
        self._check_device_and_template()
        if not self.mtv_cache:
            default = os.environ.get("MTV_EVAL_CACHE") or str(Path.home() / ".cache" / "mtv-eval" / "mtv")
            object.__setattr__(self, "mtv_cache", os.path.expanduser(default))
        if self.mtv_path is not None and self.mode not in ACTIVATION_KINDS:
            raise WrapperArgumentError(
                f"mtv_path is only used with mode=mtv (or another activation mode: {', '.join(ACTIVATION_KINDS)})"
            )
        if self.fv_heads is not None and (not isinstance(self.fv_heads, int) or self.fv_heads < 1):
            raise WrapperArgumentError(f"fv_heads must be a positive integer, got {self.fv_heads!r}")

    def _check_pretrained(self) -> None:
        """A path-looking `pretrained` must exist: otherwise transformers would report a bad hub id."""
        path = expand_path("pretrained", self.pretrained)
        if path != self.pretrained:
            object.__setattr__(self, "pretrained", path)
        if looks_local(path) and not os.path.isdir(path):
            what = "is a file, not a checkpoint folder" if os.path.exists(path) else "does not exist"
            raise WrapperArgumentError(
                f"pretrained={path} {what}; give a local checkpoint folder (with config.json) or a hub id such as "
                "HuggingFaceM4/idefics2-8b"
            )

    def _check_device_and_template(self) -> None:
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise WrapperArgumentError(
                    f"device={self.device!r} is not a device; e.g. device=cuda:0 or device=cpu"
                ) from None
        if self.template is not None:
            from mtv_eval.models.adapter import TEMPLATES

            if self.template not in TEMPLATES:
                raise WrapperArgumentError(
                    f"unknown template {self.template!r}; use template={', template='.join(sorted(TEMPLATES))}"
                )

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "WrapperSettings":
        """Build from lmms-eval keyword arguments; unknown names fail with suggestions."""
        known = {f.name for f in fields(cls)}
        ignored = {"max_batch_size"}  # lmms-eval passes it to every model
        unknown = sorted(set(kwargs) - known - ignored)
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise WrapperArgumentError(f"unknown model_args {', '.join(hints)}; known: {', '.join(sorted(known))}")
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in known and value is not None:
                values[name] = _parse_value(name, value, hints[name])
        for name in ("mtv_cache", "mtv_path", "log_dir"):
            if values.get(name):
                values[name] = expand_path(name, values[name])
        return cls(**values)


def expand_path(name: str, value: str) -> str:
    """`value` with `~` expanded; a path no filesystem can hold is an error naming the argument."""
    try:
        if "\0" in value:
            raise ValueError("NUL byte")
        expanded = os.path.expanduser(value)
        os.fsencode(expanded)  # a name the filesystem can hold
    except (ValueError, UnicodeError):
        raise WrapperArgumentError(f"{name}={value!r} is not a usable path; give a plain folder or file path") from None
    return expanded


def _parse_value(name: str, value: Any, hint: Any) -> Any:
    """`value` (a string from lmms-eval, or an already typed value) as the field's type."""
    if get_origin(hint) in (Union, types.UnionType):  # X | None
        hint = next(a for a in get_args(hint) if a is not type(None))
    text = str(value).strip()
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise WrapperArgumentError(f"{name}={value!r} is not a boolean; use {name}=true or {name}=false")
    if hint is int:
        if name == "batch_size" and text.lower() == "auto":
            return 1
        if name == "batch_size" and ":" in text:  # lmms-eval's "auto:N" / "N:M" forms
            text = text.split(":")[0]
            if text.strip().lower() == "auto":
                return 1
        if isinstance(value, bool):
            raise WrapperArgumentError(f"{name}={value!r} is not an integer; e.g. {name}=4")
        try:
            return int(text)
        except ValueError:
            raise WrapperArgumentError(f"{name}={value!r} is not an integer; e.g. {name}=4") from None
    if hint is float:
        try:
            number = float(text)
        except ValueError:
            raise WrapperArgumentError(f"{name}={value!r} is not a number; e.g. {name}=0.8") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise WrapperArgumentError(f"{name}={value!r} must be a finite number")
        return number
    return text


def parse_model_args(text: str) -> dict[str, str]:
    """`"k=v,k=v"` into an ordered dict (later duplicates win); values stay strings.

    The one parser of model_args strings (sweep, reporting, extract); typed parsing of the
    values is `WrapperSettings.from_kwargs`'s job.
    """
    out: dict[str, str] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        if "=" not in part:
            raise WrapperArgumentError(f"model_args entry {part!r} is not NAME=VALUE")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def format_model_args(args: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in args.items())


@dataclass(frozen=True)
class RunSettings:
    """Everything one (task, model_args) run does, resolved once by `resolve_run`.

    Attributes:
        task: the lmms-eval task.
        method: the resolved method (`icl-K` with K filled in, `mtv-SxI` with the budget).
        mtv: the MTV build settings (activation methods only).
        seed: seeds shot choice, MTV extraction prompts and the head search.
        every_token: MTV also edits generated tokens.
        support_split: the split shots and MTV prompts come from.
        pool_limit: the support examples an activation method may see (`mtv_pool=budget`:
            S x I, a seeded subset chosen by `limit_pool`); None = the whole split.
        options: the activation method's own settings (FV: heads, layer); part of its cache key.
    """

    task: str
    method: Method
    mtv: MTVConfig | None
    seed: int
    every_token: bool
    support_split: str
    options: dict[str, Any] = field(default_factory=dict)
    pool_limit: int | None = None

    def limit_pool(self, pool: Sequence[Any]) -> list[Any]:
        """The support examples the activation method may see: all, or a seeded `pool_limit` of them.

        The subset keeps the pool's order and depends only on (seed, pool size, limit), so a
        build and its cache key see the same examples on every rank and every run.
        """
        if self.pool_limit is None or self.pool_limit >= len(pool):
            return list(pool)
        chosen = sorted(random.Random(f"mtv-pool-{self.seed}").sample(range(len(pool)), self.pool_limit))
        return [pool[i] for i in chosen]

    def needs(self) -> dict[str, int]:
        """Support examples each part of the run needs (checked against the pool once)."""
        if self.method.kind == "icl":
            return {"shots": self.method.shots or 0}
        if self.mtv is not None:
            return {
                "mtv_shots": self.mtv.extract.shots + 1,  # the shots plus a distinct support query
                "search_examples": self.mtv.search.pool_size,
            }
        return {}

    def check_pool(self, n_support: int) -> None:
        """Raise a clear error when the run needs more support examples than the pool has."""
        needs = self.needs()
        if self.method.kind == "icl" and needs["shots"] > n_support:
            raise ValueError(
                f"task {self.task}: shots={needs['shots']} is larger than the support pool ({n_support} "
                f"examples); lower shots= or use a larger support split than {self.support_split!r}"
            )
        if self.mtv is not None and self.pool_limit is not None:
            n_support = min(n_support, self.pool_limit)
        if self.mtv is not None and (needs["mtv_shots"] > n_support or needs["search_examples"] > n_support):
            raise ValueError(
                f"task {self.task}: the MTV budget needs {self.mtv.extract.shots} shots + 1 query and "
                f"{self.mtv.search.pool_size} search examples, but the support pool has {n_support} "
                f"(split {self.support_split!r}{', limited to the budget by mtv_pool=budget' if self.pool_limit else ''}); "
                "lower mtv_shots= / search_examples= (model_args or MTV_EVAL_BUDGETS) or use a larger support split"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "method": self.method.name,
            "seed": self.seed,
            "every_token": self.every_token,
            "support_split": self.support_split,
            "mtv": self.mtv.to_dict() if self.mtv else None,
            "options": dict(self.options),
            "pool_limit": self.pool_limit,
        }


def resolve_run(spec: Any, settings: WrapperSettings) -> RunSettings:
    """The run's settings from the task's spec and the model_args (see the module docstring)."""
    s = settings
    if s.mode == "icl":
        method = Method("icl", shots=s.shots if s.shots is not None else max(spec.icl_shots))
    elif s.mode == "zero":
        method = Method("zero")
    else:
        shots = s.mtv_shots if s.mtv_shots is not None else spec.mtv_shots
        iterations = s.mtv_iterations if s.mtv_iterations is not None else spec.mtv_iterations
        method = Method(s.mode, shots=shots, iterations=iterations)
    mtv = None
    pool_limit = None
    if method.is_activation:
        pool = s.search_examples if s.search_examples is not None else spec.search_examples
        if s.mtv_pool == "budget":
            pool_limit = method.shots * method.iterations
            pool = min(pool, pool_limit)
        mtv = MTVConfig(
            extract=ExtractConfig(
                shots=method.shots, iterations=method.iterations, batch_size=s.extract_batch_size, seed=s.seed
            ),
            search=SearchConfig(
                steps=s.search_steps,
                samples=s.search_samples,
                pool_size=pool,
                select_examples=min(DEFAULT_SELECT_EXAMPLES, pool),
                threshold=s.mtv_threshold,
                mode=s.search_mode,
                seed=s.seed,
            ),
        )
    options: dict[str, Any] = {}
    if method.kind == "fv":
        defaults = FVConfig()
        options = {
            "heads": s.fv_heads if s.fv_heads is not None else defaults.heads,
            "layer": s.fv_layer if s.fv_layer is not None else defaults.layer,
        }
    return RunSettings(
        task=spec.task,
        method=method,
        mtv=mtv,
        seed=s.seed,
        every_token=s.every_token,
        support_split=spec.support_split,
        options=options,
        pool_limit=pool_limit,
    )
