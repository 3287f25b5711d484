"""coalora: a reproducibility harness for CoA-LoRA (configuration-aware LoRA for quantized LLMs)."""

import os

# transformers' advisory warnings (one per model load, about its own defaults) would fill
# every job's log; set here, before anything is imported, so that every process of a run
# (the fork server's included: coalora.forkserver compares environments) sees the same.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

# bitsandbytes stays out of every process but QLoRA-bnb's (coalora/bnb.py says why): hidden
# before anything here imports peft, which would import it.
from .bnb import hide as _hide_bitsandbytes  # noqa: E402

_hide_bitsandbytes()

__version__ = "0.1.0"
