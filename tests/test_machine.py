"""The machine block: instruction sets parsed from constructed /proc/cpuinfo texts, the
oneDNN cap, and the block's types."""

from __future__ import annotations

import platform

import pytest
import torch

from coalora.machine import (
    KERNEL_ENV,
    bf16_matrix_units,
    cpu_flags,
    cpu_model,
    kernel_isa,
    machine_info,
)


def cpuinfo(model: str | None, *flag_lines: str, key: str = "flags") -> str:
    """A /proc/cpuinfo text, one processor per flags line."""
    blocks = []
    for n, flags in enumerate(flag_lines):
        lines = [f"processor\t: {n}", "vendor_id\t: GenuineIntel"]
        if model is not None:
            lines.append(f"model name\t: {model}")
        lines += [f"{key}\t\t: {flags}", "bogomips\t: 4800.00"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


SAPPHIRE_RAPIDS = cpuinfo(
    "Intel(R) Xeon(R) Platinum 8480+",
    *["fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile "
      "amx_int8 avx512_fp16"] * 2,
)  # fmt: skip
HASWELL = cpuinfo("Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz", "fpu sse2 avx avx2 fma")
GRAVITON3 = cpuinfo(None, "fp asimd evtstrm aes sve svebf16 bf16", key="Features")


def test_an_amx_cpu_has_every_x86_kernel_isa_and_bf16_matrix_units():
    flags = cpu_flags(SAPPHIRE_RAPIDS)
    assert kernel_isa(flags) == [
        "amx_bf16", "amx_int8", "amx_tile", "avx2", "avx512_bf16", "avx512_vnni", "avx512f"
    ]  # fmt: skip
    assert "avx512_fp16" in flags and "avx512_fp16" not in kernel_isa(flags)  # not a KERNEL_ISA
    assert bf16_matrix_units(SAPPHIRE_RAPIDS)
    assert cpu_model(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8480+"


def test_an_avx2_cpu_has_no_bf16_matrix_units():
    assert kernel_isa(cpu_flags(HASWELL)) == ["avx2"]
    assert not bf16_matrix_units(HASWELL)


def test_avx512_bf16_alone_counts_as_bf16_matrix_units():
    zen4 = cpuinfo("AMD EPYC 9454 48-Core Processor", "avx2 avx512f avx512_vnni avx512_bf16")
    assert bf16_matrix_units(zen4)
    assert kernel_isa(cpu_flags(zen4)) == ["avx2", "avx512_bf16", "avx512_vnni", "avx512f"]


def test_arm_features_line_and_missing_model_name():
    assert kernel_isa(cpu_flags(GRAVITON3)) == ["asimd", "sve"]
    assert not bf16_matrix_units(GRAVITON3)  # ARM bf16 is no amx_bf16/avx512_bf16
    assert cpu_model(GRAVITON3) == (platform.processor() or "unknown")


def test_only_flags_every_processor_has_count():
    mixed = cpuinfo("hybrid", "avx2 avx512f avx512_bf16", "avx2")
    assert kernel_isa(cpu_flags(mixed)) == ["avx2"]
    assert not bf16_matrix_units(mixed)


def test_no_cpuinfo_degrades_to_an_empty_isa_and_the_platforms_name():
    assert cpu_flags("") == frozenset()
    assert not bf16_matrix_units("")
    info = machine_info("cpu", cpuinfo="")
    assert info["isa"] == []
    assert info["cpu"] == (platform.processor() or "unknown")


def test_machine_info_types_and_the_onednn_cap(monkeypatch):
    for name in KERNEL_ENV:
        monkeypatch.delenv(name, raising=False)
    info = machine_info("cpu", cpuinfo=SAPPHIRE_RAPIDS)
    assert list(info) == [
        "cpu", "arch", "isa", "kernel_env", "torch_threads", "blas", "gpu", "cuda"
    ]  # fmt: skip
    assert info["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["arch"] == platform.machine()
    assert info["isa"] == kernel_isa(cpu_flags(SAPPHIRE_RAPIDS))
    assert info["kernel_env"] == {}
    assert info["torch_threads"] == torch.get_num_threads()
    assert isinstance(info["blas"], str) and info["blas"]
    assert info["gpu"] is None and info["cuda"] is None  # a CPU device names no GPU

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    kernels = machine_info(torch.device("cpu"))["kernel_env"]
    assert kernels == {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}


@pytest.mark.cuda
def test_a_cuda_device_names_its_gpu():
    info = machine_info("cuda")
    assert info["gpu"] == torch.cuda.get_device_name() and info["cuda"] == torch.version.cuda


def test_a_onednn_cap_below_bf16_takes_the_bf16_units_away():
    """``ONEDNN_MAX_CPU_ISA=AVX512_CORE`` emulates a CPU without bf16 units: oneDNN then
    emulates bf16 GEMMs, so ``compute_dtype=auto`` must pick fp32 there."""
    assert bf16_matrix_units(SAPPHIRE_RAPIDS, env={})
    assert not bf16_matrix_units(SAPPHIRE_RAPIDS, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
    assert not bf16_matrix_units(SAPPHIRE_RAPIDS, env={"ONEDNN_MAX_CPU_ISA": "avx2"})
    assert bf16_matrix_units(SAPPHIRE_RAPIDS, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    assert bf16_matrix_units(SAPPHIRE_RAPIDS, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})
    assert not bf16_matrix_units(HASWELL, env={"ONEDNN_MAX_CPU_ISA": "ALL"})
