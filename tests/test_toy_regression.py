"""End-to-end regression on the committed toy LMM: MTV must keep its margins.

Runs the real pipeline (lmms-eval's evaluator, the hf_mtv wrapper, the toy task, MTV
extraction + REINFORCE head search, the demo's `mtv_pool=budget`) on one toy task, seed 0,
and compares with the committed results of `mtv-eval demo --out results/toy_sweep`
(results/toy_sweep/comparison.json): the same cells, built the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtv_eval.harness.demo import MODEL_ARGS
from mtv_eval.harness.sweep import run_sweep

COMMITTED = Path(__file__).resolve().parent.parent / "results" / "toy_sweep" / "comparison.json"
TASK = "toy_single_shape"
BUDGET = "2x50"
# Points of accuracy the margin may lose against the committed run before the test fails.
# The run is seeded and deterministic on one machine; the tolerance covers float
# differences across CPUs/BLAS builds (one flipped argmax is 0.4 points of 256 queries).
TOLERANCE = 5.0


def _committed(method: str, seed: int | None = None) -> float:
    cells = json.loads(COMMITTED.read_text())["cells"]
    (cell,) = [
        c
        for c in cells
        if c["task"] == TASK and c["method"] == method and c.get("seed") == seed and c["status"] == "done"
    ]
    return 100 * cell["accuracy"]


def test_mtv_margin_over_zero_shot_matches_committed_results(tmp_path: Path) -> None:
    report = run_sweep(
        "hf_mtv", MODEL_ARGS, [TASK], tmp_path, batch_size=64, mtv_budgets=[BUDGET], seed=0, seeds=[0]
    )  # fmt: skip
    assert not report.failed, [o.error for o in report.failed]
    from mtv_eval.reporting.results import collect

    accuracy = {c.method: 100 * c.accuracy for c in collect([tmp_path]).done() if c.task == TASK}
    mtv = f"mtv-{BUDGET}"
    committed_margin = _committed(mtv, seed=0) - _committed("zero")
    margin = accuracy[mtv] - accuracy["zero"]
    assert committed_margin > 30, "the committed results should show MTV far above zero-shot"
    assert abs(margin - committed_margin) <= TOLERANCE, (accuracy, committed_margin)
    # zero-shot and ICL are the committed ones too
    for method in ("zero", "icl-1", "icl-2"):
        assert abs(accuracy[method] - _committed(method)) <= TOLERANCE, (method, accuracy[method])
    # and MTV beats the best ICL that fits the toy model's context (2 shots)
    assert accuracy[mtv] > max(accuracy["icl-1"], accuracy["icl-2"]) + 10
