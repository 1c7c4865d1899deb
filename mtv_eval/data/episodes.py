"""Seeded 2-way 1-shot episodes from an image-classification dataset (Flowers, CUB).

The paper extracts the MTV on about 30% of the classes and evaluates on the unseen rest.
`build_episodes` splits the classes with a seeded permutation, then turns every image of
a pool into the query of one episode: one support image of the query's class (never the
query image itself) and one of another class of the same pool, in random option order.

Guarantees (tested):
- an image (by `image_id`, or by content hash without one) occurs at most once in the
  whole dataset; duplicates are dropped before anything else;
- the support and evaluation pools share no class and no image;
- no episode uses its query image as a support image;
- the result depends only on the data, the fraction and the seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

EPISODE_FEATURES = datasets.Features(
    {
        "episode_id": datasets.Value("string"),
        "query_id": datasets.Value("string"),
        "support_ids": datasets.Sequence(datasets.Value("string")),
        "query_image": datasets.Image(),
        "support_images": datasets.Sequence(datasets.Image()),
        "options": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("string"),
        "label": datasets.Value("string"),
    }
)


@dataclass(frozen=True)
class EpisodePlan:
    """One episode as row indices into the source dataset."""

    query: int
    supports: tuple[int, int]
    options: tuple[str, str]
    answer: str


def split_classes(classes: Sequence[int], support_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of class ids into (support classes, evaluation classes).

    At least two classes go to each side (an episode needs two classes).
    """
    classes = sorted(set(classes))
    if len(classes) < 4:
        raise ValueError(f"need at least 4 classes to build 2-way episodes in two pools, got {len(classes)}")
    if not 0.0 < support_fraction < 1.0:
        raise ValueError(f"support_fraction must be in (0, 1), got {support_fraction}")
    order = list(classes)
    random.Random(seed).shuffle(order)
    n_support = min(max(2, round(support_fraction * len(order))), len(order) - 2)
    return sorted(order[:n_support]), sorted(order[n_support:])


def image_uids(ds: datasets.Dataset, image_column: str = "image") -> list[str]:
    """A stable id per row: the `image_id` column if present, else a hash of the image bytes."""
    if "image_id" in ds.column_names:
        return [str(x) for x in ds["image_id"]]
    raw = ds.cast_column(image_column, datasets.Image(decode=False))[image_column]
    uids = []
    for item in raw:
        data = item.get("bytes")
        if data is None:
            with open(item["path"], "rb") as fh:
                data = fh.read()
        uids.append("sha1:" + hashlib.sha1(data).hexdigest())
    return uids


def plan_episodes(
    labels: Sequence[int],
    uids: Sequence[str],
    class_names: Sequence[str],
    pool_classes: Sequence[int],
    seed: int,
) -> list[EpisodePlan]:
    """Plan one episode per usable image of `pool_classes` (rows with a unique uid)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    by_class: dict[int, list[int]] = {c: [] for c in pool_classes}
    for idx, (label, uid) in enumerate(zip(labels, uids)):
        if uid in seen:
            continue  # duplicate image: kept once, wherever it first occurs
        seen.add(uid)
        if label in by_class:
            by_class[label].append(idx)
    usable = [c for c in pool_classes if len(by_class[c]) >= 1]
    plans = []
    for cls in pool_classes:
        others = [c for c in usable if c != cls]
        if len(by_class[cls]) < 2 or not others:
            continue  # no second image of the class to show as its support example
        for query in by_class[cls]:
            positive = rng.choice([i for i in by_class[cls] if i != query])
            negative_class = rng.choice(others)
            negative = rng.choice(by_class[negative_class])
            names = (class_names[cls], class_names[negative_class])
            if rng.random() < 0.5:
                plans.append(EpisodePlan(query, (positive, negative), names, "A"))
            else:
                plans.append(EpisodePlan(query, (negative, positive), (names[1], names[0]), "B"))
    return plans


def build_episodes(
    source: datasets.Dataset,
    class_names: Sequence[str],
    *,
    support_fraction: float = 0.3,
    seed: int = 0,
    support_split: str = "train",
    eval_split: str = "test",
    label_column: str = "label",
    image_column: str = "image",
) -> datasets.DatasetDict:
    """Episodes of the support classes (`support_split`) and of the rest (`eval_split`).

    Args:
        source: rows with an image column and an integer label column (all official
            splits merged: the class split replaces them).
        class_names: name of each label id.
        support_fraction: share of classes used for ICL shots and MTV extraction.
        seed: seeds the class split and the episodes.

    Returns:
        A DatasetDict of episode rows (see `EPISODE_FEATURES`).
    """
    labels = [int(x) for x in source[label_column]]
    uids = image_uids(source, image_column)
    support_classes, eval_classes = split_classes(sorted(set(labels)), support_fraction, seed)
    raw = source.cast_column(image_column, datasets.Image(decode=False))
    out = {}
    pools = {support_split: support_classes, eval_split: eval_classes}
    for offset, (split, pool) in enumerate(pools.items()):
        plans = plan_episodes(labels, uids, class_names, pool, seed + 1000 * (offset + 1))
        if not plans:
            raise ValueError(
                f"no episode could be built for split {split!r}: its classes {pool} have fewer than "
                "two distinct images each"
            )
        needed = sorted({p.query for p in plans} | {i for p in plans for i in p.supports})
        images = dict(zip(needed, raw.select(needed)[image_column]))
        rows = {name: [] for name in EPISODE_FEATURES}
        for n, plan in enumerate(plans):
            rows["episode_id"].append(f"{split}-{n:06d}")
            rows["query_id"].append(uids[plan.query])
            rows["support_ids"].append([uids[i] for i in plan.supports])
            rows["query_image"].append(images[plan.query])
            rows["support_images"].append([images[i] for i in plan.supports])
            rows["options"].append(list(plan.options))
            rows["answer"].append(plan.answer)
            rows["label"].append(class_names[labels[plan.query]])
        out[split] = datasets.Dataset.from_dict(rows, features=EPISODE_FEATURES)
    result = datasets.DatasetDict(out)
    check_episodes(result, support_split, eval_split)
    return result


def episode_uids(ds: datasets.Dataset) -> set[str]:
    """Every image id an episode split uses (queries and supports)."""
    uids = set(ds["query_id"])
    for ids in ds["support_ids"]:
        uids.update(ids)
    return uids


def check_episodes(dd: datasets.DatasetDict, support_split: str, eval_split: str) -> None:
    """Raise if a query is its own support or an image is in both pools."""
    for split in (support_split, eval_split):
        for q, sup in zip(dd[split]["query_id"], dd[split]["support_ids"]):
            if q in sup:
                raise AssertionError(f"episode of split {split!r} uses its query image {q} as a support image")
    shared = episode_uids(dd[support_split]) & episode_uids(dd[eval_split])
    if shared:
        raise AssertionError(f"{len(shared)} images are in both the support and eval pools, e.g. {sorted(shared)[:3]}")
