"""mtv-eval: Multimodal Task Vectors against many-shot multimodal ICL, on lmms-eval."""

__version__ = "0.1.0"
