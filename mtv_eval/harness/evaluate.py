"""Run lmms-eval's own `simple_evaluate` and write its own result files, as its CLI does.

The sweep and the tests evaluate through this one function, so every figure mtv-eval
reports comes from lmms-eval's evaluator and lands in lmms-eval's file layout:
`<output_path>/<model>/<date>_results.json` and `<date>_samples_<task>.jsonl`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any


class EvaluationFailed(RuntimeError):
    """lmms-eval returned no results (its CLI would still exit 0)."""


@functools.lru_cache(maxsize=8)
def task_manager(include_path: tuple[str, ...] = ()) -> Any:
    """lmms-eval's TaskManager over its own tasks, ours and `include_path`, built once per process.

    Building one parses every task YAML lmms-eval ships (about 3,200 files, 14 s on a CPU core),
    which cost more than a whole toy cell when every cell built its own. The index is only read
    by `simple_evaluate` (tasks are constructed afresh from it on every call), so one
    manager serves every evaluation of a sweep; a new `include_path` gets its own.
    """
    from lmms_eval.tasks import TaskManager

    from mtv_eval.data.taskspec import tasks_path

    includes = [str(tasks_path()), *include_path]
    return TaskManager(include_path=includes if len(includes) > 1 else includes[0])


def run_evaluation(
    model: str,
    model_args: str,
    tasks: list[str],
    output_path: str | Path,
    limit: int | float | None = None,
    batch_size: int = 1,
    log_samples: bool = True,
    include_path: list[str] | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], Path | None]:
    """Evaluate one model configuration on `tasks` and write lmms-eval's files.

    Under `accelerate launch` every rank calls this; lmms-eval returns the results on rank 0
    only, which writes the files.

    Returns:
        (results dict without samples, path of the written `<date>_results.json`);
        ({}, None) on ranks other than 0.
    """
    from lmms_eval import utils as lmms_utils
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker

    from mtv_eval.data.taskspec import add_include_paths
    from mtv_eval.harness.distributed import launch_facts

    if include_path:
        add_include_paths(include_path)  # our own task lookups see the same folders as lmms-eval
    manager = task_manager(tuple(str(p) for p in include_path or ()))
    tracker = EvaluationTracker(output_path=str(output_path))
    datetime_str = lmms_utils.get_datetime_str(timezone="UTC")
    results = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        batch_size=batch_size,
        limit=limit,
        log_samples=log_samples,
        task_manager=manager,
        evaluation_tracker=tracker,
        datetime_str=datetime_str,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None and launch_facts().rank != 0:
        return {}, None
    if not results or "results" not in results:
        raise EvaluationFailed(f"lmms-eval returned no results for {model} on {', '.join(tasks)}")
    samples = results.pop("samples", None)
    tracker.save_results_aggregated(
        results=results, samples=samples if log_samples else None, datetime_str=datetime_str
    )
    if log_samples and samples:
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    written = sorted(Path(output_path).glob(f"*/{tracker.date_id}_results.json"))
    if not written:
        raise EvaluationFailed(f"lmms-eval wrote no results file under {output_path}")
    json.loads(written[-1].read_text())  # fail here, not in the aggregator, if it is unreadable
    return results, written[-1]
