"""`mtv_pool=budget`: an activation method sees only the S x I support examples of its budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtv_eval.data.taskspec import spec_for_task
from mtv_eval.harness.settings import WrapperArgumentError, WrapperSettings, resolve_run
from mtv_eval.toy import TOY_MODEL

TASK = "toy_single_colour"


def _run(**args: str):
    return resolve_run(spec_for_task(TASK), WrapperSettings.from_kwargs({"pretrained": TOY_MODEL, **args}))


def test_budget_pool_limits_the_pool_and_the_search_to_s_times_i() -> None:
    run = _run(mode="mtv", mtv_shots="2", mtv_iterations="5", mtv_pool="budget")
    assert run.pool_limit == 10
    assert run.mtv.search.pool_size == 10  # the task's 100 search examples, capped by the budget
    assert run.mtv.search.select_examples == 10
    large = _run(mode="mtv", mtv_shots="2", mtv_iterations="400", mtv_pool="budget")
    assert large.pool_limit == 800 and large.mtv.search.pool_size == 100
    split = _run(mode="mtv", mtv_shots="2", mtv_iterations="5")
    assert split.pool_limit is None and split.mtv.search.pool_size == 100  # the paper's code: the whole split
    assert _run(mode="icl", shots="2", mtv_pool="budget").pool_limit is None  # ICL's budget is its shots
    assert run.to_dict()["pool_limit"] == 10


def test_limited_pool_is_a_seeded_ordered_subset() -> None:
    pool = list(range(512))
    run = _run(mode="mtv", mtv_shots="2", mtv_iterations="5", mtv_pool="budget")
    subset = run.limit_pool(pool)
    assert len(subset) == 10 and subset == sorted(subset) and set(subset) <= set(pool)
    assert run.limit_pool(pool) == subset  # same seed, same examples
    other = _run(mode="mtv", mtv_shots="2", mtv_iterations="5", mtv_pool="budget", seed="1").limit_pool(pool)
    assert other != subset
    assert run.limit_pool(pool[:8]) == pool[:8]  # a pool smaller than the budget is used whole
    assert _run(mode="mtv", mtv_shots="2", mtv_iterations="5").limit_pool(pool) == pool


def test_budget_too_small_for_one_prompt_is_refused_before_work() -> None:
    run = _run(mode="mtv", mtv_shots="4", mtv_iterations="1", mtv_pool="budget")
    with pytest.raises(ValueError, match="limited to the budget by mtv_pool=budget"):
        run.check_pool(512)  # 4 shots + 1 query do not fit in a budget of 4 examples
    with pytest.raises(WrapperArgumentError, match="unknown mtv_pool 'all'; use mtv_pool=split or mtv_pool=budget"):
        _run(mode="mtv", mtv_pool="all")


def test_wrapper_builds_means_from_the_budget_examples_only(tmp_path: Path) -> None:
    """The cached MTV's means are those of the seeded 10-example subset, not of the whole split."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mtv_eval.config import ExtractConfig
    from mtv_eval.engine.mean import mean_activations
    from mtv_eval.harness.evaluate import run_evaluation
    from mtv_eval.models.adapter import TEMPLATES, ProcessorAdapter
    from mtv_eval.toy import CHECKPOINT, world

    args = (
        f"pretrained={TOY_MODEL},mode=mtv,mtv_shots=2,mtv_iterations=5,mtv_pool=budget,search_steps=2,"
        f"mtv_cache={tmp_path / 'cache'},log_dir={tmp_path / 'logs'}"
    )
    run_evaluation("hf_mtv", args, [TASK], tmp_path / "out", limit=2, batch_size=8)
    (artifact,) = (tmp_path / "cache").rglob("*.safetensors")
    built = load_file(str(artifact))["means"]

    model = AutoModelForImageTextToText.from_pretrained(CHECKPOINT).eval()
    adapter = ProcessorAdapter(model, AutoProcessor.from_pretrained(CHECKPOINT), template=TEMPLATES["plain"])
    support = world.examples("single_colour", "support", 512, noise=0.5)  # the task's support split, in order
    run = _run(mode="mtv", mtv_shots="2", mtv_iterations="5", mtv_pool="budget")
    config = ExtractConfig(shots=2, iterations=5, batch_size=8, seed=0)
    expected = mean_activations(adapter, run.limit_pool(support), config, progress=False)
    whole = mean_activations(adapter, support, config, progress=False)
    assert torch.allclose(built.float(), expected.float(), atol=1e-5)
    assert not torch.allclose(built.float(), whole.float(), atol=1e-3)  # the limit changed what was averaged
