"""Any modern LMM through hf_mtv: tiny random-weight checkpoints of 12 transformers architectures.

Each is built locally from its config class with its real processor class, the family's
special-token strings and a chat template in the family's format (`mtv_eval.tiny`). For
each: zero-shot, 2-shot ICL and MTV run end to end through lmms-eval's `simple_evaluate`;
the ICL prompt carries K+1 images' tokens; the engine's forward equals the model's own on
a left-padded batch (fp32, 1e-5); the fast head search equals the exact one where it runs;
`mtv-eval doctor` passes. No model is mocked.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from fixtures_data import make_image
from tiny_models import pool, tiny_path

from mtv_eval.config import ExtractConfig, SearchConfig
from mtv_eval.data.examples import Example
from mtv_eval.engine.fidelity import FidelityError, check_fidelity, ensure_fidelity, search_mode
from mtv_eval.engine.forward import forward_logits, rope_index_function
from mtv_eval.engine.mean import mean_activations
from mtv_eval.engine.search import MaskScorer, reinforce
from mtv_eval.models.adapter import ProcessorAdapter
from mtv_eval.tiny import LMM_ARCHES, load_tiny

TASK = "vizwiz_vqa_mtv"
BUDGETS = "search_examples=4,icl_shots=0/2,mtv_shots=2,mtv_iterations=2"
MTV_ARGS = {"mtv_shots": "2", "mtv_iterations": "2", "search_steps": "2", "search_samples": "4", "search_examples": "4"}
SHOTS = 2
# What each tiny build must show: decoder layer list, layers with heads, skipped layers' reason.
LAYOUT = {
    "gemma3": ("model.language_model.layers", (0, 1, 2), None),
    "internvl": ("model.language_model.layers", (0, 1, 2), None),
    "mistral3": ("model.language_model.layers", (0, 1, 2), None),
    "qwen3_vl": ("model.language_model.layers", (0, 1, 2), None),
    "llava_onevision": ("model.language_model.layers", (0, 1, 2), None),
    "paligemma": ("model.language_model.layers", (0, 1, 2), None),
    "mllama": ("model.language_model.layers", (0, 2, 3), "cross-attention layer"),
    "llama4": ("language_model.model.layers", (0, 1, 2), None),
    "lfm2_vl": ("model.language_model.layers", (1, 3), "convolution layer"),
    "qwen3_5": ("model.language_model.layers", (1, 3), "linear-attention layer"),
    "gemma4": ("model.language_model.layers", (0, 1, 2), None),
    "glm4v": ("model.language_model.layers", (0, 1, 2), None),
}
# One image alone gets LLaVA-OneVision's extra high-resolution tiles; one of several does not
# (its processor's own rule), so there a single image's tokens differ from one of several.
SINGLE_IMAGE_EXTRAS = {"llava_onevision"}
# Prefix-LM: the prompt attends both ways, so the cached-prefix step is not exact.
NOT_FAST = {"paligemma"}

pytestmark = pytest.mark.usefixtures("generated_data")


def test_every_issue_architecture_has_a_tiny_build() -> None:
    assert set(LMM_ARCHES) == set(LAYOUT)


@pytest.fixture(scope="module")
def task_manager(generated_data: Path):
    """One lmms-eval TaskManager for the module: indexing lmms-eval's tasks takes seconds."""
    from lmms_eval.tasks import TaskManager

    from mtv_eval.data.taskspec import tasks_path

    return TaskManager(include_path=str(tasks_path()))


def _adapter(arch: str) -> ProcessorAdapter:
    model, processor = load_tiny(tiny_path(arch))
    return ProcessorAdapter(model, processor)


def _record_prompts(model: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[-1] > 1:  # a prompt forward, not a decoding step
            seen.append(ids.detach().clone())

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("arch", LMM_ARCHES)
def test_zero_icl_and_mtv_run_end_to_end_through_simple_evaluate(arch: str, task_manager, tmp_path: Path) -> None:
    from lmms_eval.evaluator import simple_evaluate

    from model_wrappers.hf import HFMTV

    image_tokens: dict[str, list[int]] = {}
    for mode in ("zero", "icl", "mtv"):
        lm = HFMTV(
            pretrained=str(tiny_path(arch)), mode=mode, shots=str(SHOTS), mtv_cache=str(tmp_path / "cache"), **MTV_ARGS
        )
        adapter = lm.adapter
        seen, handle = _record_prompts(lm.model)
        try:
            results = simple_evaluate(model=lm, tasks=[TASK], limit=2, batch_size=2, task_manager=task_manager)
        finally:
            handle.remove()
        assert "vqa_accuracy,none" in results["results"][TASK], (arch, mode)
        records = lm.accounting[TASK]
        shots = SHOTS if mode == "icl" else 0
        assert len(records) == 2 and all(r["shots_used"] == shots and r["images"] == shots + 1 for r in records)
        assert seen, "the model never saw a prompt"
        image_tokens[mode] = [n for ids in seen for n in adapter.count_image_tokens(ids)]
        if mode == "mtv":
            assert lm.mtv_records[TASK]["source"] == "built"
            assert adapter.fidelity is not None and adapter.fidelity.ok
        else:  # heads are located only for MTV: zero-shot and ICL never touch the locator
            assert adapter._sites is None
    zero, icl = image_tokens["zero"], image_tokens["icl"]
    assert zero and all(n == zero[0] and n > 0 for n in zero)
    # the task's images (12 x 12): several architectures give tokens by image size
    examples = [Example(segments=(make_image(i), "What is it?"), answer="red", uid=str(i)) for i in range(2)]
    one_of_two = adapter.count_image_tokens(adapter.encode([examples[:1]], examples[1:]).inputs["input_ids"])[0] // 2
    assert all(n == (SHOTS + 1) * one_of_two for n in icl), (arch, icl, one_of_two)
    if arch not in SINGLE_IMAGE_EXTRAS:
        assert one_of_two == zero[0]  # so the ICL prompt carries (K+1) x the zero-shot image tokens
    else:
        assert zero[0] > one_of_two


@pytest.mark.parametrize("arch", LMM_ARCHES)
def test_engine_forward_equals_the_models_own_on_a_left_padded_batch(arch: str) -> None:
    adapter = _adapter(arch)
    examples = pool(arch)
    shots, queries = [examples[:2], [], [examples[2]]], examples[3:6]
    batch = adapter.encode(shots, queries).inputs
    assert not bool(batch["attention_mask"].all()), "the batch must be padded"
    with torch.no_grad():
        engine = forward_logits(adapter.model, None, batch)
        for row in range(3):
            single = adapter.encode([shots[row]], [queries[row]]).inputs
            own = adapter.model(**single, use_cache=False).logits[:, -1, :].float()  # no positions of ours
            torch.testing.assert_close(engine[row : row + 1], own, atol=1e-5, rtol=1e-5)
            if rope_index_function(adapter.model) is not None:
                # the model's own multimodal positions matter: plain 1-D ones are measurably wrong
                naive = torch.arange(single["input_ids"].shape[-1])[None]
                wrong = adapter.model(**single, position_ids=naive, use_cache=False).logits[:, -1, :].float()
                assert (wrong - own).abs().max() > 1e-3


@pytest.mark.parametrize("arch", LMM_ARCHES)
def test_fast_search_equals_exact_where_it_runs(arch: str) -> None:
    adapter = _adapter(arch)
    examples = pool(arch, 8)
    means = mean_activations(adapter, examples, ExtractConfig(shots=2, iterations=2, batch_size=2), progress=False)
    masks = (
        torch.rand(8, *adapter.sites.shape[:2], generator=torch.Generator().manual_seed(1)) < 0.4
    ) & adapter.sites.valid
    exact = MaskScorer(adapter, means, examples, mode="exact").losses(4, masks)
    assert exact.std() > 0, "masks must matter, or the comparison proves nothing"
    report = check_fidelity(adapter, examples)
    assert report.ok, report.describe()
    if arch in NOT_FAST:
        assert not report.fast_ok
        with pytest.warns(RuntimeWarning, match="not exact.*exact search"):
            assert search_mode(adapter, examples, "fast") == "exact"
        fast = MaskScorer(adapter, means, examples, mode="fast").losses(4, masks)
        assert (fast - exact).abs().max() > 1e-5  # why it falls back: the cached step would be wrong
        return
    assert report.fast_ok, report.describe()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert search_mode(adapter, examples, "fast") == "fast"
    scorer = MaskScorer(adapter, means, examples, mode="fast", cache_prefixes=True)
    torch.testing.assert_close(scorer.losses(4, masks), exact, atol=1e-4, rtol=0)
    # the cached prefix (the model's own cache object) is reused, never modified by a step
    torch.testing.assert_close(scorer.losses(4, masks), exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", LMM_ARCHES)
def test_doctor_passes(arch: str) -> None:
    from mtv_eval.cli.doctor import run_doctor

    lines: list[str] = []
    assert run_doctor("hf_mtv", f"pretrained={tiny_path(arch)}", out=lines.append) == 0, "\n".join(lines)
    table = [line for line in "\n".join(lines).splitlines() if line.startswith("| ")][1:]  # after the header
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in table}
    assert rows == dict.fromkeys(("load", "prompts", "image tokens", "generation", "heads", "fidelity", "MTV"), "PASS")


@pytest.mark.parametrize("arch", LMM_ARCHES)
def test_heads_are_found_layer_by_layer_with_skipped_layers_named(arch: str) -> None:
    adapter = _adapter(arch)
    sites = adapter.sites
    prefix, layers, reason = LAYOUT[arch]
    assert sites.layers == layers
    assert all(name.startswith(f"{prefix}.") for name in sites.names)
    assert sites.decoder_layers == len(layers) + len(sites.skipped)
    assert {s.reason for s in sites.skipped} == ({reason} if reason else set())
    modules = dict(adapter.model.named_modules())
    for name, projection, heads, head_dim in zip(sites.names, sites.projections, sites.heads, sites.head_dims):
        assert modules[name] is projection and projection.in_features == heads * head_dim


def test_head_size_may_differ_per_layer() -> None:
    # Gemma 4: sliding layers with 16-dim heads, the global layer with 32-dim heads.
    adapter = _adapter("gemma4")
    sites = adapter.sites
    assert sites.heads == (4, 4, 4) and sites.head_dims == (16, 16, 32)
    assert sites.shape == (3, 4, 32) and not sites.uniform
    from mtv_eval.engine.capture import LastTokenCapture

    inputs = adapter.encode([[]], pool("gemma4")[:1]).inputs
    seen: dict[int, torch.Tensor] = {}
    handles = [
        p.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][:, -1].detach().clone()))
        for i, p in enumerate(sites.projections)
    ]
    try:
        with torch.no_grad(), LastTokenCapture(sites) as capture:
            forward_logits(adapter.model, sites, inputs)
    finally:
        for handle in handles:
            handle.remove()
    captured = capture.result()[0]
    for row, (heads, head_dim) in enumerate(zip(sites.heads, sites.head_dims)):
        torch.testing.assert_close(captured[row, :heads, :head_dim], seen[row].view(heads, head_dim))
        assert not captured[row, :, head_dim:].any()  # beyond this layer's head size: nothing


def test_search_never_selects_entries_that_are_not_heads() -> None:
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[1, 4:] = False  # a layer with 4 heads among layers of 6
    drawn: list[torch.Tensor] = []

    def score(index: int, masks: torch.Tensor) -> torch.Tensor:
        drawn.append(masks)
        return (~masks[:, 0, 0]).float() + 0.1 * masks.sum(dim=(1, 2)).float()

    config = SearchConfig(steps=40, samples=16, pool_size=4, select_examples=2, seed=0)
    result = reinforce(score, (3, 6), pool_size=4, config=config, progress=False, valid=valid)
    assert all(not (m & ~valid).any() for m in drawn)
    assert not (result.mask & ~valid).any()
    initial = torch.sigmoid(torch.tensor(config.init_logit))
    torch.testing.assert_close(result.probs[~valid], initial.expand(2))  # never drawn: no gradient


def test_processor_only_inputs_never_reach_the_model() -> None:
    adapter = _adapter("paligemma")
    processor_output = adapter.processor(
        text=[adapter.render([], pool("paligemma")[0])], images=[[pool("paligemma")[0].images[0]]], return_tensors="pt"
    )
    assert "labels" in processor_output  # PaliGemma's processor returns labels for training
    inputs = adapter.encode([[]], pool("paligemma")[:1]).inputs
    assert "labels" not in inputs and "token_type_ids" in inputs
    assert "labels" in adapter.dropped_inputs


def test_chat_template_writes_turns_answers_and_stops() -> None:
    adapter = _adapter("gemma3")
    shot, query = pool("gemma3")[:2]
    prompt = adapter.render([shot], query)
    assert prompt.startswith("<bos><start_of_turn>user\n<start_of_image>")
    assert f"<start_of_turn>model\n{shot.answer}<end_of_turn>\n<start_of_turn>user\n" in prompt
    assert prompt.endswith("<start_of_turn>model\n")
    assert adapter.template.answer_text([shot], query, "blue") == "blue"
    end_of_turn = adapter.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in adapter.stop_token_ids() and adapter.tokenizer.eos_token_id in adapter.stop_token_ids()
    first = adapter.answer_token_ids([query], [[shot]])
    assert adapter.tokenizer.decode(first) == adapter.tokenizer.decode(
        adapter.tokenizer(query.answer, add_special_tokens=False)["input_ids"][:1]
    )


def test_a_wrong_position_rule_is_caught_naming_the_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine bug the issue found: Qwen3-VL given 1-D positions. Simulate it in OUR code.
    import mtv_eval.engine.forward as forward

    adapter = _adapter("qwen3_vl")

    def one_dimensional(model, sites, inputs):
        return (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)

    monkeypatch.setattr(forward, "prompt_positions", one_dimensional)
    with pytest.raises(
        FidelityError,
        match=r"differs from the model's own forward on Qwen3VLForConditionalGeneration.*: 0\.0\d+ > tolerance 1e-04",
    ):
        ensure_fidelity(adapter, pool("qwen3_vl"))


def test_fidelity_tolerance_widens_only_where_tf32_may_round() -> None:
    """float32 on a GPU whose convolutions or matmuls may run in TF32 gets the TF32 bound; CPU keeps 1e-4."""
    from mtv_eval.engine.fidelity import TF32_TOLERANCE, TOLERANCES, tolerance_for

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    saved = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        assert tolerance_for(torch.float32, cuda) == TOLERANCES[torch.float32] == 1e-4
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
        assert tolerance_for(torch.float32, cuda) == TF32_TOLERANCE
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("high")
        assert tolerance_for(torch.float32, cuda) == TF32_TOLERANCE
        assert tolerance_for(torch.float32, cpu) == 1e-4  # CPUs never compute float32 in TF32
        assert tolerance_for(torch.bfloat16, cuda) == TOLERANCES[torch.bfloat16]
        # still far below what a wrong position or mask does (0.09 on a tiny Qwen3-VL)
        assert TF32_TOLERANCE < 0.09 / 10
    finally:
        torch.backends.cudnn.allow_tf32, precision = saved
        torch.set_float32_matmul_precision(precision)
