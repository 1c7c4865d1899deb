"""A seeded toy multimodal ICL world: small drawn images, several one-word tasks per image.

Two image families share one vocabulary of 20 answer words:

- `single`: one filled shape on a dark, noisy background. Attributes: colour (red, green,
  blue, yellow), shape (circle, square, triangle, cross), position (top, bottom, left,
  right: the shape sits near that edge's middle), size (tiny, small, big, huge). Tasks
  `single_colour`, `single_shape`, `single_position`, `single_size`.
- `multi`: one to four copies of one shape in one colour and one size, each in its own
  cell of a 2x2 grid. Attributes: colour, shape, count (one, two, three, four), size.
  Tasks `multi_colour`, `multi_shape`, `multi_count`, `multi_size`.

Every query reads the same text (`QUESTION`), so which attribute is asked for is only
knowable from the in-context examples: with no example, a model can only guess which of
its image's four attributes is meant (zero-shot accuracy about 25%). `single_colour` and
`multi_colour` (likewise shape and size) are the same question on different images: a task
vector extracted on one family can be applied to the other (the out-of-domain test).

Images come from three disjoint pools per family (`train`, `support`, `eval`), each drawn
from its own seed; uids name family, split and index. Noisy shots: with probability
`noise` a support example's answer is replaced by a uniformly random answer word (from
all 20, possibly the right one), as in many-shot ICL with unreliable demonstrations. At
the tasks' noise (`SUPPORT_NOISE`, 0.5) a shot names a word of the asked attribute with
probability 0.6 and a word of each other attribute with 0.1: a couple of shots (all the toy
model's context holds) often leave the task ambiguous.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mtv_eval.data.examples import Example

IMAGE_SIZE = 32
QUESTION = "What is it?"
SPLITS = ("train", "support", "eval")

VALUES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "green", "blue", "yellow"),
    "shape": ("circle", "square", "triangle", "cross"),
    "position": ("top", "bottom", "left", "right"),
    "count": ("one", "two", "three", "four"),
    "size": ("tiny", "small", "big", "huge"),
}
ANSWER_WORDS: tuple[str, ...] = tuple(w for words in VALUES.values() for w in words)

FAMILIES: dict[str, tuple[str, ...]] = {
    "single": ("colour", "shape", "position", "size"),
    "multi": ("colour", "shape", "count", "size"),
}
# task name -> (family, attribute)
TASKS: dict[str, tuple[str, str]] = {
    f"{family}_{attr}": (family, attr) for family, attrs in FAMILIES.items() for attr in attrs
}
# Same question asked of the other family's images: the out-of-domain pairs.
SIMILAR: dict[str, str] = {
    "single_colour": "multi_colour",
    "single_shape": "multi_shape",
    "multi_colour": "single_colour",
    "multi_shape": "single_shape",
    "single_size": "multi_size",
    "multi_size": "single_size",
}
# The support answers' noise of the toy tasks (tasks/toy/*.yaml) and of the toy model's training.
SUPPORT_NOISE = 0.5

_RGB = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
}
_SPLIT_SALT = {"train": 101, "support": 202, "eval": 303}
# Shape radius in pixels per size word: single shapes (a 32-pixel image), multi copies (a 16-pixel cell).
_RADIUS = {
    "single": {"tiny": 3.0, "small": 4.5, "big": 6.0, "huge": 7.5},
    "multi": {"tiny": 2.5, "small": 3.5, "big": 4.5, "huge": 5.5},
}


@dataclass(frozen=True)
class Item:
    """One drawn image and its attributes."""

    image: Image.Image
    attrs: dict[str, str]
    uid: str
    family: str


def _shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    fill: tuple[int, int, int],
) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        w = max(1.0, r * 0.35)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in rgb)  # type: ignore[return-value]


def draw_item(family: str, attrs: dict[str, str], rng: random.Random) -> Image.Image:
    """Draw one image of `family` with the given attributes (layout jitter from `rng`)."""
    base = rng.randint(10, 60)
    noise = np.asarray([rng.randint(0, 20) for _ in range(IMAGE_SIZE * IMAGE_SIZE * 3)], dtype=np.int16)
    arr = np.clip(base + noise.reshape(IMAGE_SIZE, IMAGE_SIZE, 3), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    fill = _jitter(_RGB[attrs["colour"]], rng)
    if family == "single":
        r = _RADIUS["single"][attrs["size"]] + rng.uniform(-0.3, 0.3)
        along = rng.uniform(12.0, 20.0)
        edge = rng.uniform(r + 1.0, r + 3.0)
        cx, cy = {
            "top": (along, edge),
            "bottom": (along, IMAGE_SIZE - edge),
            "left": (edge, along),
            "right": (IMAGE_SIZE - edge, along),
        }[attrs["position"]]
        _shape(draw, attrs["shape"], cx, cy, r, fill)
    elif family == "multi":
        n = VALUES["count"].index(attrs["count"]) + 1
        cells = rng.sample(range(4), n)
        for cell in cells:
            cx = 8 + 16 * (cell % 2) + rng.uniform(-1.5, 1.5)
            cy = 8 + 16 * (cell // 2) + rng.uniform(-1.5, 1.5)
            _shape(draw, attrs["shape"], cx, cy, _RADIUS["multi"][attrs["size"]] + rng.uniform(-0.2, 0.2), fill)
    else:
        raise ValueError(f"unknown family {family!r}")
    return img


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


@lru_cache(maxsize=64)
def pool(family: str, split: str, size: int, seed: int = 0) -> tuple[Item, ...]:
    """The first `size` images of a family's split; same seed, same images.

    Pools of different splits are drawn from different seeds and uids carry the split,
    so train, support and eval never share an image.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    rng = random.Random(_seed("toy-world", seed, family, _SPLIT_SALT[split]))
    items = []
    for i in range(size):
        attrs = {a: rng.choice(VALUES[a]) for a in FAMILIES[family]}
        items.append(Item(draw_item(family, attrs, rng), attrs, f"toy-{seed}-{family}-{split}-{i}", family))
    return tuple(items)


def to_example(item: Item, task: str, answer: str | None = None, copies: int = 1) -> Example:
    """An `Example` asking `QUESTION` of `item` for `task` (answer overridable for noise)."""
    family, attr = TASKS[task]
    if family != item.family:
        raise ValueError(f"task {task} asks about {family} images, got a {item.family} image")
    word = answer if answer is not None else item.attrs[attr]
    return Example(segments=(item.image, QUESTION), answer=word, answers=(word,) * copies, uid=item.uid)


def noisy_answer(true: str, noise: float, rng: random.Random) -> str:
    """With probability `noise`, a uniformly random answer word; else the true answer."""
    return rng.choice(ANSWER_WORDS) if rng.random() < noise else true


def examples(
    task: str,
    split: str,
    size: int,
    noise: float = 0.0,
    seed: int = 0,
    noise_seed: int = 0,
    copies: int = 1,
) -> list[Example]:
    """`size` examples of `task` from a split's pool; `noise` corrupts answers (support only)."""
    family, attr = TASKS[task]
    rng = random.Random(_seed("noise", noise_seed, task, split))
    out = []
    for item in pool(family, split, size, seed):
        out.append(to_example(item, task, noisy_answer(item.attrs[attr], noise, rng), copies))
    return out


def sample_shots(support: Sequence[Example], k: int, rng: random.Random, exclude_uid: str = "") -> list[Example]:
    """`k` distinct shots drawn from `support`, never the query's own image."""
    chosen: list[Example] = []
    while len(chosen) < k:
        ex = support[rng.randrange(len(support))]
        if ex.uid != exclude_uid and all(ex.uid != c.uid for c in chosen):
            chosen.append(ex)
    return chosen


def vqa_dataset(
    task: str,
    support_size: int = 512,
    eval_size: int = 512,
    noise: float = 0.0,
    seed: int = 0,
):
    """A task's support (`train`) and eval (`val`) pools as an in-memory HF DatasetDict.

    VQA schema as lmms-eval's VizWiz: `question_id`, `image` (PIL), `question`, `answers`
    (ten strings), `category` (the task), plus `true_answer` (support answers may be
    noised; eval answers never are). Deterministic in (task, sizes, noise, seed).
    """
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as HFImage
    from datasets import Sequence as HFSequence

    features = Features(
        {
            "question_id": Value("string"),
            "image": HFImage(),
            "question": Value("string"),
            "answers": HFSequence(Value("string")),
            "category": Value("string"),
            "true_answer": Value("string"),
        }
    )
    family, attr = TASKS[task]
    splits = {}
    for name, split, size, split_noise in (
        ("train", "support", support_size, noise),
        ("val", "eval", eval_size, 0.0),
    ):
        exs = examples(task, split, size, noise=split_noise, seed=seed, copies=10)
        items = pool(family, split, size, seed)
        rows = {
            "question_id": [f"{task}-{ex.uid}" for ex in exs],
            "image": [item.image for item in items],
            "question": [QUESTION] * len(exs),
            "answers": [list(ex.answers) for ex in exs],
            "category": [task] * len(exs),
            "true_answer": [item.attrs[attr] for item in items],
        }
        splits[name] = Dataset.from_dict(rows, features=features)
    return DatasetDict(splits)


def save_vqa_dataset(
    task: str,
    out: str | Path,
    support_size: int = 512,
    eval_size: int = 512,
    noise: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write `vqa_dataset(...)` to disk (`datasets.load_from_disk` reads it back)."""
    out = Path(out)
    vqa_dataset(task, support_size, eval_size, noise, seed).save_to_disk(str(out))
    return out
