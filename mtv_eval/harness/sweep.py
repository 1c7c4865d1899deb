"""The comparison grid: zero-shot, ICL at every shot count of a task's budget, and MTV.

A **cell** is one (model, model_args, task, method) evaluation, where method is

- `zero`: `mode=zero`;
- `icl-K`: `mode=icl,shots=K`, one cell for each K > 0 of the task's `icl_shots` budget
  (`spec_for_task`, so `MTV_EVAL_BUDGETS` applies);
- `mtv`: `mode=mtv` with the MTV budget of the task / model_args, or, with
  `mtv_budgets=["4x100", "16x100"]`, one cell `mtv-SxI` each (`mtv_shots=S,mtv_iterations=I`);
- the same for every other activation method asked for (`methods=["mtv", "random", "all",
  "fv"]`, see `mtv_eval.methods.registry`): `random-SxI`, `all-SxI`, `fv-SxI`, on the same budgets.

With `seeds=[0, 1, 2]` every activation cell is run once per seed (`seed=<k>` in its
model_args: extraction prompts, head search, random heads, FV's corrupted prompts), in the
folder `<task>/<method>@seed<k>` with `replicate_seed: k` in its cell.json; the reports show
the mean and standard deviation over seeds. Zero-shot and ICL cells run once, with the
sweep's `seed`.

Every cell runs through `mtv_eval.harness.evaluate.run_evaluation`, i.e. lmms-eval's
own `simple_evaluate`, which loads the model afresh (lmms-eval's `lm.clean()` deletes the
model after each evaluation). All MTV cells share one `mtv_cache` (`<out>/mtv_cache`
unless model_args name one), so an artifact is built once.

With `jobs=1` (the default) the cells run one after another in this process. With
`jobs=N` they run in N spawned worker processes, taken in plan order; this process keeps
the lock, the plan, `sweep.log` and the progress lines. Each worker gets
`os.cpu_count() // N` torch threads (at most `$OMP_NUM_THREADS` when set), which helps
when one cell cannot use every core (a small model on a CPU: two toy cells in two
processes nearly double throughput on two cores). When CUDA GPUs are visible, worker k
sees only GPU k % (number of GPUs) (`CUDA_VISIBLE_DEVICES`), so on a GPU box
`jobs=<number of GPUs>` evaluates one cell per GPU. The workers share `mtv_cache`: its
per-key file lock (`mtv_eval.harness.cache.get_or_build`) makes two cells that need the
same artifact build it once. A worker that dies (killed, out of memory) fails the cells
it had not finished; their `.partial` folders are redone by the next run.

Layout of a sweep folder (`out`)::

    out/
      sweep.json                       the last plan: model, model_args, tasks, cells
      sweep.log                        one line per cell event (done / skipped / failed)
      mtv_cache/                       shared MTV artifacts
      <task>/<method>/                 (<method>@seed<k>/ for the replicates of `seeds`)
        cell.json                      manifest (CELL_SCHEMA): status, model, args, task,
                                       method, examples seen, versions, timings, error
        <model_sanitized>/<date>_results.json         lmms-eval's own files
        <model_sanitized>/<date>_samples_<task>.jsonl
        logs/accounting_<task>.jsonl   the wrapper's per-sample accounting
        logs/mtv_<task>.json           the MTV build record (mtv cells)

A cell is evaluated in `<task>/.<method>.partial/` and renamed to `<task>/<method>/`
only once its `cell.json` is written, so a folder without the `.partial` suffix is always
a complete record (status `done` or `failed`). Resuming: `done` cells whose fingerprint
(model, args, task, method, limit, batch size, seed, budgets) matches are skipped; a
leftover `.partial` folder (an interrupted cell) is deleted and the cell redone; `failed`
cells are retried. A `done` cell with another fingerprint stops the sweep before anything
runs (`SweepError`): use a new `out` or delete the cell. An interruption therefore loses
at most the cell in progress.

One sweep per folder at a time: `run_sweep` holds a lock on `out` (`out/.sweep.lock`, a
kernel file lock that a killed sweep releases, with the holder's pid in `out/.sweep.owner`)
and a second sweep on the same folder stops at once with a SweepError naming that pid. Under
`accelerate launch` only rank 0 takes it, so the ranks of one launch share the folder.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import inspect
import json
import math
import multiprocessing
import os
import pickle
import platform
import shutil
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mtv_eval.harness.settings import (
    WrapperArgumentError,
    WrapperSettings,
    format_model_args,
    parse_model_args,
    resolve_run,
)
from mtv_eval.methods.vocabulary import Method, MethodError

CELL_SCHEMA = 1
CELL_FILE = "cell.json"
PARTIAL_SUFFIX = ".partial"
# model_args the sweep sets per cell; the user must not pass them.
OWNED_ARGS = ("mode", "shots", "log_dir")
REPLICATE_MARK = "@seed"


class SweepError(ValueError):
    """The sweep cannot start (bad arguments, or a finished cell made with other settings)."""


@dataclass(frozen=True)
class Cell:
    """One evaluation of the grid.

    Attributes:
        task: lmms-eval task name.
        method: `zero`, `icl-K`, `mtv`, `mtv-SxI`, or another activation kind's name.
        args: the model_args this method adds (mode, shots, MTV budget; seed for replicates).
        examples_seen: support examples the method uses per query (ICL: K; MTV: shots x
            iterations of the extraction, the search examples not counted; None when the
            MTV budget comes from the wrapper and is read back from its build record).
        seed: the build seed of a replicate cell (`seeds`); None for the sweep's one run.
    """

    task: str
    method: str
    args: dict[str, str]
    examples_seen: int | None
    seed: int | None = None

    @property
    def folder(self) -> str:
        """The cell's folder name under its task: the method, `@seed<k>` for a replicate."""
        return self.method if self.seed is None else f"{self.method}{REPLICATE_MARK}{self.seed}"

    @property
    def name(self) -> str:
        return f"{self.task}/{self.folder}"


@dataclass
class CellOutcome:
    """What happened to one cell in this invocation."""

    cell: Cell
    status: str  # "done", "skipped", "failed"
    seconds: float = 0.0
    error: str | None = None


@dataclass
class SweepReport:
    """Outcomes of a sweep, in plan order."""

    out: Path
    outcomes: list[CellOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def plan_cells(
    tasks: Sequence[str],
    model_args: dict[str, str],
    mtv_budgets: Sequence[str] = (),
    methods: Sequence[str] = ("mtv",),
    seeds: Sequence[int] = (),
) -> list[Cell]:
    """The cells of the grid, task by task: zero, icl-K ascending, then per budget the
    activation methods (in `methods` order), each once per seed of `seeds` (or once).

    Each cell's method is resolved exactly as the wrapper will resolve it
    (`mtv_eval.harness.settings.resolve_run`), so `examples_seen` is what the run uses.
    """
    from mtv_eval.data.taskspec import spec_for_task
    from mtv_eval.methods.vocabulary import ACTIVATION_KINDS

    unknown = [m for m in methods if m not in ACTIVATION_KINDS]
    if unknown or not methods:
        raise SweepError(
            f"unknown activation method(s) {', '.join(unknown) or '(none given)'}; use {', '.join(ACTIVATION_KINDS)}"
        )
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {','.join(map(str, seeds))} repeats a seed")
    try:
        budgets = [Method.budget(b) for b in mtv_budgets]
    except MethodError as error:
        raise SweepError(str(error)) from None
    cells: list[Cell] = []
    for task in tasks:
        try:
            spec = spec_for_task(task)
        except KeyError as error:
            raise SweepError(str(error).strip("\"'")) from None
        planned: list[tuple[Method, int | None]] = [(Method("zero"), None)]
        planned += [(Method("icl", shots=k), None) for k in sorted({k for k in spec.icl_shots if k > 0})]
        for budget in budgets or [Method("mtv")]:
            for kind in methods:
                method = Method(kind, shots=budget.shots, iterations=budget.iterations)
                planned += [(method, seed) for seed in seeds] if seeds else [(method, None)]
        for method, seed in planned:
            args = method.model_args()
            if seed is not None:
                args["seed"] = str(seed)
            try:
                settings = WrapperSettings.from_kwargs({"pretrained": "-", **model_args, **args})
            except WrapperArgumentError as error:
                raise SweepError(str(error)) from None
            resolved = resolve_run(spec, settings).method
            cells.append(Cell(task, method.name, args, resolved.examples_seen, seed))
    return cells


def versions() -> dict[str, str]:
    """Versions of what can change the numbers (recorded in every cell.json). The CPU's vector
    instruction set is among them: the same seed and software on another CPU can round a float
    differently, and a head search on a knife edge then picks other heads."""
    out = {"python": platform.python_version()}
    for dist in ("mtv-eval", "lmms_eval", "torch", "transformers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    import torch

    out["cpu"] = f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file and rename it over `path` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Sweep progress lines: cell k of n, current task and method, elapsed, estimated remaining.

    The estimate is the mean wall time of the cells evaluated so far in this invocation
    (skipped cells cost nothing) times the rounds of cells still to evaluate: with
    `workers` processes running cells side by side, `ceil(remaining / workers)` rounds.
    """

    def __init__(self, total: int, stream: TextIO | None = None, workers: int = 1) -> None:
        self.total, self.stream, self.workers = total, stream or sys.stderr, workers
        self.started = time.monotonic()
        self.durations: list[float] = []

    def line(self, index: int, cell: Cell, state: str, remaining_cells: int) -> str:
        elapsed = time.monotonic() - self.started
        if self.durations:
            rounds = math.ceil(remaining_cells / self.workers)
            eta = _fmt_seconds(sum(self.durations) / len(self.durations) * rounds)
        else:
            eta = "?" if remaining_cells else "0:00:00"
        return (
            f"[sweep] cell {index}/{self.total} | task {cell.task} | {cell.folder} | {state} | "
            f"elapsed {_fmt_seconds(elapsed)} | ~{eta} remaining"
        )

    def show(self, index: int, cell: Cell, state: str, remaining_cells: int) -> None:
        print(self.line(index, cell, state, remaining_cells), file=self.stream, flush=True)


def _fingerprint(model: str, cell_args: dict[str, str], cell: Cell, limit: Any, batch_size: int, seed: int) -> dict:
    from mtv_eval.data.taskspec import BUDGET_ENV

    args = {k: v for k, v in cell_args.items() if k != "log_dir"}
    return {
        "model": model,
        "model_args": format_model_args(args),
        "task": cell.task,
        "method": cell.method,
        "limit": limit,
        "batch_size": batch_size,
        "seed": seed,
        "budgets": os.environ.get(BUDGET_ENV, ""),
    }


def _digest(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def read_cell(folder: Path) -> dict[str, Any] | None:
    """The cell.json of a cell folder, or None when absent or unreadable."""
    try:
        data = json.loads((folder / CELL_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


LOCK_FILE = ".sweep.lock"
OWNER_FILE = ".sweep.owner"


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s sweep lock, or raise SweepError at once naming the process that holds it.

    Only the launch's rank 0 (env `RANK`, unset outside launchers) locks: the ranks of one
    `accelerate launch` run the same sweep together.
    """
    if os.environ.get("RANK", "0").strip() not in ("", "0"):
        yield
        return
    from filelock import FileLock, Timeout

    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            owner = json.loads((out / OWNER_FILE).read_text())
            holder = f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            holder = "a process that has just started"
        raise SweepError(
            f"another sweep is writing to {out} ({holder}); wait for it to finish, or use another --out"
        ) from None
    try:
        write_json_atomic(
            out / OWNER_FILE,
            {
                "pid": os.getpid(),
                "host": platform.node(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "argv": sys.argv,
            },
        )
        yield
    finally:
        (out / OWNER_FILE).unlink(missing_ok=True)
        lock.release()


def _holding_folder_lock(function: Callable[..., SweepReport]) -> Callable[..., SweepReport]:
    """Run `function` (whose argument `out` is the sweep folder) inside `folder_lock(out)`."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def locked(*args: Any, **kwargs: Any) -> SweepReport:
        out = Path(os.path.expanduser(os.fspath(signature.bind(*args, **kwargs).arguments["out"])))
        with folder_lock(out):
            return function(*args, **kwargs)

    return locked


@_holding_folder_lock
def run_sweep(
    model: str,
    model_args: str,
    tasks: Sequence[str],
    out: str | Path,
    limit: float | None = None,
    batch_size: int = 1,
    mtv_budgets: Sequence[str] = (),
    seed: int | None = None,
    include_path: list[str] | None = None,
    stream: TextIO | None = None,
    evaluate: Callable[..., Any] | None = None,
    methods: Sequence[str] = ("mtv",),
    seeds: Sequence[int] = (),
    jobs: int = 1,
) -> SweepReport:
    """Run (or resume) the grid; see the module docstring for the layout and resume rules.

    Args:
        model: lmms-eval model name, e.g. `idefics2_mtv`.
        model_args: the model's `k=v,...` args without mode/shots/log_dir (set per cell).
        tasks: task names.
        out: the sweep folder.
        limit / batch_size / include_path: passed to `run_evaluation`; include_path also
            reaches mtv-eval's own task lookups (ICL shots, MTV budgets).
        seed: THE seed of the run: lmms-eval's seeds and the wrapper's `seed` (ICL shots, MTV
            prompts, head search). None = the model_args' seed, else 0; a different seed in
            both is an error.
        mtv_budgets: `SxI` strings for several MTV cells; empty = one `mtv` cell.
        methods: the activation methods run on each budget (`mtv`, `random`, `all`, `fv`).
        seeds: build seeds: every activation cell once per seed (its model_args' `seed`),
            as `<method>@seed<k>`; empty = once, with `seed`.
        stream: where progress lines go (stderr).
        evaluate: the evaluation function (default `mtv_eval.harness.evaluate.run_evaluation`);
            with `jobs` > 1 a module-level function, since it is sent to the workers.
        jobs: worker processes evaluating cells side by side (see the module docstring);
            1 = every cell in this process. On a GPU box, the number of GPUs: one cell per GPU.

    Returns:
        A SweepReport, in plan order; a failed cell is recorded (status `failed` with its
        error) and the sweep goes on with the next cell. KeyboardInterrupt propagates (the
        workers are stopped), leaving the cells in progress as `.partial` folders that the
        next run redoes.
    """
    from mtv_eval.harness.distributed import launch_facts
    from mtv_eval.harness.evaluate import run_evaluation

    if launch_facts().world_size > 1:  # every rank would write the same sweep folder
        raise SweepError(
            "the sweep runs in one process; for several GPUs run each evaluation with "
            "`accelerate launch --num_processes N -m lmms_eval --model ...` (README: several GPUs)"
        )
    _check_jobs(jobs, evaluate)
    evaluate = evaluate or run_evaluation
    stream = stream or sys.stderr
    out = Path(out).expanduser()
    try:
        base = parse_model_args(model_args)
    except WrapperArgumentError as error:
        raise SweepError(str(error)) from None
    if seed is None:
        seed = int(base.get("seed", 0)) if str(base.get("seed", "0")).strip().lstrip("-").isdigit() else 0
    elif "seed" in base and base["seed"].strip() != str(seed):
        raise SweepError(f"--seed {seed} and model_args seed={base['seed']} disagree; give the seed once (--seed)")
    base["seed"] = str(seed)
    if include_path:
        from mtv_eval.data.taskspec import add_include_paths

        add_include_paths(include_path)
    owned = [k for k in OWNED_ARGS if k in base]
    if owned:
        raise SweepError(f"the sweep sets {', '.join(owned)} per cell; remove {', '.join(owned)}= from --model-args")
    if not tasks:
        raise SweepError("no tasks given")
    base.setdefault("mtv_cache", str((out / "mtv_cache").resolve()))
    cells = plan_cells(tasks, base, mtv_budgets, methods, seeds)
    out.mkdir(parents=True, exist_ok=True)

    # Decide every cell's fate before running anything: a mismatching finished cell stops here.
    plan: list[tuple[Cell, dict[str, str], dict, bool]] = []
    for cell in cells:
        final = out / cell.task / cell.folder
        cell_args = {**base, **cell.args, "log_dir": str((final / "logs").resolve())}
        fingerprint = _fingerprint(model, cell_args, cell, limit, batch_size, seed)
        existing = read_cell(final)
        finished = existing is not None and existing.get("status") == "done"
        if finished and existing.get("fingerprint_digest") != _digest(fingerprint):
            raise SweepError(
                f"cell {cell.name} in {out} was made with other settings ({existing.get('fingerprint')}); "
                f"use a new --out or delete {final}"
            )
        plan.append((cell, cell_args, fingerprint, finished))
    write_json_atomic(
        out / "sweep.json",
        {
            "model": model,
            "model_args": model_args,
            "tasks": list(tasks),
            "limit": limit,
            "batch_size": batch_size,
            "seed": seed,
            "mtv_budgets": list(mtv_budgets),
            "methods": list(methods),
            "seeds": list(seeds),
            "cells": [c.name for c in cells],
            "versions": versions(),
        },
    )

    report = SweepReport(out=out)
    progress = Progress(len(plan), stream, workers=jobs)
    to_run = sum(1 for *_, finished in plan if not finished)
    log = (out / "sweep.log").open("a")
    try:
        if jobs > 1:
            outcomes: dict[int, CellOutcome] = {}
            runs: list[tuple[int, Cell, dict[str, str], dict]] = []
            for index, (cell, cell_args, fingerprint, finished) in enumerate(plan, start=1):
                if finished:
                    outcomes[index] = _skip(progress, log, index, cell, to_run)
                else:
                    runs.append((index, cell, cell_args, fingerprint))
            run_cell = functools.partial(
                _run_cell,
                evaluate,
                out,
                model=model,
                limit=limit,
                batch_size=batch_size,
                seed=seed,
                include_path=include_path,
            )
            outcomes.update(_run_in_workers(jobs, run_cell, runs, progress, log))
            report.outcomes = [outcomes[index] for index in sorted(outcomes)]
            return report
        for index, (cell, cell_args, fingerprint, finished) in enumerate(plan, start=1):
            if finished:
                report.outcomes.append(_skip(progress, log, index, cell, to_run))
                continue
            progress.show(index, cell, "running", to_run)
            outcome = _run_cell(
                evaluate,
                out,
                cell,
                model,
                cell_args,
                fingerprint,
                limit,
                batch_size,
                seed,
                include_path,
            )
            to_run -= 1
            _record(progress, log, index, outcome, to_run)
            report.outcomes.append(outcome)
    finally:
        log.close()
    return report


def _skip(progress: Progress, log: TextIO, index: int, cell: Cell, to_run: int) -> CellOutcome:
    progress.show(index, cell, "skipped (finished)", to_run)
    _log(log, f"{cell.name} skipped (finished)")
    return CellOutcome(cell, "skipped")


def _record(progress: Progress, log: TextIO, index: int, outcome: CellOutcome, to_run: int) -> None:
    """The progress line and sweep.log line of a cell that has finished (done or failed)."""
    if outcome.seconds > 0:  # a cell lost with its worker took no measurable time to count
        progress.durations.append(outcome.seconds)
    state = "done" if outcome.status == "done" else f"FAILED: {outcome.error}"
    progress.show(index, outcome.cell, f"{state} in {outcome.seconds:.1f} s", to_run)
    _log(
        log,
        f"{outcome.cell.name} {outcome.status} {outcome.seconds:.1f}s" + (f" {outcome.error}" if outcome.error else ""),
    )


def _check_jobs(jobs: int, evaluate: Callable[..., Any] | None) -> None:
    """Refuse, before anything runs, a `jobs` that is not a positive int, or an `evaluate`
    that the spawned workers could not receive (it is pickled by its module and name)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SweepError(f"jobs={jobs!r}: give the number of worker processes, a whole number >= 1 (1 = no workers)")
    if jobs == 1 or evaluate is None:
        return
    try:
        pickle.dumps(evaluate)
    except Exception as error:  # noqa: BLE001 - pickling raises several types
        raise SweepError(
            f"jobs={jobs} sends evaluate={evaluate!r} to worker processes, but it cannot be pickled "
            f"({type(error).__name__}: {error}); use a function defined at module level, or jobs=1"
        ) from None
    main = sys.modules.get("__main__")
    if getattr(evaluate, "__module__", None) == "__main__" and not getattr(main, "__file__", None):
        raise SweepError(
            f"jobs={jobs} sends evaluate={evaluate!r} to worker processes, but it is defined in an "
            "interactive session or `python -c`, which they cannot import; define it in a module, or use jobs=1"
        )


# Thread-count variables read by the BLAS/OpenMP runtimes when torch is first imported.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _worker_threads(jobs: int) -> int:
    """torch threads per worker: the cores shared out, never more than `$OMP_NUM_THREADS` asks."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()
    return min(threads, int(asked)) if asked.isdigit() and int(asked) > 0 else threads


def _visible_gpus() -> tuple[str, ...]:
    """The CUDA devices this process may use, as `CUDA_VISIBLE_DEVICES` entries, without
    initialising CUDA here: the variable's own list when set (up to the first invalid entry,
    as CUDA reads it), else one index per device that `torch.cuda.device_count()` finds."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices: list[str] = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("-"):
                break
            devices.append(entry)
        return tuple(devices)
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


def _init_worker(counter: Any, threads: int, gpus: tuple[str, ...]) -> None:
    """Set up one worker: its GPU (worker k gets `gpus[k % len(gpus)]`) and its thread count,
    in the environment before torch is imported where it is not yet, and ignore Ctrl-C (the
    parent stops the workers when it is interrupted)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TQDM_DISABLE"] = "1"  # several workers share one stderr: the parent's cell lines are the progress
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    if "torch" not in sys.modules:
        os.environ.update({name: str(threads) for name in THREAD_ENV})
    import torch

    torch.set_num_threads(threads)


BROKEN_WORKER = (
    "BrokenProcessPool: a worker process died (killed, out of memory, or it could not start: a script "
    "that calls run_sweep with jobs > 1 must do so under `if __name__ == '__main__':`, since each worker "
    "imports it) before this cell finished; rerun the sweep to redo it"
)


def _run_in_workers(
    jobs: int,
    run_cell: Callable[..., CellOutcome],
    runs: list[tuple[int, Cell, dict[str, str], dict]],
    progress: Progress,
    log: TextIO,
) -> dict[int, CellOutcome]:
    """Evaluate `runs` (plan index, cell, model_args, fingerprint) in `jobs` spawned workers.

    All cells are submitted at once and the pool takes them in plan order; a cell is shown
    `running` when a worker is free for it and `done` / `FAILED` as it finishes. Returns the
    outcomes by plan index.
    """
    if not runs:
        return {}
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's torch and CUDA state
    executor = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=context,
        initializer=_init_worker,
        initargs=(context.Value("i", 0), _worker_threads(jobs), _visible_gpus()),
    )
    outcomes: dict[int, CellOutcome] = {}
    futures: dict[Future[CellOutcome], tuple[int, Cell]] = {}
    waiting = deque(runs)
    to_run = len(runs)
    try:
        for index, cell, cell_args, fingerprint in runs:
            future = executor.submit(run_cell, cell=cell, cell_args=cell_args, fingerprint=fingerprint)
            futures[future] = (index, cell)
        for _ in range(min(jobs, len(waiting))):
            index, cell, *_ = waiting.popleft()
            progress.show(index, cell, "running", to_run)
        for future in as_completed(futures):
            index, cell = futures[future]
            try:
                outcome = future.result()
            except BrokenProcessPool:
                outcome = CellOutcome(cell, "failed", error=BROKEN_WORKER)
                waiting.clear()  # nothing else will start
            to_run -= 1
            _record(progress, log, index, outcome, to_run)
            outcomes[index] = outcome
            if waiting:
                next_index, next_cell, *_ = waiting.popleft()
                progress.show(next_index, next_cell, "running", to_run)
    except BaseException:  # KeyboardInterrupt, or an error outside a cell's evaluation
        for future in futures:
            future.cancel()
        # ProcessPoolExecutor cannot stop a running call; end the workers so that none
        # writes into the folder after the lock is released (their cells stay `.partial`).
        for process in list(getattr(executor, "_processes", {}).values()):
            process.terminate()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return outcomes


def _log(handle: TextIO, message: str) -> None:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    handle.write(f"{stamp} {message}\n")
    handle.flush()


def _run_cell(
    evaluate,
    out: Path,
    cell: Cell,
    model: str,
    cell_args: dict[str, str],
    fingerprint: dict,
    limit,
    batch_size: int,
    seed: int,
    include_path,
) -> CellOutcome:
    """Evaluate one cell into its `.partial` folder and rename it; in this process or a worker."""
    final = out / cell.task / cell.folder
    work = out / cell.task / f".{cell.folder}{PARTIAL_SUFFIX}"
    if work.exists():
        shutil.rmtree(work)  # left by an interrupted run: redo the cell
    work.mkdir(parents=True)
    # The wrapper writes its accounting into the work folder; cell.json names the final one.
    run_args = {**cell_args, "log_dir": str((work / "logs").resolve())}
    manifest: dict[str, Any] = {
        "schema": CELL_SCHEMA,
        "status": "running",
        "model": model,
        "model_args": format_model_args(cell_args),
        "task": cell.task,
        "method": cell.method,
        "examples_seen": cell.examples_seen,
        "limit": limit,
        "batch_size": batch_size,
        "seed": seed,
        "fingerprint": fingerprint,
        "fingerprint_digest": _digest(fingerprint),
        "versions": versions(),
        **({"replicate_seed": cell.seed} if cell.seed is not None else {}),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    from mtv_eval.data.taskspec import spec_for_task

    spec = spec_for_task(cell.task)
    manifest["task_version"] = spec.version
    # The settings the wrapper will resolve for this cell (method, budget, seed, search).
    manifest["resolved"] = resolve_run(spec, WrapperSettings.from_kwargs(dict(cell_args))).to_dict()
    started = time.perf_counter()
    error = None
    try:
        _, results_file = evaluate(
            model,
            format_model_args(run_args),
            [cell.task],
            work,
            limit=limit,
            batch_size=batch_size,
            include_path=include_path,
            seed=seed,
        )
        results_file = Path(results_file)
        samples = list(results_file.parent.glob(f"*_samples_{cell.task}.jsonl"))
        if not samples:
            raise RuntimeError(f"lmms-eval wrote no samples file for {cell.task}")
        manifest["results_file"] = str(results_file.relative_to(work))
        manifest["samples_file"] = str(samples[0].relative_to(work))
    except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the grid
        error = f"{type(exc).__name__}: {exc}"
        manifest["traceback"] = traceback.format_exc()
    seconds = time.perf_counter() - started
    manifest.update(
        status="failed" if error else "done",
        error=error,
        seconds=round(seconds, 3),
        finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    write_json_atomic(work / CELL_FILE, manifest)
    if final.exists():
        shutil.rmtree(final)  # an earlier failed attempt
    os.rename(work, final)
    return CellOutcome(cell, "failed" if error else "done", seconds, error)


def summarize(report: SweepReport) -> str:
    """One line per status count, plus the failed cells by name with their errors."""
    counts = {s: sum(1 for o in report.outcomes if o.status == s) for s in ("done", "skipped", "failed")}
    lines = [f"sweep {report.out}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"]
    for outcome in report.failed:
        manifest = report.out / outcome.cell.name / CELL_FILE
        seen = f" (see {manifest})" if manifest.is_file() else ""  # a cell lost with its worker wrote none
        lines.append(f"  FAILED {outcome.cell.name}: {outcome.error}{seen}")
    return "\n".join(lines)


__all__ = [
    "CELL_FILE",
    "CELL_SCHEMA",
    "Cell",
    "CellOutcome",
    "Progress",
    "SweepError",
    "SweepReport",
    "plan_cells",
    "read_cell",
    "folder_lock",
    "run_sweep",
    "summarize",
    "versions",
]
