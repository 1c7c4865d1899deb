"""`idefics2_mtv`: Idefics2 (HuggingFaceM4/idefics2-8b), as in the MTV paper."""

from __future__ import annotations

from model_wrappers.hf import HFMTV


class Idefics2MTV(HFMTV):
    """Idefics2 with the paper's processor setting: no image splitting (64 tokens an image).

    Precision: bf16 on GPU, fp32 on CPU (dtype=auto); the Idefics2 chat format of
    `TEMPLATES["idefics2"]` ("User:<image>...<end_of_utterance>\\nAssistant:").
    """

    processor_kwargs = {"do_image_splitting": False}
