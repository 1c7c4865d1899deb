"""The fidelity self-check: the engine's forward against the model's own, on a real prompt.

MTV's means are read, and its head search scored, through the engine's forward
(`mtv_eval.engine.forward`): explicit positions, left-padded batches, a cached prefix with
the last position re-run. Any model whose positions, masks or cache the engine gets wrong
would yield a silently wrong MTV (Qwen3-VL given 1-D positions differed from its own
forward by 0.09 in the logits). So the first time a model is used with MTV, one real
prompt (a 1-shot ICL prompt of the support examples, images included) is run three ways
and compared with the model's plain `model(**inputs)` on the same prompt:

- `full`: the engine's forward at batch size 1;
- `padded`: the engine's forward on a left-padded batch, the prompt's row;
- `fast`: the cached prefix plus the last position, as the fast head search runs it, both
  as is and under a head mask (the larger difference; a mask's edit at the last position
  reaches the prefix only where the prefix attends both ways).

`full` or `padded` beyond the tolerance stops MTV with a `FidelityError` naming the
architecture and the difference. `fast` beyond it only switches the head search to its
exact mode, with a warning: where the prefix attends both ways (PaliGemma's prefix-LM) or
a cache cannot be copied, the cached step is not exact but the full forward still is.

The difference is the largest absolute logit difference divided by max(1, the largest
absolute reference logit), so it reads as an absolute error for small logits and a
relative one for large. Tolerances by dtype (`TOLERANCES`): float32 1e-4, where the only
differences are summation order (measured: under 1e-6 on the tiny architectures);
bfloat16 0.05 and float16 0.01, bounds for rounding noise through a few dozen layers with 8
and 11 mantissa bits. float32 on a GPU that may compute in TF32 (cuDNN convolutions do by
default, matmuls when `torch.set_float32_matmul_precision` allows it) gets `TF32_TOLERANCE`:
TF32 rounds inputs to 10 mantissa bits and a batch of another size may pick another kernel
(measured on an H100: the toy LMM's left-padded batch differed by 1.3e-4 to 4.3e-4 through
its TF32 patch convolution, its batch-1 forwards by under 5e-7). A wrong position or mask moves logits by a large fraction of their
range (0.09 absolute on a tiny Qwen3-VL whose logits are below 1), far beyond them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mtv_eval.data.examples import Example
from mtv_eval.engine.capture import LastTokenCapture
from mtv_eval.engine.forward import compute_prefix, forward_last_from_prefix, forward_logits
from mtv_eval.engine.intervene import Intervention

TOLERANCES = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 5e-2, torch.float16: 1e-2}
TF32_TOLERANCE = 5e-3


def tolerance_for(dtype: torch.dtype, device: torch.device) -> float:
    """The fidelity tolerance of a model of `dtype` on `device` (see the module docstring)."""
    if dtype == torch.float32 and device.type == "cuda":
        tf32 = torch.backends.cudnn.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
        if tf32:
            return TF32_TOLERANCE
    return TOLERANCES.get(dtype, 1e-2)


class FidelityError(RuntimeError):
    """The engine's forward differs from the model's own beyond the tolerance."""


@dataclass(frozen=True)
class FidelityReport:
    """The three comparisons of `check_fidelity` (see the module docstring)."""

    architecture: str
    dtype: str
    tolerance: float
    full: float
    padded: float
    fast: float | None
    fast_error: str | None = None
    prompt_tokens: int = 0

    @property
    def ok(self) -> bool:
        """The engine's forward equals the model's own (capture and exact search are right)."""
        return self.full <= self.tolerance and self.padded <= self.tolerance

    @property
    def fast_ok(self) -> bool:
        """The cached-prefix step equals the full forward (the fast search is exact)."""
        return self.fast is not None and self.fast <= self.tolerance

    def describe(self) -> str:
        fast = f"{self.fast:.2e}" if self.fast is not None else f"failed ({self.fast_error})"
        return (
            f"{self.architecture} ({self.dtype}, {self.prompt_tokens}-token prompt): engine vs model's own forward "
            f"{self.full:.2e}, left-padded batch {self.padded:.2e}, cached prefix + last position {fast} "
            f"(tolerance {self.tolerance:.0e})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "dtype": self.dtype,
            "tolerance": self.tolerance,
            "full": self.full,
            "padded": self.padded,
            "fast": self.fast,
            "fast_error": self.fast_error,
            "ok": self.ok,
            "fast_ok": self.fast_ok,
        }


def difference(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """max |logits - reference| / max(1, max |reference|), in float64."""
    logits, reference = logits.double(), reference.double()
    scale = max(1.0, float(reference.abs().max()))
    return float((logits - reference).abs().max()) / scale


def _own_forward(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's plain forward, every input as the processor gave it, nothing of ours."""
    kwargs: dict[str, Any] = dict(inputs)
    kwargs["use_cache"] = False
    return model(**kwargs).logits[:, -1, :].float()


@torch.no_grad()
def check_fidelity(adapter: Any, examples: Sequence[Example]) -> FidelityReport:
    """Compare the engine's forwards with the model's own on one real prompt.

    Args:
        adapter: the model adapter (renders and encodes prompts).
        examples: support examples; the prompt is examples[1] as a shot, then examples[0].
    """
    if not examples:
        raise ValueError("the fidelity check needs at least one example")
    model = adapter.model
    query = examples[0]
    shots = list(examples[1:2])
    longer = list(examples[1:3]) if len(examples) >= 3 else [*shots, query]
    single = adapter.encode([shots], [query]).inputs
    reference = _own_forward(model, single)
    full = difference(forward_logits(model, None, single), reference)
    batch = adapter.encode([longer, shots], [query, query]).inputs
    if bool(batch["attention_mask"][1].all()):
        raise RuntimeError("the fidelity check's batch should pad its second row")
    padded = difference(forward_logits(model, None, batch)[1:], reference)
    fast: float | None = None
    fast_error: str | None = None
    try:
        prefix = compute_prefix(model, None, single)
        fast = difference(forward_last_from_prefix(model, prefix, 2), reference.expand(2, -1))
        fast = max(fast, _masked_fast_difference(adapter, single, prefix))
    except Exception as error:  # noqa: BLE001 - any failure of the cached step means: search exact
        fast_error = f"{type(error).__name__}: {error}"
    dtype = adapter.dtype
    return FidelityReport(
        architecture=f"{type(model).__name__} (model_type={adapter.model_type})",
        dtype=str(dtype).replace("torch.", ""),
        tolerance=tolerance_for(dtype, next(model.parameters()).device),
        full=full,
        padded=padded,
        fast=fast,
        fast_error=fast_error,
        prompt_tokens=int(single["input_ids"].shape[-1]),
    )


def _masked_fast_difference(adapter: Any, inputs: dict[str, torch.Tensor], prefix: Any) -> float:
    """The head search's own question: do the cached step and the full forward agree UNDER a
    head mask? Means near the prompt's own activations, one seeded random mask for half the
    heads, written at the last position by both paths. Where the prefix attends to the last
    position (a prefix-LM), only the full forward carries the edit into the prefix."""
    sites = adapter.sites
    model = adapter.model
    with LastTokenCapture(sites) as capture:
        forward_logits(model, None, inputs)
    own = capture.result()[0]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(own.shape, generator=generator).to(own.device)
    means = own + noise * own.std().clamp(min=1e-3)
    mask = (torch.rand(sites.shape[:2], generator=generator) < 0.5) & sites.valid
    with Intervention(sites, means, mask):
        exact = forward_logits(model, None, inputs)
    with Intervention(sites, means, mask.expand(2, -1, -1)):
        fast = forward_last_from_prefix(model, prefix, 2)
    return difference(fast, exact.expand(2, -1))


def ensure_fidelity(
    adapter: Any, examples: Sequence[Example], log: Callable[[str], None] | None = None
) -> FidelityReport:
    """Run the check once per loaded model; raise `FidelityError` if the engine is wrong."""
    report = getattr(adapter, "fidelity", None)
    if report is None:
        report = check_fidelity(adapter, examples)
        adapter.fidelity = report
        if log is not None:
            log(f"MTV fidelity check: {report.describe()}")
    if not report.ok:
        raise FidelityError(
            f"the MTV engine's forward differs from the model's own forward on {report.architecture}: "
            f"{max(report.full, report.padded):.3g} > tolerance {report.tolerance:.0e} "
            f"({report.describe()}). Means and head search would be wrong, so MTV stops here; run "
            "`mtv-eval doctor` on this checkpoint and report the architecture."
        )
    return report


def search_mode(adapter: Any, examples: Sequence[Example], requested: str) -> str:
    """The head-search mode to run: `requested`, or "exact" where the fast step is not exact."""
    report = ensure_fidelity(adapter, examples)
    if requested == "fast" and not report.fast_ok:
        reason = report.fast_error or (
            f"its result differs from the full forward by {report.fast:.3g} (e.g. a prefix that attends both "
            "ways, as PaliGemma's prefix-LM does)"
        )
        warnings.warn(
            f"MTV head search on {report.architecture}: the cached-prefix step is not exact ({reason}); "
            "running the exact search instead (same result, slower).",
            RuntimeWarning,
            stacklevel=2,
        )
        return "exact"
    return requested
