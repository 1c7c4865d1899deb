"""The toy multimodal ICL world and its small trained LLaVA (the embedded default model).

`world` draws the images and tasks, `model` builds tokenizer, processor and model,
`train` trains the checkpoint in `checkpoint/`, `evaluate_icl` measures zero-shot and ICL.
"""

from pathlib import Path

CHECKPOINT = Path(__file__).parent / "checkpoint"
