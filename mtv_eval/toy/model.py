"""The toy LMM: a word-level tokenizer, a LLaVA processor and a small LLaVA model.

Architecture: transformers' `LlavaForConditionalGeneration`, a CLIP vision tower whose
17 patch tokens (16 patches of 8x8 plus the class token) go through the two-layer
projector straight into a Llama decoder. The decoder's `max_position_embeddings` is the
context limit: it holds a prompt of `CONTEXT_SHOTS` shots plus the query and its answer,
and no more; `config.toy_world` records it for the harness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mtv_eval.data.examples import Example
from mtv_eval.models.adapter import TEMPLATES
from mtv_eval.toy.world import ANSWER_WORDS, IMAGE_SIZE, QUESTION

IMAGE_TOKEN = "<image>"
PATCH_SIZE = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1  # 17: patches + class token
CONTEXT_SHOTS = 2
SPECIAL = ["<pad>", "<unk>", IMAGE_TOKEN, "</s>"]
# Prompt words (the plain template and the question), answer words, and a few common
# instruction words so lmms-eval's prompt suffixes tokenize to known ids.
WORDS = [
    "\n",
    "What",
    "is",
    "it",
    "?",
    "A",
    ":",
    ".",
    ",",
    "'",
    *ANSWER_WORDS,
    "Answer",
    "the",
    "question",
    "using",
    "a",
    "single",
    "word",
    "or",
    "phrase",
]
TEMPLATE = TEMPLATES["plain"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer: every answer word and `<image>` is one token; "\\n" is kept."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.Split(Regex(r"[ \t\r]+"), behavior="removed"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="</s>",
        padding_side="left",
        model_max_length=context_tokens(CONTEXT_SHOTS),
    )


def prompt_tokens(shots: int) -> int:
    """Tokens of a plain-template prompt with `shots` shots and a query (no answer)."""
    per_image = IMAGE_TOKENS + 4 + 2  # image, "What is it ?", "A :"
    return shots * (per_image + 2) + per_image  # a shot adds its answer and "\n"


def context_tokens(shots: int = CONTEXT_SHOTS) -> int:
    """The context limit: a `shots`-shot prompt, the answer and its newline."""
    return prompt_tokens(shots) + 2


def build_processor() -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, size: str = "base") -> LlavaForConditionalGeneration:
    """A freshly initialised toy LLaVA (seed torch first for reproducible weights)."""
    text = {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
    }
    vision = {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
    }
    if size == "small":  # for quick CPU smoke runs
        text = {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        }
        vision = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        }
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            **vision,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "projection_dim": vision["hidden_size"],
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            **text,
            "num_key_value_heads": text["num_attention_heads"],
            "head_dim": text["hidden_size"] // text["num_attention_heads"],
            "max_position_embeddings": context_tokens(CONTEXT_SHOTS),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
        },
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    config.toy_world = {
        "template": TEMPLATE.name,
        "question": QUESTION,
        "image_tokens": IMAGE_TOKENS,
        "context_shots": CONTEXT_SHOTS,
        "context_tokens": context_tokens(CONTEXT_SHOTS),
        "prompt_tokens_per_shots": {str(k): prompt_tokens(k) for k in range(CONTEXT_SHOTS + 2)},
    }
    # The prompt format the model was trained on, declared where `ProcessorAdapter` looks
    # for it: without it a LLaVA config would get the llava chat row, a format it never saw.
    config.mtv_template = TEMPLATE.name
    return LlavaForConditionalGeneration(config)


class FastEncoder:
    """Encodes prompts exactly as `ProcessorAdapter.encode` does, with cached pixels.

    The processor's image preprocessing dominates the cost of a training step, so pixel
    values are computed once per image (keyed by uid) and prompts are tokenized with the
    image placeholder expanded as `LlavaProcessor` expands it. `train.py` checks that the
    result equals `ProcessorAdapter.encode` before training.
    """

    def __init__(self, processor: LlavaProcessor) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.pixels: dict[str, torch.Tensor] = {}

    def cache(self, items: Sequence[Any], batch: int = 1024) -> None:
        todo = [it for it in items if it.uid not in self.pixels]
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            pv = self.processor.image_processor([it.image for it in chunk], return_tensors="pt")["pixel_values"]
            for it, p in zip(chunk, pv):
                self.pixels[it.uid] = p

    def encode(
        self, shots_per_prompt: Sequence[Sequence[Example]], queries: Sequence[Example]
    ) -> dict[str, torch.Tensor]:
        texts = [
            TEMPLATE.render(s, q).replace(IMAGE_TOKEN, IMAGE_TOKEN * IMAGE_TOKENS)
            for s, q in zip(shots_per_prompt, queries)
        ]
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        uids = [ex.uid for s, q in zip(shots_per_prompt, queries) for ex in (*s, q)]
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "pixel_values": torch.stack([self.pixels[u] for u in uids]),
        }


def answer_ids(tokenizer: PreTrainedTokenizerFast, words: Sequence[str]) -> torch.Tensor:
    ids = tokenizer.convert_tokens_to_ids(list(words))
    if tokenizer.unk_token_id in ids:
        raise ValueError("an answer word is not in the toy vocabulary")
    return torch.tensor(ids)


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
