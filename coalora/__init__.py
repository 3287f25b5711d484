"""coalora: a reproducibility harness for CoA-LoRA (configuration-aware LoRA for quantized LLMs)."""

__version__ = "0.1.0"
