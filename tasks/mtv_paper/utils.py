"""Callables of the MTV paper task YAMLs; all logic lives in mtv_eval.data."""

from mtv_eval.data.formats import lmms_doc_functions
from mtv_eval.data.lmms_task import MTVTask
from mtv_eval.data.metrics import process_choice_results, process_vqa_results

vizwiz_doc_to_visual, vizwiz_doc_to_text = lmms_doc_functions("vizwiz_vqa")
okvqa_doc_to_visual, okvqa_doc_to_text = lmms_doc_functions("ok_vqa")
flowers_doc_to_visual, flowers_doc_to_text = lmms_doc_functions("flowers_episode")
cub_doc_to_visual, cub_doc_to_text = lmms_doc_functions("cub_episode")


def vqa_doc_to_target(doc):
    """The most frequent reference answer (first one on ties), without decoding the image."""
    answers = list(doc["answers"])
    return max(answers, key=lambda a: (answers.count(a), -answers.index(a))) if answers else ""


def choice_doc_to_target(doc):
    """The option letter of the episode's correct class."""
    return doc["answer"]


__all__ = [
    "MTVTask",
    "choice_doc_to_target",
    "process_choice_results",
    "process_vqa_results",
    "vqa_doc_to_target",
]
