"""bitsandbytes only where QLoRA-bnb runs (``import_bitsandbytes``), in no other process.

peft imports bitsandbytes whenever it is installed (``peft.helpers``, at ``import peft``),
and so did every process that writes or loads an adapter, the fork server included. That
costs 2-3 s of CPU, and bitsandbytes 0.50 on a CPU with AVX512-BF16 also tries, at import,
to fetch a fused kernel from the model hub through the ``kernels`` package and logs
``Failed to load CPU gemm_4bit_forward from kernels-community: ...`` when it cannot, which
then opens the logs of jobs that have nothing to do with bitsandbytes.

:func:`hide` (called by ``coalora/__init__.py``, before anything here can import peft) sets
``sys.modules["bitsandbytes"] = None``: ``importlib.util.find_spec`` then answers None, so
peft, transformers and accelerate take bitsandbytes as not installed and take their paths
without it, and an ``import bitsandbytes`` raises ImportError. :func:`import_bitsandbytes`
lifts that, forgets the answers peft and transformers cached meanwhile, and imports it.
"""

from __future__ import annotations

import logging
import sys

MODULE = "bitsandbytes"

# bitsandbytes/backends/cpu/ops.py, at import on a CPU with AVX512-BF16: `logger.warning`
# on this logger when `from kernels import get_kernel` or the hub download fails.
KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNEL_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def hide() -> None:
    """Make bitsandbytes look not installed to this process, unless it is imported already."""
    sys.modules.setdefault(MODULE, None)


def hidden() -> bool:
    return MODULE in sys.modules and sys.modules[MODULE] is None


def _drop_kernel_hub_warning(record: logging.LogRecord) -> bool:
    # Why it is dropped: the kernel is an optional fused bf16 kernel that bitsandbytes would
    # download from the hub (the `kernels` package, which coalora does not install: runs are
    # offline and their numbers must not depend on what the hub serves). Without it
    # bitsandbytes runs its own built-in CPU code, as on every CPU without AVX512-BF16, so
    # the warning asks for nothing a run needs. Only this message is dropped.
    return not str(record.msg).startswith(KERNEL_WARNING)


def _forget_cached_absence() -> None:
    """What peft and transformers cached while bitsandbytes was hidden (their lru_caches of
    "is it installed"), so that they see it now as a fresh process would."""
    for module, names in (
        ("peft.import_utils", ("is_bnb_available", "is_bnb_4bit_available")),
        ("transformers.utils.import_utils", ("is_bitsandbytes_available",)),
    ):
        loaded = sys.modules.get(module)
        for name in names:
            clear = getattr(getattr(loaded, name, None), "cache_clear", None)
            if clear is not None:
                clear()


def import_bitsandbytes():
    """bitsandbytes, imported (once per process) without the kernel-hub warning; raises
    ImportError when it is not installed."""
    if hidden():
        del sys.modules[MODULE]
        _forget_cached_absence()
    logging.getLogger(KERNEL_LOGGER).addFilter(_drop_kernel_hub_warning)  # a no-op the 2nd time
    import bitsandbytes

    # peft.helpers binds `bnb` at import (None while hidden); as a fresh import would.
    helpers = sys.modules.get("peft.helpers")
    if helpers is not None and getattr(helpers, "bnb", bitsandbytes) is None:
        helpers.bnb = bitsandbytes
    return bitsandbytes
