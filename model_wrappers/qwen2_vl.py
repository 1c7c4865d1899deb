"""`qwen2_vl_mtv`: Qwen2-VL and Qwen2.5-VL through native transformers classes."""

from __future__ import annotations

from model_wrappers.hf import HFMTV


class Qwen2VLMTV(HFMTV):
    """Qwen2-VL / Qwen2.5-VL; ChatML prompts with vision markers (`TEMPLATES["qwen2_vl"]`).

    Their 3-D multimodal rotary positions are computed by the engine from the whole
    prompt (`mtv_eval.engine.forward.prompt_positions`), so the fast head search's
    cached prefix stays exact.
    """
