"""coalora: a reproducibility harness for CoA-LoRA (configuration-aware LoRA for quantized LLMs)."""

import os

# transformers' advisory warnings (one per model load, about its own defaults) would fill
# every job's log; set here, before anything is imported, so that every process of a run
# (the fork server's included: coalora.forkserver compares environments) sees the same.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
