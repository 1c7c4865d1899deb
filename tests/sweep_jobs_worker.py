"""The `evaluate` that tests/test_sweep_jobs.py sends to the sweep's worker processes.

It lives in its own small module because a spawned worker imports the module of the
function it is given: importing this one costs nothing beyond mtv-eval itself.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from mtv_eval.harness.evaluate import run_evaluation
from mtv_eval.harness.settings import parse_model_args

WORKER_FILE = "worker.json"


class PlantedFailure(RuntimeError):
    """The error of the one cell the test makes fail."""


def evaluate_failing_icl_1(
    model: str, model_args: str, tasks: list[str], output_path: str | Path, **kwargs: Any
) -> tuple[dict[str, Any], Path | None]:
    """lmms-eval's evaluation, except that the 1-shot ICL cell raises (a cell failing in a worker).

    Each call first leaves `worker.json` in the cell's folder: the process it ran in and its torch threads.
    """
    import torch

    Path(output_path, WORKER_FILE).write_text(json.dumps({"pid": os.getpid(), "threads": torch.get_num_threads()}))
    args = parse_model_args(model_args)
    if args.get("mode") == "icl" and args.get("shots") == "1":
        raise PlantedFailure("planted failure of the icl-1 cell")
    return run_evaluation(model, model_args, tasks, output_path, **kwargs)


def evaluate_killing_the_worker(
    model: str, model_args: str, tasks: list[str], output_path: str | Path, **kwargs: Any
) -> tuple[dict[str, Any], Path | None]:
    """A worker killed in the middle of a cell, as the out-of-memory killer would."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process was killed")
