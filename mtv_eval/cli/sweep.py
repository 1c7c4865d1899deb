"""The `sweep`, `compare` and `check` subcommands (registered by `mtv_eval.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SWEEP_EPILOG = """examples:
  mtv-eval sweep --model idefics2_mtv --model-args pretrained=HuggingFaceM4/idefics2-8b \\
      --tasks vizwiz_vqa_mtv,ok_vqa_mtv --out results/idefics2
  mtv-eval sweep --model hf_mtv --model-args pretrained=/models/tiny,search_steps=3 \\
      --tasks vizwiz_vqa_mtv --mtv-budgets 2x4,4x8 --limit 3 --out results/tiny
  mtv-eval sweep --model idefics2_mtv --model-args pretrained=HuggingFaceM4/idefics2-8b \
      --tasks vizwiz_vqa_mtv --methods mtv,random,all,fv --seeds 0,1,2 --out results/idefics2

Cells: zero, icl-K for each K > 0 of the task's icl_shots budget, then for each budget
(the task's, or each of --mtv-budgets) one cell per activation method of --methods (mtv,
mtv-SxI; random-SxI, all-SxI, fv-SxI), each once per seed of --seeds (<method>@seed<k>).
Rerun the same command to resume: finished cells are skipped, an interrupted one is
redone, failed ones are retried. Exit 1 when any cell failed. With --jobs N, N cells
run at once in worker processes (same results as --jobs 1; on a GPU box, N = GPUs)."""

COMPARE_EPILOG = """examples:
  mtv-eval compare results/idefics2 results/qwen2vl --paper
  mtv-eval compare results/idefics2 --context-limits 2048,4096 --plot results/idefics2.png
  mtv-eval compare results/idefics2 --pair mtv-4x100,fv-4x100 --pair mtv-4x100,random-4x100
  mtv-eval compare results/idefics2 --format json > baseline.json    # a check baseline
  mtv-eval compare results/idefics2 results/qwen2vl results/vila --leaderboard --format html --output board.html

Paired differences (A - B on the same items, in accuracy points) come with a 95% interval
from a paired bootstrap over items (and over seeds, for methods built with several) and a
p-value; an interval that excludes 0 is a difference beyond noise."""

CHECK_EPILOG = """examples:
  mtv-eval compare results/main --format json > baseline.json
  mtv-eval check --baseline baseline.json --current results/pr --tolerance 1.0
  mtv-eval check --baseline baseline.json --current results/pr --tolerance 2se

Exit 1 when a baseline cell is missing or failed, or when a method dropped by more than
--tolerance (accuracy points, or standard errors of the paired difference with the `se`
suffix) AND the paired 95% interval of the drop excludes 0."""


def jobs_count(text: str) -> int:
    """The argparse type of `--jobs`: a whole number of worker processes, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text} is not a number of worker processes; give a whole number >= 1 (1 = every cell in this process)"
        )
    return value


def add_jobs_option(parser: argparse.ArgumentParser, default: int | None, default_text: str) -> None:
    """`--jobs` of `sweep` and `demo`: one help text for the one option."""
    parser.add_argument(
        "--jobs",
        type=jobs_count,
        default=default,
        metavar="N",
        help="evaluate N cells at once, in N worker processes. Helps when one cell cannot use the whole machine: "
        "several CPU cores with a small model (each worker gets cores/N threads), or one cell per GPU "
        f"(worker k sees only GPU k mod the number of GPUs, so give N = number of GPUs). Default: {default_text}",
    )


def _limits(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--context-limits {text!r} is not a comma-separated list of integers") from None


def _limit(text: str | None) -> int | float | None:
    if text is None:
        return None
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def cmd_sweep(args: argparse.Namespace) -> int:
    from mtv_eval.harness.sweep import run_sweep, summarize

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    budgets = [b.strip() for b in (args.mtv_budgets or "").split(",") if b.strip()]
    methods = [m.strip() for m in (args.methods or "mtv").split(",") if m.strip()]
    try:
        seeds = [int(v) for v in (args.seeds or "").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    try:
        report = run_sweep(
            args.model,
            args.model_args,
            tasks,
            args.out,
            limit=_limit(args.limit),
            batch_size=args.batch_size,
            mtv_budgets=budgets,
            seed=args.seed,
            include_path=args.include_path or None,
            methods=methods,
            seeds=seeds,
            jobs=args.jobs,
        )
    except KeyboardInterrupt:
        print(
            f"mtv-eval sweep: interrupted; rerun the same command to resume ({args.out})",
            file=sys.stderr,
        )
        return 130
    print(summarize(report))
    return 1 if report.failed else 0


def _pairs(values: list[str] | None) -> list[tuple[str, str]]:
    pairs = []
    for value in values or []:
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--pair {value!r} is not METHOD_A,METHOD_B (e.g. mtv-4x100,icl-8)")
        pairs.append((parts[0], parts[1]))
    return pairs


def cmd_compare(args: argparse.Namespace) -> int:
    from mtv_eval.reporting.results import collect, render, render_leaderboard

    limits = _limits(args.context_limits)
    missing = [d for d in args.run_dirs if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"no such run folder: {', '.join(missing)}; give sweep folders (mtv-eval sweep --out) or lmms-eval "
            "--output_path folders"
        )
    pairs = _pairs(args.pair)
    collection = collect(args.run_dirs, paper=args.paper)
    if args.leaderboard:
        text = render_leaderboard(collection, args.format, args.leaderboard_method, args.bootstrap_seed, limits)
    else:
        text = render(collection, limits, args.format, pairs, args.bootstrap_seed)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.format in ("json", "csv", "html") and collection.problems:
        for problem in collection.problems:
            print(f"problem: {problem}", file=sys.stderr)
    if args.plot:
        from mtv_eval.reporting.plots import plot_collection

        drawn = plot_collection(collection, args.plot, limits)
        print(f"wrote {drawn['file']}", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from mtv_eval.reporting.check import run_check

    code, text = run_check(args.baseline, args.current, args.tolerance, args.bootstrap_seed)
    print(text)
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sweep`, `compare` and `check` to the `mtv-eval` parser."""
    raw = argparse.RawDescriptionHelpFormatter
    sweep = subparsers.add_parser(
        "sweep",
        help="run zero-shot, ICL at every shot count and MTV (resumable)",
        epilog=SWEEP_EPILOG,
        formatter_class=raw,
    )
    sweep.add_argument("--model", required=True, help="lmms-eval model name, e.g. idefics2_mtv")
    sweep.add_argument("--model-args", default="", help="k=v,... without mode/shots/log_dir (set per cell)")
    sweep.add_argument("--tasks", required=True, help="comma-separated task names")
    sweep.add_argument("--out", required=True, help="sweep folder (one cell folder per task/method)")
    sweep.add_argument("--limit", default=None, help="samples per cell (int) or fraction, for quick runs")
    sweep.add_argument("--batch-size", type=int, default=1)
    sweep.add_argument("--mtv-budgets", default="", help="SHOTSxITERATIONS,... for several MTV cells (mtv-SxI)")
    sweep.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds lmms-eval and the wrapper (ICL shots, MTV prompts, head search); default: model_args' seed or 0",
    )
    sweep.add_argument("--include-path", action="append", help="extra lmms-eval task folder (repeatable)")
    sweep.add_argument(
        "--methods",
        default="mtv",
        help="activation methods run on each budget: mtv, random (random heads), all (every head), "
        "fv (function vectors); comma-separated (default mtv)",
    )
    sweep.add_argument(
        "--seeds",
        default="",
        help="build every activation cell once per seed, e.g. 0,1,2 (reports give mean ± sd over seeds)",
    )
    add_jobs_option(sweep, 1, "1 (every cell in this process)")
    sweep.set_defaults(func=cmd_sweep)

    compare = subparsers.add_parser(
        "compare",
        help="tables and plots of MTV against ICL from run folders",
        epilog=COMPARE_EPILOG,
        formatter_class=raw,
    )
    compare.add_argument("run_dirs", nargs="+", help="sweep folders or lmms-eval output folders")
    compare.add_argument(
        "--format",
        default="github",
        choices=["github", "latex", "csv", "json", "html"],
        help="github (markdown), latex, csv, json (also the check baseline) or html (one self-contained page)",
    )
    compare.add_argument("--plot", default=None, help="write the plots to this PNG file")
    compare.add_argument("--context-limits", default=None, help="extra context limits, e.g. 2048,4096")
    compare.add_argument("--paper", action="store_true", help="add the paper's figures where model and task match")
    compare.add_argument("--output", default=None, help="write the report to this file instead of stdout")
    compare.add_argument(
        "--pair",
        action="append",
        metavar="A,B",
        help="also compare method A with method B per task (paired difference, 95%% CI, p); repeatable",
    )
    compare.add_argument(
        "--leaderboard",
        action="store_true",
        help="one row per model: zero-shot, best ICL that fits, MTV (mean ± sd over seeds) and its gain, per task",
    )
    compare.add_argument(
        "--leaderboard-method",
        default="mtv",
        help="the activation method kind the leaderboard ranks (default mtv; e.g. fv), at its largest budget",
    )
    compare.add_argument("--bootstrap-seed", type=int, default=0, help="seeds the paired bootstrap (default 0)")
    compare.set_defaults(func=cmd_compare)

    chk = subparsers.add_parser(
        "check",
        help="fail (exit 1) on accuracy regressions against a baseline",
        epilog=CHECK_EPILOG,
        formatter_class=raw,
    )
    chk.add_argument("--baseline", required=True, help="compare --format json file, or a run folder")
    chk.add_argument("--current", required=True, help="the run folder to check")
    chk.add_argument(
        "--tolerance",
        default="0",
        help="allowed drop: accuracy points (e.g. 1.5) or standard errors of the paired difference (e.g. 2se); "
        "a drop fails only if it also lies outside the paired 95%% interval (default 0)",
    )
    chk.add_argument("--bootstrap-seed", type=int, default=0, help="seeds the paired bootstrap (default 0)")
    chk.set_defaults(func=cmd_check)
