"""`mtv-eval bench`: benchmarks that print figures (never timed tests)."""

from __future__ import annotations

import argparse


def _cmd_bench_search(args: argparse.Namespace) -> int:
    from mtv_eval.bench import bench_search, format_search_result

    result = bench_search(
        arch=args.arch, device=args.device, dtype=args.dtype, samples=args.samples,
        repeats=args.repeats, checkpoint=args.checkpoint, out=args.out,
    )
    print(format_search_result(result))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand group."""
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    search = bench_sub.add_parser(
        "search", help="head-search step time, exact (public code) against fast (ours)",
        epilog="example: mtv-eval bench search --arch idefics2 --device cuda --dtype bfloat16",
    )
    search.add_argument("--arch", default="idefics2", choices=["idefics2", "qwen2_vl", "llava", "gpt2"])
    search.add_argument("--checkpoint", default=None, help="a model folder to use instead of a tiny build")
    search.add_argument("--device", default="cpu")
    search.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    search.add_argument("--samples", type=int, default=32)
    search.add_argument("--repeats", type=int, default=5)
    search.add_argument("--out", default=None, help="write the figures as JSON here")
    search.set_defaults(func=_cmd_bench_search)

