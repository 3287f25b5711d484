"""The compute dtype: which floating-point format the forward and backward passes run in.

QLoRA computes in bf16 over its 4-bit storage (``bnb_4bit_compute_dtype=bfloat16``). Here the
setting ``compute_dtype`` (training and evaluation) is ``bf16``, ``fp32`` or ``auto``:

- ``auto`` is bf16 where the hardware has bf16 matrix units (a CUDA GPU that supports bf16; a
  CPU with AMX-BF16 or AVX512-BF16, detected by ``coalora.machine``), fp32 elsewhere: on CPUs
  without them oneDNN emulates bf16 GEMMs at a fraction of fp32's speed (measured:
  benchmarks/README.md, "Compute dtype");
- ``bf16`` is honoured everywhere, with one warning where it will be slow.

In bf16 the frozen base (its dequantized working weights, embeddings, norms) is *held* in
bf16, so matmuls never re-cast it; what trains (LoRA factors, mixing matrices, the
configuration-aware model, task heads) and the optimizer state stay fp32 master weights; the
model's forward runs under ``torch.autocast`` wherever it is called (the engine, the search,
perplexity, lm-eval; the same code on CPU and CUDA), which keeps losses in fp32, and returns
fp32 logits, so every metric is reduced in fp32 (``hold``). The configuration-aware model
runs outside the model's forward, in fp32. The quantizer, cost tables and ILP never see the compute dtype: they quantize from
the originals in fp32 (``coalora.quant``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .heap import release_freed_memory
from .machine import bf16_matrix_units

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# Setting -> torch dtype name. torch is imported only by the functions that use it: the
# command line offers these choices without loading torch.
COMPUTE_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
AUTO = "auto"
SETTINGS = (AUTO, *COMPUTE_DTYPES)
SLOW_BF16 = (
    "compute_dtype=bf16 on {where}, which has no bf16 matrix units: bf16 matmuls are emulated "
    "there and run several times slower than fp32 (compute_dtype=auto picks fp32 here)"
)
_warned: set[str] = set()


def check_setting(value, what: str = "compute_dtype") -> str:
    """``value`` if it is a known compute-dtype setting, else a one-line ``ValueError``."""
    if value not in SETTINGS:
        raise ValueError(f"{what} must be one of {', '.join(SETTINGS)}, got {value!r}")
    return value


def has_bf16_units(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls in hardware (detected, never assumed)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bf16_matrix_units()
    return False


def resolve(setting: str, device: torch.device | str) -> torch.dtype:
    """The dtype ``setting`` (bf16 | fp32 | auto) means on ``device``; warns once per process
    and device where an explicit bf16 will be slow."""
    import torch

    check_setting(setting)
    device = torch.device(device)
    units = has_bf16_units(device)
    if setting == AUTO:
        return torch.bfloat16 if units else torch.float32
    dtype = getattr(torch, COMPUTE_DTYPES[setting])
    if dtype == torch.bfloat16 and not units and device.type not in _warned:
        _warned.add(device.type)
        where = "this CPU" if device.type == "cpu" else f"device {device}"
        log.warning(SLOW_BF16.format(where=where))
    return dtype


def setting_of(record_name: str) -> str:
    """The setting (``bf16`` / ``fp32``) of a record's dtype name (``bfloat16`` / ``float32``)."""
    return {name: setting for setting, name in COMPUTE_DTYPES.items()}[record_name]


def record_name(dtype: torch.dtype) -> str:
    """The name records give ``dtype`` (``protocol.dtype``): ``"bfloat16"`` or ``"float32"``."""
    name = str(dtype).removeprefix("torch.")
    if name not in COMPUTE_DTYPES.values():
        raise ValueError(f"{name} is not a compute dtype ({', '.join(COMPUTE_DTYPES.values())})")
    return name


def hold(model: nn.Module, dtype: torch.dtype) -> None:
    """Make ``model`` compute in ``dtype`` wherever it is called, in place: its frozen
    floating-point parameters are held in ``dtype``, its trained ones (``requires_grad``) in
    fp32 (the master weights); in bf16 its forward runs under autocast and returns fp32
    logits. Parameters keep their identity (tied embeddings stay tied; ``QuantizedBase`` and
    the optimizer keep their references); buffers are left as they are (rotary frequencies
    stay fp32). Holding in fp32 again undoes a bf16 hold."""
    import torch

    converted = False
    with torch.no_grad():
        for param in model.parameters():
            if not param.is_floating_point():
                continue
            wanted = torch.float32 if param.requires_grad else dtype
            if param.dtype != wanted:
                param.data = param.data.to(wanted)
                converted = True
    if converted:
        release_freed_memory()  # the weights in their former dtype
    if FORWARD_IN_CLASS in vars(model):
        del model.forward  # back to the class's forward
        delattr(model, FORWARD_IN_CLASS)
    if dtype != torch.float32:
        setattr(model, FORWARD_IN_CLASS, True)
        model.forward = _computing_in(model.forward, dtype)


# Marks a model whose ``forward`` is ``hold``'s wrapper (an instance attribute).
FORWARD_IN_CLASS = "_coalora_compute_dtype_forward"


def _computing_in(forward, dtype):
    """``forward`` under autocast to ``dtype`` on its inputs' device type, with fp32 logits
    (so losses, perplexities, log-likelihoods and accuracies are reduced in fp32)."""
    import functools

    import torch

    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        with torch.autocast(device_type, dtype=dtype):
            output = forward(*args, **kwargs)
        logits = getattr(output, "logits", None)
        if logits is not None and logits.dtype != torch.float32:
            output.logits = logits.float()
        return output

    return wrapped
