"""Which machine a number was measured on: the ``"machine"`` block of every evaluation record
and training manifest.

The same code and packages give different floating-point bits on CPUs whose instruction sets
select different kernels (oneDNN and MKL dispatch on AVX-512, AVX-512 BF16, AMX, ...), so a
record that is to be reproduced says which of them it ran with. Everything here is detected,
never assumed: CPU flags come from ``/proc/cpuinfo`` on Linux (``flags`` on x86, ``Features``
on ARM); where that file is missing the instruction-set list is empty and the CPU name falls
back to ``platform.processor()``.

torch is imported only by the functions that ask it: the results schema imports
``KERNEL_ISA`` from here, and ``coalora report`` never loads torch.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path

# The instruction sets that change which kernels run (and therefore the floating-point bits).
KERNEL_ISA = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)
# Flags of CPUs with bf16 matrix units (bf16 matmuls at least as fast as fp32 ones).
BF16_MATRIX_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# Environment variables that choose other kernels on the same CPU (hence other bits):
# oneDNN's instruction-set cap (e.g. "AVX2" on an AMX machine, to emulate an older CPU) and
# MKL's conditional numerical reproducibility modes and instruction-set cap.
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")
CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo's key of the CPU flags: x86 says "flags", ARM "Features".
FLAG_KEYS = ("flags", "features")
UNKNOWN = "unknown"


def _cpuinfo_values(cpuinfo: str, key: str) -> list[str]:
    """The values of ``key`` (case-insensitive), one per processor, in file order."""
    values = []
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == key:
            values.append(value.strip())
    return values


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags every processor of a ``/proc/cpuinfo`` text has (empty if it lists none)."""
    per_cpu = [
        frozenset(value.split()) for key in FLAG_KEYS for value in _cpuinfo_values(cpuinfo, key)
    ]
    return frozenset.intersection(*per_cpu) if per_cpu else frozenset()


def cpu_model(cpuinfo: str) -> str:
    """The CPU's model name: ``/proc/cpuinfo``'s, else ``platform.processor()``, else
    ``"unknown"``."""
    names = _cpuinfo_values(cpuinfo, "model name")
    return (names[0] if names else "") or platform.processor() or UNKNOWN


def kernel_isa(flags: frozenset[str]) -> list[str]:
    """The sorted members of ``KERNEL_ISA`` among ``flags``."""
    return sorted(isa for isa in KERNEL_ISA if isa in flags)


@functools.cache
def this_cpuinfo() -> str:
    """This machine's ``/proc/cpuinfo`` ("" where there is none, e.g. macOS, Windows)."""
    try:
        return CPUINFO.read_text()
    except OSError:
        return ""


# oneDNN instruction-set caps (``ONEDNN_MAX_CPU_ISA``) that still allow its bf16 kernels;
# a lower cap (e.g. AVX512_CORE, AVX2) makes oneDNN emulate bf16 even on a CPU that has it.
ONEDNN_BF16_CAPS = frozenset(
    {
        "ALL",
        "DEFAULT",
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX10_1_512",
        "AVX512_CORE_AMX",
        "AVX10_1_512_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512_AMX_FP16",
    }
)


def bf16_matrix_units(cpuinfo: str | None = None, env: dict | None = None) -> bool:
    """Whether the CPU (this one, or that of a ``/proc/cpuinfo`` text) has bf16 matrix units
    (the ``amx_bf16`` or ``avx512_bf16`` flag) that oneDNN may use (``ONEDNN_MAX_CPU_ISA`` in
    ``env``, default this process's environment, unset or not below AVX512_CORE_BF16)."""
    flags = cpu_flags(this_cpuinfo() if cpuinfo is None else cpuinfo)
    cap = (os.environ if env is None else env).get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return bool(flags & BF16_MATRIX_FLAGS) and (not cap or cap in ONEDNN_BF16_CAPS)


@functools.cache
def torch_blas() -> str:
    """The BLAS torch was built with (``BLAS_INFO=`` of ``torch.__config__.show()``)."""
    import torch

    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return found.group(1) if found else UNKNOWN


def kernel_env() -> dict[str, str]:
    """The variables of ``KERNEL_ENV`` that are set (and not empty), by name."""
    return {name: os.environ[name] for name in KERNEL_ENV if os.environ.get(name)}


def machine_info(device, cpuinfo: str | None = None) -> dict:
    """The ``"machine"`` block of a record measured on ``device`` (a ``torch.device`` or its
    name; ``cpuinfo``: a ``/proc/cpuinfo`` text in place of this machine's)."""
    import torch

    cpuinfo = this_cpuinfo() if cpuinfo is None else cpuinfo
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    return {
        "cpu": cpu_model(cpuinfo),
        "arch": platform.machine() or UNKNOWN,
        "isa": kernel_isa(cpu_flags(cpuinfo)),
        "kernel_env": kernel_env(),
        "torch_threads": torch.get_num_threads(),
        "blas": torch_blas(),
        "gpu": torch.cuda.get_device_name(device) if on_cuda else None,
        "cuda": torch.version.cuda if on_cuda else None,
    }
