"""lmms-eval wrappers end to end: tiny real models, generated task data, lmms-eval's evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_path

from mtv_eval.harness.evaluate import run_evaluation
from mtv_eval.methods.artifact import ArtifactError

TASK = "vizwiz_vqa_mtv"
BUDGETS = "search_examples=4,icl_shots=0/2,mtv_shots=2,mtv_iterations=4"
FAST_MTV = "mtv_shots=2,mtv_iterations=4,search_steps=3,search_samples=4,search_examples=4"
MAX_NEW_TOKENS = 10  # the VQA tasks' generation budget (tasks/mtv_paper/_default_template_vqa_yaml)
WRAPPERS = [("hf_mtv", "llava"), ("idefics2_mtv", "idefics2"), ("qwen2_vl_mtv", "qwen2_vl"), ("vila_mtv", "vila")]


pytestmark = pytest.mark.usefixtures("generated_data")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("model, arch", WRAPPERS)
def test_each_wrapper_runs_every_mode_and_writes_lmms_eval_files(model: str, arch: str, tmp_path: Path) -> None:
    tokens: dict[str, dict[int, int]] = {}
    for mode in ("zero", "icl", "mtv"):
        log_dir = tmp_path / f"log-{mode}"
        args = f"pretrained={tiny_path(arch)},mode={mode},shots=2,{FAST_MTV},log_dir={log_dir},mtv_cache={tmp_path / 'cache'}"
        results, results_file = run_evaluation(model, args, [TASK], tmp_path / f"out-{mode}", limit=3, batch_size=2)
        assert TASK in results["results"] and "vqa_accuracy,none" in results["results"][TASK]
        assert results_file.is_file() and results_file.name.endswith("_results.json")
        samples = list(results_file.parent.glob(f"*_samples_{TASK}.jsonl"))
        assert len(samples) == 1 and len(_lines(samples[0])) == 3
        accounting = _lines(log_dir / f"accounting_{TASK}.jsonl")
        assert len(accounting) == 3 and {a["mode"] for a in accounting} == {mode}
        expected_shots = 2 if mode == "icl" else 0
        assert all(a["shots_used"] == expected_shots and a["images"] == expected_shots + 1 for a in accounting)
        assert all(0 <= a["generated_tokens"] <= MAX_NEW_TOKENS and a["seconds"] > 0 for a in accounting)
        tokens[mode] = {a["doc_id"]: a["prompt_tokens"] for a in accounting}
        if mode == "mtv":
            record = json.loads((log_dir / f"mtv_{TASK}.json").read_text())
            assert record["source"] == "built" and record["selected_heads"] == accounting[0]["mtv_heads"]
    # per query: MTV adds nothing to the zero-shot prompt; shots add tokens
    assert tokens["mtv"] == tokens["zero"]
    assert set(tokens["icl"]) == set(tokens["zero"])
    assert all(tokens["icl"][doc] > tokens["zero"][doc] for doc in tokens["zero"])


def _instance(cls_path: str, **kwargs):
    module, name = cls_path.rsplit(".", 1)
    cls = getattr(__import__(module, fromlist=[name]), name)
    return cls(**kwargs)


def _record_inputs(model: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[-1] > 1:  # the prompt forward, not a decoding step
            seen.append(ids.detach().clone())

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_icl_mode_really_passes_k_plus_one_images(tmp_path: Path) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from mtv_eval.data.taskspec import tasks_path

    lm = _instance("model_wrappers.idefics2.Idefics2MTV", pretrained=str(tiny_path("idefics2")), mode="icl", shots=3)
    config = lm.model.config  # lmms-eval's lm.clean() drops the model after evaluating
    seen, handle = _record_inputs(lm.model)
    try:
        simple_evaluate(model=lm, tasks=[TASK], limit=2, task_manager=TaskManager(include_path=str(tasks_path())))
    finally:
        handle.remove()
    image_token = config.image_token_id
    per_image = config.perceiver_config.resampler_n_latents
    assert seen, "the model was never called with a prompt"
    for ids in seen:
        for row in ids:
            assert int((row == image_token).sum()) == 4 * per_image  # 3 shots + the query
    assert all(a["images"] == 4 for a in lm.accounting[TASK])


def _record_prompt_rows(model: torch.nn.Module) -> tuple[list[list[torch.Tensor]], object]:
    """Each prompt forward's rows as the model received them, padding removed, in call order."""
    batches: list[list[torch.Tensor]] = []

    def hook(module, args, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if ids is not None and ids.shape[-1] > 1:  # the prompt forward, not a decoding step
            mask = torch.ones_like(ids) if mask is None else mask  # generate may drop an all-ones mask
            batches.append([row[keep.bool()].clone() for row, keep in zip(ids, mask)])

    return batches, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("mode", ["zero", "icl"])
def test_accounting_equals_what_the_model_was_given(mode: str) -> None:
    """prompt_tokens, images, shots and doc ids of each record, recomputed from the prompts
    the model received (read by a hook) and from the processor, on padded batches."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager
    from tiny_models import image

    from mtv_eval.data.taskspec import tasks_path

    lm = _instance(
        "model_wrappers.hf.HFMTV", pretrained=str(tiny_path("llava")), mode=mode, shots=2, batch_size=2, seed=3
    )
    tokenizer, processor = lm.tokenizer, lm.adapter.processor
    image_token = lm.model.config.image_token_id
    single = processor(text=["<image>"], images=[image(0)], return_tensors="pt")["input_ids"]
    per_image = int((single == image_token).sum())
    batches, handle = _record_prompt_rows(lm.model)
    try:
        simple_evaluate(model=lm, tasks=[TASK], limit=4, task_manager=TaskManager(include_path=str(tasks_path())))
    finally:
        handle.remove()
    rows = [row for batch in batches for row in batch]
    records = lm.accounting[TASK]
    assert len(batches) == 2 and len(rows) == len(records) == 4
    if mode == "icl":
        assert any(len({len(r) for r in batch}) > 1 for batch in batches), "a batch should be padded"
    for row, record in zip(rows, records):
        text = tokenizer.decode(row)
        # the generated VizWiz copy asks "what is this <split> <i>?" (tests/fixtures_data.py)
        assert text.count("what is this val ") == 1 and f"what is this val {record['doc_id']}?" in text
        shots = text.count("what is this train ")
        assert record["prompt_tokens"] == len(row)
        assert record["images"] == int((row == image_token).sum()) // per_image == shots + 1
        assert record["shots_used"] == shots == (2 if mode == "icl" else 0)
        assert record["shots_dropped"] == 0 and record["batch_size"] == 2
    if mode == "zero":  # the same count straight from the processor, for the query alone
        from mtv_eval.data.taskspec import doc_to_example

        for record in records:
            query = doc_to_example(TASK, lm.task_dict[TASK]["val"][record["doc_id"]])
            encoded = processor(text=[lm.adapter.render([], query)], images=list(query.images), return_tensors="pt")
            assert record["prompt_tokens"] == encoded["input_ids"].shape[-1]


def test_mtv_changes_the_answers_of_the_trained_toy_model(tmp_path: Path) -> None:
    """On the toy LMM the intervention matters: zero-shot answers the wrong attribute, MTV
    (a small budget: 2 shots x 20 prompts, 10 search steps) answers the task's colours."""
    from mtv_eval.toy import TOY_MODEL

    task = "toy_single_colour"
    budget = "mtv_shots=2,mtv_iterations=20,search_steps=10,search_samples=8,search_examples=16"
    answers, accuracy = {}, {}
    for mode in ("zero", "mtv"):
        log_dir = tmp_path / f"log-{mode}"
        args = f"pretrained={TOY_MODEL},mode={mode},{budget},mtv_cache={tmp_path / 'cache'},log_dir={log_dir}"
        results, results_file = run_evaluation("hf_mtv", args, [task], tmp_path / mode, limit=16, batch_size=16)
        samples = _lines(next(results_file.parent.glob(f"*_samples_{task}.jsonl")))
        answers[mode] = {s["doc_id"]: s["filtered_resps"] for s in samples}
        accuracy[mode] = results["results"][task]["vqa_accuracy,none"]
    assert set(answers["mtv"]) == set(answers["zero"]) and len(answers["zero"]) == 16
    changed = [doc for doc in answers["zero"] if answers["mtv"][doc] != answers["zero"][doc]]
    assert changed, "MTV changed no answer of the toy model"
    assert accuracy["mtv"] >= accuracy["zero"] + 0.5, accuracy


def test_mtv_reuses_cached_artifact_and_answers_identically(tmp_path: Path) -> None:
    args = f"pretrained={tiny_path('llava')},mode=mtv,{FAST_MTV},mtv_cache={tmp_path / 'cache'}"
    answers, sources = [], []
    for run in range(2):
        log_dir = tmp_path / f"log{run}"
        _, results_file = run_evaluation("hf_mtv", f"{args},log_dir={log_dir}", [TASK], tmp_path / f"o{run}", limit=4)
        samples = _lines(next(results_file.parent.glob(f"*_samples_{TASK}.jsonl")))
        answers.append([s["filtered_resps"] for s in sorted(samples, key=lambda s: s["doc_id"])])
        sources.append(json.loads((log_dir / f"mtv_{TASK}.json").read_text())["source"])
    assert sources == ["built", "cache"]
    assert answers[0] == answers[1]
    artifacts = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(artifacts) == 1


def test_a_changed_setting_builds_a_new_artifact(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from mtv_eval.harness.evaluate import run_evaluation as run

    for seed in (0, 1):
        run(
            "hf_mtv",
            f"pretrained={tiny_path('llava')},mode=mtv,{FAST_MTV},seed={seed},mtv_cache={tmp_path}",
            [TASK],
            tmp_path / f"o{seed}",
            limit=1,
        )
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2
    # stderr here is no terminal (a log): each build is one stage line, and no progress bar is
    # drawn into it (tqdm's TQDM_DISABLE does not override an explicit disable=False)
    err = capfd.readouterr().err
    assert err.count("MTV for") >= 4  # "building" and "saved", per seed
    assert "MTV head search" not in err and "MTV mean (" not in err and "Model Responding" not in err


def test_prompt_over_max_context_is_trimmed_or_refused(tmp_path: Path) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from mtv_eval.data.taskspec import tasks_path

    manager = TaskManager(include_path=str(tasks_path()))
    probe = _instance("model_wrappers.hf.HFMTV", pretrained=str(tiny_path("llava")), mode="icl", shots=4)
    simple_evaluate(model=probe, tasks=[TASK], limit=1, task_manager=manager)
    full = probe.accounting[TASK][0]["prompt_tokens"]
    limit = full - 1  # one token too many for 4 shots
    lm = _instance(
        "model_wrappers.hf.HFMTV", pretrained=str(tiny_path("llava")), mode="icl", shots=4, max_context=limit
    )
    simple_evaluate(model=lm, tasks=[TASK], limit=1, task_manager=manager)
    record = lm.accounting[TASK][0]
    assert record["shots_dropped"] >= 1 and record["shots_used"] == 4 - record["shots_dropped"]
    assert record["prompt_tokens"] <= limit
    strict = _instance(
        "model_wrappers.hf.HFMTV",
        pretrained=str(tiny_path("llava")),
        mode="icl",
        shots=4,
        max_context=limit,
        on_overflow="error",
    )
    with pytest.raises(ValueError, match=rf"over max_context={limit}.*on_overflow=trim"):
        simple_evaluate(model=strict, tasks=[TASK], limit=1, task_manager=manager)


def test_bad_model_args_fail_before_loading() -> None:
    from mtv_eval.harness.settings import WrapperArgumentError

    with pytest.raises(WrapperArgumentError, match="unknown mode 'few'"):
        _instance("model_wrappers.hf.HFMTV", pretrained="does/not-exist", mode="few")
    with pytest.raises(WrapperArgumentError, match="'shot' \\(did you mean 'shots'\\?\\)"):
        _instance("model_wrappers.hf.HFMTV", pretrained="does/not-exist", shot=4)
    with pytest.raises(WrapperArgumentError, match="pretrained="):
        _instance("model_wrappers.hf.HFMTV", mode="icl")


def test_icl_shots_larger_than_support_pool_is_refused_before_generation() -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from mtv_eval.data.taskspec import tasks_path

    lm = _instance("model_wrappers.hf.HFMTV", pretrained=str(tiny_path("llava")), mode="icl", shots=500)
    with pytest.raises(ValueError, match=r"shots=500 is larger than the support pool \(24 examples\)"):
        simple_evaluate(model=lm, tasks=[TASK], limit=1, task_manager=TaskManager(include_path=str(tasks_path())))
    assert not lm.accounting[TASK]


def test_mtv_artifact_of_another_model_is_refused_at_start(tmp_path: Path) -> None:
    args = f"pretrained={tiny_path('llava')},mode=mtv,{FAST_MTV},mtv_cache={tmp_path}"
    run_evaluation("hf_mtv", args, [TASK], tmp_path / "o", limit=1)
    artifact = next(tmp_path.rglob("*.json"))
    artifact = (
        artifact
        if artifact.with_suffix(".safetensors").exists()
        else next(p for p in tmp_path.rglob("*.json") if p.with_suffix(".safetensors").exists())
    )
    with pytest.raises(ArtifactError, match="built for heads of shape"):
        _instance(
            "model_wrappers.idefics2.Idefics2MTV",
            pretrained=str(tiny_path("idefics2")),
            mode="mtv",
            mtv_path=str(artifact),
        )


def test_entry_points_register_every_model_name() -> None:
    from lmms_eval.models import get_model

    for name in ("hf_mtv", "idefics2_mtv", "qwen_vl_mtv", "qwen2_vl_mtv", "vila_mtv"):
        assert get_model(name).__module__.startswith("model_wrappers."), name


def test_qwen_vl_needs_explicit_trust_and_a_compatible_transformers() -> None:
    from model_wrappers.qwen_vl import IncompatibleTransformersError, check_qwen_vl_transformers
    from mtv_eval.harness.settings import WrapperArgumentError

    with pytest.raises(WrapperArgumentError, match="trust_remote_code=True"):
        _instance("model_wrappers.qwen_vl.QwenVLMTV", pretrained="Qwen/Qwen-VL", loader="remote")
    with pytest.raises(IncompatibleTransformersError, match=r"transformers==4\.32\.0.*5\.1\.0"):
        check_qwen_vl_transformers("5.1.0")
    check_qwen_vl_transformers("4.32.0")  # the version its remote code was written for passes


def test_qwen_vl_prompts_number_pictures_and_locate_gpt_style_heads() -> None:
    from tiny_models import image

    from model_wrappers.qwen_vl import QwenVLAdapter
    from mtv_eval.data.examples import Example
    from mtv_eval.models.adapter import TEMPLATES
    from mtv_eval.tiny import load_tiny

    model, tokenizer = load_tiny(tiny_path("gpt2"))  # shares Qwen-VL's transformer.h.N.attn.c_proj naming
    adapter = QwenVLAdapter(model, tokenizer, template=TEMPLATES["qwen_vl"])
    assert adapter.sites.names[0] == "transformer.h.0.attn.c_proj"
    shot = Example(segments=(image(1), "What is it?"), answer="red", uid="s")
    query = Example(segments=(image(2), "What is it?"), answer="blue", uid="q")
    batch = adapter.encode([[shot]], [query])
    text = tokenizer.decode(batch.inputs["input_ids"][0], skip_special_tokens=True)
    assert "Picture 1: <img>" in text and "Picture 2: <img>" in text and text.count("</img>") == 2
    paths = [part.split("</img>")[0] for part in text.split("<img>")[1:]]
    assert all(Path(p).is_file() for p in paths)


def test_several_tasks_in_one_run_each_get_their_own_mtv(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    args = f"pretrained={tiny_path('llava')},mode=mtv,{FAST_MTV},mtv_cache={tmp_path / 'cache'},log_dir={log_dir}"
    results, _ = run_evaluation("hf_mtv", args, [TASK, "ok_vqa_mtv"], tmp_path / "o", limit=2)
    assert {TASK, "ok_vqa_mtv"} <= set(results["results"])
    records = {task: json.loads((log_dir / f"mtv_{task}.json").read_text()) for task in (TASK, "ok_vqa_mtv")}
    assert records[TASK]["cache_key"] != records["ok_vqa_mtv"]["cache_key"]
    assert all(r["source"] == "built" for r in records.values())
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    for task in (TASK, "ok_vqa_mtv"):
        assert len(_lines(log_dir / f"accounting_{task}.jsonl")) == 2
