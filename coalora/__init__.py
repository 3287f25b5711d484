"""coalora: a reproducibility harness for CoA-LoRA (configuration-aware LoRA for quantized LLMs)."""

import os

# transformers' advisory warnings (one per model load, about its own defaults) would fill
# every job's log; set here, before anything is imported, so that every process of a run
# (the fork server's included: coalora.forkserver compares environments) sees the same.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# bitsandbytes' kernel-hub warning (coalora/bnb.py says why) is filtered out before anything
# can import bitsandbytes; bitsandbytes itself stays importable.
from .bnb import drop_kernel_hub_warning as _drop_kernel_hub_warning  # noqa: E402

_drop_kernel_hub_warning()

__version__ = "0.1.0"
