"""lmms-eval registration: the manifests behind the `lmms_eval.models` entry point.

lmms-eval 0.7 ignores `@register_model` for plugins; it loads `ModelManifest`s from the
entry-point group `lmms_eval.models` (see pyproject.toml), so after `pip install` the
names below work from the lmms-eval CLI and from `simple_evaluate`.
"""

from __future__ import annotations

from lmms_eval.models.registry_v2 import ModelManifest

MODELS = {
    "hf_mtv": "model_wrappers.hf.HFMTV",
    "idefics2_mtv": "model_wrappers.idefics2.Idefics2MTV",
    "qwen_vl_mtv": "model_wrappers.qwen_vl.QwenVLMTV",
    "qwen2_vl_mtv": "model_wrappers.qwen2_vl.Qwen2VLMTV",
    "vila_mtv": "model_wrappers.vila.VilaMTV",
}


def manifests() -> list[ModelManifest]:
    """One manifest per mtv-eval model (called by lmms-eval's registry)."""
    return [ModelManifest(model_id=name, simple_class_path=path) for name, path in MODELS.items()]


def register() -> None:
    """Register in the current process (for code that imported lmms-eval before install)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    for manifest in manifests():
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)
