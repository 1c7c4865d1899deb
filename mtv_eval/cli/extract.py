"""`mtv-eval extract`: build (or find in the cache) a task's MTV (or a baseline's artifact) without evaluating.

It loads the model through the same lmms-eval wrapper and the task through lmms-eval's
TaskManager, so the artifact is exactly the one `mode=mtv` would build and then reuse.
"""

from __future__ import annotations

import argparse


def _cmd_extract(args: argparse.Namespace) -> int:
    from lmms_eval.models import get_model
    from lmms_eval.tasks import get_task_dict

    from mtv_eval.harness.evaluate import task_manager
    from mtv_eval.harness.settings import parse_model_args

    model_args = parse_model_args(args.model_args)
    model_args["mode"] = args.method
    lm = get_model(args.model)(**model_args)
    manager = task_manager()
    for task in args.tasks.split(","):
        task_dict = get_task_dict([task], manager)
        if task not in task_dict:
            raise ValueError(f"task {task!r} did not load; see `mtv-eval tasks-path` and tasks/README.md")
        lm.task_dict[task] = task_dict[task].dataset
        lm.prepare_task(task)
        record = lm.mtv_records[task]
        if lm.rank != 0:  # under `accelerate launch` every rank builds its share; rank 0 reports
            continue
        print(
            f"{task}: {record['source']} {record['path']}.json ({record['selected_heads']} heads, {record['seconds']} s)"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `extract` subcommand."""
    parser = subparsers.add_parser(
        "extract",
        help="build a task's MTV artifact (extraction + head search) without evaluating",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  mtv-eval extract --model idefics2_mtv "
        "--model-args pretrained=HuggingFaceM4/idefics2-8b,mtv_cache=~/.cache/mtv-eval/mtv --tasks vizwiz_vqa_mtv",
    )
    parser.add_argument("--model", required=True, help="an mtv-eval lmms-eval model: hf_mtv, idefics2_mtv, ...")
    parser.add_argument("--model-args", required=True, help="k=v,k=v as for lmms-eval (mode is set by --method)")
    parser.add_argument(
        "--method", default="mtv", help="the activation method to build: mtv (default), random, all or fv"
    )
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.set_defaults(func=_cmd_extract)
