"""The `mtv-eval` command line: parsing only; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mtv_eval.progress import configure_output

# Before anything imports tqdm or transformers: tqdm reads its TQDM_* defaults at import.
configure_output()

from mtv_eval.cli.sweep import add_jobs_option  # noqa: E402
from mtv_eval.tiny import ALL_ARCHES  # noqa: E402

# Optional subcommand groups contributed by other modules: each exposes register(subparsers).
PLUGINS = (
    "mtv_eval.cli.data",
    "mtv_eval.cli.sweep",
    "mtv_eval.cli.extract",
    "mtv_eval.cli.bench",
    "mtv_eval.cli.doctor",
)
# Options of any subcommand that name files or folders: `~` is expanded in them, since the
# shell does not expand it in `--out=~/x` or in quoted arguments.
PATH_OPTIONS = ("out", "src", "output", "plot", "baseline", "current", "checkpoint", "include_path", "run_dirs")


def expand_user_paths(args: argparse.Namespace) -> argparse.Namespace:
    """`~` expanded in every path option of `args` (strings and lists of strings)."""
    for name in PATH_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])
    return args


def _cmd_tiny(args: argparse.Namespace) -> int:
    from mtv_eval.tiny import build_tiny

    path = build_tiny(args.arch, args.out, seed=args.seed)
    print(f"wrote a tiny random-weight {args.arch} checkpoint to {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mtv_eval.harness.demo import run_demo

    baselines = tuple(m.strip() for m in args.baselines.split(",") if m.strip())
    try:
        seeds = tuple(int(v) for v in args.seeds.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"mtv-eval demo: --seeds {args.seeds!r} is not a comma-separated list of integers") from None
    if not seeds:
        raise SystemExit("mtv-eval demo: --seeds needs at least one seed, e.g. 0 or 0,1,2")
    return run_demo(out=args.out, limit=args.limit, seed=args.seed, seeds=seeds, baselines=baselines, jobs=args.jobs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtv-eval",
        description="Multimodal Task Vectors against many-shot multimodal ICL, on lmms-eval.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  mtv-eval demo\n  mtv-eval tiny --arch idefics2 --out /tmp/tiny-idefics2\n"
        "  mtv-eval bench search --arch idefics2\n"
        "  mtv-eval doctor --model hf_mtv --model-args pretrained=/tmp/tiny-idefics2",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="the embedded default: zero-shot vs ICL vs MTV on the trained toy LMM (CPU, offline)"
    )
    demo.add_argument("--out", default="runs/demo", help="sweep folder (default: runs/demo); reruns resume")
    demo.add_argument("--limit", type=int, default=None, help="evaluate only the first N queries of each task")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--baselines",
        default="random,all,fv",
        help="baselines on the largest budget (default random,all,fv; empty for MTV alone)",
    )
    demo.add_argument("--seeds", default="0,1,2", help="build every MTV once per seed (default 0,1,2)")
    add_jobs_option(demo, None, "2, or 1 on a one-core machine")
    demo.set_defaults(func=_cmd_demo)

    tiny = sub.add_parser("tiny", help="build a tiny random-weight checkpoint for offline smoke tests")
    tiny.add_argument("--arch", required=True, choices=list(ALL_ARCHES))
    tiny.add_argument("--out", required=True, help="folder to write the checkpoint to")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_cmd_tiny)

    for module_name in PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = expand_user_paths(parser.parse_args(argv))
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"mtv-eval {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
