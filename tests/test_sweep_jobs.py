"""`run_sweep(jobs=N)`: cells in spawned worker processes give the same files as in one process.

A worker's start (imports, lmms-eval's TaskManager) costs most of a toy sweep, so one
jobs=2 sweep, and its resume, serve every test of the module (the `jobs2` fixture).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sweep_jobs_worker import WORKER_FILE, evaluate_failing_icl_1, evaluate_killing_the_worker

from mtv_eval.cli import main
from mtv_eval.harness.sweep import SweepError, SweepReport, read_cell, run_sweep, summarize
from mtv_eval.toy import TOY_MODEL

TASK = "toy_single_colour"
MODEL_ARGS = f"pretrained={TOY_MODEL},search_steps=4,search_examples=12"
# zero, icl-1 (made to fail), icl-2, then mtv and random on one budget: random takes the MTV of
# the same budget and seed from the shared cache, so two workers may ask for one artifact.
GRID: dict[str, Any] = dict(limit=6, batch_size=64, mtv_budgets=["2x5"], methods=["mtv", "random"], seed=0)
METHODS = ["zero", "icl-1", "icl-2", "mtv-2x5", "random-2x5"]


@dataclass
class Jobs2:
    out: Path
    report: SweepReport
    workers: dict[str, dict[str, int]]  # worker.json by method: the process that evaluated the cell
    cells: dict[str, dict[str, Any]]  # cell.json by method after the first run
    mtimes: dict[str, int]  # files of the done cells after the first run
    progress: str
    resumed: SweepReport
    resumed_progress: str


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _worker(out: Path, method: str) -> dict[str, int]:
    return json.loads((out / TASK / method / WORKER_FILE).read_text())


def _statuses(report: SweepReport) -> list[tuple[str, str]]:
    return [(o.cell.method, o.status) for o in report.outcomes]


def _scores(out: Path, method: str) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    """The cell's lmms-eval results section and its per-query answers."""
    folder = out / TASK / method
    (results,) = folder.glob("*/*_results.json")
    (samples,) = folder.glob(f"*/*_samples_{TASK}.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return json.loads(results.read_text())["results"], sorted((r["doc_id"], r["filtered_resps"]) for r in rows)


@pytest.fixture(scope="module")
def jobs2(tmp_path_factory: pytest.TempPathFactory) -> Jobs2:
    """One jobs=2 sweep whose icl-1 cell fails in its worker, then the same sweep resumed with
    jobs=2 and lmms-eval's own evaluation (so the failed cell is retried and done)."""
    out = tmp_path_factory.mktemp("jobs2")
    progress = io.StringIO()
    report = run_sweep(
        "hf_mtv", MODEL_ARGS, [TASK], out, stream=progress, evaluate=evaluate_failing_icl_1, jobs=2, **GRID
    )
    cells = {method: read_cell(out / TASK / method) or {} for method in METHODS}
    workers = {method: _worker(out, method) for method in METHODS}
    mtimes = {m: _mtimes(out / TASK / m) for m in METHODS if cells[m].get("status") == "done"}
    resumed_progress = io.StringIO()
    resumed = run_sweep("hf_mtv", MODEL_ARGS, [TASK], out, stream=resumed_progress, jobs=2, **GRID)
    return Jobs2(out, report, workers, cells, mtimes, progress.getvalue(), resumed, resumed_progress.getvalue())


def test_jobs2_gives_the_same_scores_and_statuses_as_one_process(jobs2: Jobs2, tmp_path: Path) -> None:
    one = run_sweep("hf_mtv", MODEL_ARGS, [TASK], tmp_path, evaluate=evaluate_failing_icl_1, jobs=1, **GRID)
    assert _statuses(jobs2.report) == _statuses(one)
    assert [method for method, _ in _statuses(one)] == METHODS  # both reports in plan order
    for method in METHODS:
        assert jobs2.cells[method]["status"] == read_cell(tmp_path / TASK / method)["status"], method
        if jobs2.cells[method]["status"] == "done":
            assert _scores(jobs2.out, method) == _scores(tmp_path, method), method
    assert {c["status"] for c in jobs2.cells.values()} == {"done", "failed"}
    assert _scores(tmp_path, "mtv-2x5")[0] != _scores(tmp_path, "zero")[0]  # the comparison can tell cells apart


def test_jobs2_evaluates_in_worker_processes_sharing_out_the_cores(jobs2: Jobs2) -> None:
    assert all(worker["pid"] != os.getpid() for worker in jobs2.workers.values())
    asked = os.environ.get("OMP_NUM_THREADS", "")
    threads = max(1, (os.cpu_count() or 1) // 2)
    expected = min(threads, int(asked)) if asked.isdigit() and int(asked) > 0 else threads
    assert {worker["threads"] for worker in jobs2.workers.values()} == {expected}


def test_a_cell_failing_in_a_worker_is_recorded_and_the_others_finish(jobs2: Jobs2) -> None:
    statuses = {o.cell.method: o.status for o in jobs2.report.outcomes}
    assert statuses == {"zero": "done", "icl-1": "failed", "icl-2": "done", "mtv-2x5": "done", "random-2x5": "done"}
    failed = jobs2.cells["icl-1"]
    assert failed["status"] == "failed" and failed["error"] == "PlantedFailure: planted failure of the icl-1 cell"
    assert "PlantedFailure" in failed["traceback"]
    assert not list(jobs2.out.rglob("*.partial"))
    log = (jobs2.out / "sweep.log").read_text()
    assert f"{TASK}/icl-1 failed" in log and log.count(" done ") >= 4
    lines = [line for line in jobs2.progress.splitlines() if line.startswith("[sweep]")]
    assert len(lines) == 2 * len(METHODS)  # one `running` and one finished line per cell
    assert sum(f"| {m} | running" in line for line in lines for m in METHODS) == len(METHODS)
    assert any("cell 2/5 | task toy_single_colour | icl-1 | FAILED: PlantedFailure" in line for line in lines)


def test_resuming_a_jobs2_sweep_skips_finished_cells_and_redoes_the_failed_one(jobs2: Jobs2) -> None:
    assert _statuses(jobs2.resumed) == [(m, "done" if m == "icl-1" else "skipped") for m in METHODS]
    for method, before in jobs2.mtimes.items():
        assert _mtimes(jobs2.out / TASK / method) == before, method  # not redone
    assert read_cell(jobs2.out / TASK / "icl-1")["status"] == "done"
    assert "cell 2/5 | task toy_single_colour | icl-1 | running" in jobs2.resumed_progress
    assert sum("skipped (finished)" in line for line in jobs2.resumed_progress.splitlines()) == 4


@pytest.mark.timeout(300)  # the failure this guards against is a sweep waiting forever on a dead worker
def test_a_killed_worker_fails_its_cells_and_leaves_them_to_the_next_run(tmp_path: Path) -> None:
    report = run_sweep(
        "hf_mtv",
        MODEL_ARGS,
        [TASK],
        tmp_path,
        stream=io.StringIO(),
        evaluate=evaluate_killing_the_worker,
        jobs=2,
        **GRID,
    )
    assert _statuses(report) == [(method, "failed") for method in METHODS]
    assert all(o.error.startswith("BrokenProcessPool: a worker process died") for o in report.outcomes)
    assert list((tmp_path / TASK).glob(".*.partial"))  # the killed cell's, redone by the next run
    assert not [p for p in (tmp_path / TASK).iterdir() if not p.name.endswith(".partial")]  # no cell recorded
    assert "see " not in summarize(report)  # no cell.json to point to
    assert (tmp_path / "sweep.log").read_text().count(" failed ") == len(METHODS)


def test_jobs_above_one_refuses_an_evaluate_the_workers_cannot_import(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="cannot be pickled.*module level, or jobs=1"):
        run_sweep("hf_mtv", MODEL_ARGS, [TASK], tmp_path, evaluate=lambda *a, **k: None, jobs=2, **GRID)
    assert not (tmp_path / TASK).exists() and not (tmp_path / "sweep.json").exists()


@pytest.mark.parametrize("jobs", [0, -1])
def test_jobs_below_one_is_refused(tmp_path: Path, jobs: int) -> None:
    with pytest.raises(SweepError, match=rf"jobs={jobs}: .* whole number >= 1"):
        run_sweep("hf_mtv", MODEL_ARGS, [TASK], tmp_path, jobs=jobs, **GRID)
    assert not (tmp_path / TASK).exists()


@pytest.mark.parametrize("command", ["sweep", "demo"])
def test_cli_jobs_must_be_at_least_one(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [command, "--jobs", "0"]
    if command == "sweep":
        argv += ["--model", "hf_mtv", "--tasks", TASK, "--out", "unused"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "--jobs: 0 is not a number of worker processes" in capsys.readouterr().err
