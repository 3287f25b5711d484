"""bitsandbytes: importable in every process, imported only where it is used, and quiet.

peft imports bitsandbytes at ``import peft`` whenever it is installed (``peft.helpers``).
That costs about 2 s of CPU (measured: ``import peft`` after transformers, 0.2 s with it
absent, 2.2 s with it), which the fork server and every process that writes an adapter would
pay without ever quantizing with bitsandbytes. And bitsandbytes 0.50 on a CPU with
AVX512-BF16 tries at import to fetch a fused kernel from the model hub through the
``kernels`` package and logs ``Failed to load CPU gemm_4bit_forward from kernels-community:
...`` when it cannot, which would open the logs of jobs that have nothing to do with it.

- :func:`drop_kernel_hub_warning` (called by ``coalora/__init__.py``, before anything can
  import bitsandbytes) puts a filter on that warning's logger, which drops exactly that
  message, in whatever process and by whatever path bitsandbytes is imported.
- :func:`import_peft` imports peft with bitsandbytes looking absent for the length of that
  import only; afterwards bitsandbytes is as installed again (``import bitsandbytes`` works,
  peft's and transformers' "is it installed" answers are recomputed), so a process that
  never quantizes with it never loads it. peft's own code imports it on first use (peft's
  LoRA dispatch asks for it when it builds layers).
- :func:`import_bitsandbytes` imports it and re-binds the one name peft bound at import
  (``peft.helpers.bnb``) while it looked absent.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from types import ModuleType

MODULE = "bitsandbytes"

# bitsandbytes/backends/cpu/ops.py, at import on a CPU with AVX512-BF16: `logger.warning`
# on this logger when `from kernels import get_kernel` or the hub download fails.
KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
KERNEL_WARNING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _is_kernel_hub_warning(record: logging.LogRecord) -> bool:
    # Why it is dropped: the kernel is an optional fused bf16 kernel that bitsandbytes would
    # download from the hub (the `kernels` package, which coalora does not install: runs are
    # offline and their numbers must not depend on what the hub serves). Without it
    # bitsandbytes runs its own built-in CPU code, as on every CPU without AVX512-BF16, so
    # the warning asks for nothing a run needs. Only this message is dropped.
    return str(record.msg).startswith(KERNEL_WARNING)


def _keep(record: logging.LogRecord) -> bool:
    return not _is_kernel_hub_warning(record)


def drop_kernel_hub_warning() -> None:
    """Filter bitsandbytes' kernel-hub warning out of its logger (idempotent: logging keeps
    one copy of a filter). The logger is created here if bitsandbytes is not imported yet,
    and bitsandbytes' ``logging.getLogger(__name__)`` returns this same one."""
    logging.getLogger(KERNEL_LOGGER).addFilter(_keep)


def _forget_cached_answers() -> None:
    """What peft and transformers cached about bitsandbytes (their lru_caches of "is it
    installed"), so that they ask again as a fresh process would."""
    for module, names in (
        ("peft.import_utils", ("is_bnb_available", "is_bnb_4bit_available")),
        ("transformers.utils.import_utils", ("is_bitsandbytes_available",)),
    ):
        loaded = sys.modules.get(module)
        for name in names:
            clear = getattr(getattr(loaded, name, None), "cache_clear", None)
            if clear is not None:
                clear()


def import_peft() -> ModuleType:
    """``peft``, imported (once per process) without importing bitsandbytes.

    While peft's modules execute, ``sys.modules["bitsandbytes"]`` is None, so
    ``importlib.util.find_spec`` answers None and peft binds ``peft.helpers.bnb = None``;
    then the entry is removed and the cached answers are forgotten. A process that has
    imported bitsandbytes already, or has no bitsandbytes, imports peft as it is.
    """
    if "peft" in sys.modules:
        return sys.modules["peft"]
    defer = MODULE not in sys.modules and importlib.util.find_spec(MODULE) is not None
    if defer:
        sys.modules[MODULE] = None
    try:
        import peft
    finally:
        if defer and sys.modules.get(MODULE, ...) is None:
            del sys.modules[MODULE]
            _forget_cached_answers()
    return peft


def import_bitsandbytes() -> ModuleType:
    """bitsandbytes, imported (once per process) without the kernel-hub warning; raises
    ImportError when it is not installed."""
    drop_kernel_hub_warning()  # already done by `import coalora`; harmless again
    import bitsandbytes

    # peft.helpers binds `bnb` at import (None when peft came from import_peft).
    helpers = sys.modules.get("peft.helpers")
    if helpers is not None and getattr(helpers, "bnb", bitsandbytes) is None:
        helpers.bnb = bitsandbytes
    return bitsandbytes
