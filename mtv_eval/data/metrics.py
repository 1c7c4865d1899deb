"""Answer post-processing and scores of the MTV paper tasks.

VQA accuracy follows the official VQA/EvalAI protocol: the prediction and the 10
reference answers are normalised with lmms-eval's `EvalAIAnswerProcessor`, and the score
is the mean over the 10 leave-one-out subsets of `min(1, matches / 3)`.
Flowers/CUB are scored by option-letter accuracy. Predictions are first cut to their
first line and first sentence, as in the paper's evaluation code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

from mtv_eval.data.formats import OPTION_LETTERS

_PROCESSOR = EvalAIAnswerProcessor()
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def first_sentence(prediction: str) -> str:
    """The first non-empty line of a generation, cut after its first sentence."""
    lines = [line.strip() for line in str(prediction).splitlines() if line.strip()]
    if not lines:
        return ""
    return _SENTENCE_END.split(lines[0], maxsplit=1)[0].strip()


def normalize_answer(answer: str) -> str:
    """EvalAI normalisation (lowercase, punctuation, digits, articles, contractions)."""
    return _PROCESSOR(str(answer))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one raw prediction against the reference answers.

    Args:
        prediction: the model's generation (post-processed here).
        answers: the human answers (10 in VizWiz and OK-VQA).

    Returns:
        The mean over leave-one-out subsets of `min(1, #matches / 3)`, in [0, 1].
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    pred = normalize_answer(first_sentence(prediction))
    refs = [normalize_answer(a) for a in answers]
    if len(refs) == 1:
        return float(pred == refs[0])
    scores = []
    for i in range(len(refs)):
        matches = sum(1 for j, ref in enumerate(refs) if j != i and ref == pred)
        scores.append(min(1.0, matches / 3.0))
    return sum(scores) / len(scores)


def option_letter(prediction: str, options: Sequence[str]) -> str | None:
    """The option letter a generation picks: a leading letter, or an exact option name."""
    text = first_sentence(prediction)
    match = re.match(r"^\W*\(?([A-Za-z])\)?(?:$|[\s.:,)\]])", text)
    if match and match.group(1).upper() in OPTION_LETTERS[: len(options)]:
        return match.group(1).upper()
    norm = normalize_answer(text)
    for letter, option in zip(OPTION_LETTERS, options):
        if norm == normalize_answer(option):
            return letter
    return None


def process_vqa_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lmms-eval `process_results` for VizWiz / OK-VQA (metric `vqa_accuracy`)."""
    if len(results) != 1:
        raise ValueError(f"expected one generation per doc, got {len(results)}")
    return {"vqa_accuracy": vqa_accuracy(results[0], list(doc["answers"]))}


def process_choice_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lmms-eval `process_results` for Flowers / CUB episodes (metric `accuracy`)."""
    if len(results) != 1:
        raise ValueError(f"expected one generation per doc, got {len(results)}")
    picked = option_letter(results[0], list(doc["options"]))
    return {"accuracy": float(picked == doc["answer"])}
