"""The `model_args` of every mtv-eval wrapper, parsed and checked before any model loads.

lmms-eval passes `--model_args k=v,k=v` as keyword arguments. Unknown names fail with a
suggestion (a typo such as `mod=icl` must not silently run zero-shot), bad values fail
with the accepted ones, and nothing slow happens before these checks.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

MODES = ("zero", "icl", "mtv")
OVERFLOW = ("trim", "error")


class WrapperArgumentError(ValueError):
    """A model_arg is unknown or has a bad value."""


@dataclass(frozen=True)
class WrapperSettings:
    """Settings shared by all mtv-eval wrappers (defaults: the task's budget, the paper).

    Attributes:
        pretrained: hub id or local folder of the checkpoint.
        mode: "zero" (zero-shot), "icl" (true multimodal ICL), "mtv" (zero-shot + MTV).
        shots: ICL demonstrations per prompt; None = the largest of the task's budget.
        mtv_shots / mtv_iterations / search_examples: MTV budget; None = the task's.
        search_steps / search_samples / search_mode / mtv_threshold: head search settings.
        every_token: MTV also edits generated tokens (the public code's behaviour).
        seed: seeds shot choice, extraction and head search.
        mtv_cache: folder of cached MTV artifacts (keyed by model, task and settings).
        mtv_path: use this artifact instead of building one.
        max_context: prompt-token limit; None = the model's context length.
        on_overflow: "trim" drops shots from the front (recorded); "error" stops.
        log_dir: where per-sample accounting (JSONL) and MTV build records are written.
        extract_batch_size: prompts per forward during MTV extraction.
    """

    pretrained: str = ""
    revision: str | None = None
    mode: str = "zero"
    shots: int | None = None
    mtv_shots: int | None = None
    mtv_iterations: int | None = None
    search_examples: int | None = None
    search_steps: int = 600
    search_samples: int = 32
    search_mode: str = "fast"
    mtv_threshold: float | None = None
    every_token: bool = True
    seed: int = 0
    mtv_cache: str = ""
    mtv_path: str | None = None
    max_context: int | None = None
    on_overflow: str = "trim"
    log_dir: str | None = None
    extract_batch_size: int = 8
    batch_size: int = 1
    device: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    template: str | None = None

    def __post_init__(self) -> None:
        if not self.pretrained:
            raise WrapperArgumentError("model_args needs pretrained=<hub id or local folder>")
        if self.mode not in MODES:
            raise WrapperArgumentError(f"unknown mode {self.mode!r}; use mode=zero, mode=icl or mode=mtv")
        if self.on_overflow not in OVERFLOW:
            raise WrapperArgumentError(f"unknown on_overflow {self.on_overflow!r}; use trim or error")
        if self.search_mode not in ("fast", "exact"):
            raise WrapperArgumentError(f"unknown search_mode {self.search_mode!r}; use fast or exact")
        for name in ("shots", "mtv_shots", "mtv_iterations", "search_examples", "max_context"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise WrapperArgumentError(f"{name} must be a non-negative integer, got {value!r}")
        if self.batch_size < 1 or self.extract_batch_size < 1:
            raise WrapperArgumentError("batch_size and extract_batch_size must be >= 1")
        if not self.mtv_cache:
            default = os.environ.get("MTV_EVAL_CACHE") or str(Path.home() / ".cache" / "mtv-eval" / "mtv")
            object.__setattr__(self, "mtv_cache", default)
        if self.mtv_path is not None and self.mode != "mtv":
            raise WrapperArgumentError("mtv_path is only used with mode=mtv")

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
            raise WrapperArgumentError(
                f"unknown model_args {', '.join(hints)}; known: {', '.join(sorted(known))}"
            )
        values = {k: v for k, v in kwargs.items() if k in known and v is not None}
        if "batch_size" in values:
            values["batch_size"] = int(str(values["batch_size"]).split(":")[0]) if str(values["batch_size"]) != "auto" else 1
        for name in ("pretrained", "revision", "mtv_cache", "mtv_path", "log_dir", "template", "device", "dtype"):
            if name in values:
                values[name] = str(values[name])
        return cls(**values)
