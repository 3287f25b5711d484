"""The benchmark scripts run end to end on a tiny model (their numbers are not checked)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_step_cost_prints_both_methods_and_a_ratio():
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "step_cost.py"), "--model", "tiny-bert",
        "--steps", "2", "--block", "1", "--warmup", "1", "--budgets", "3", "4",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=True)
    text = out.stdout
    coa = re.search(r"^coalora \(K=2\)\s+2\s+([\d.]+)\s+\S+\s+([\d.]+)$", text, re.M)
    assert coa, text
    assert float(coa.group(1)) > 0 and float(coa.group(2)) > 0
    assert re.search(r"^qlora\s+1\s+[\d.]+\s", text, re.M), text
    assert re.search(r"^switch base \(QuantizedBase\.apply\)\s+[\d.]+\s+[\d.]+%", text, re.M)
    assert "search round (full" in text and "goal on CPU: ratio <= 1.1" in text


@pytest.mark.slow
def test_step_cost_puts_both_compute_dtypes_side_by_side():
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "step_cost.py"), "--model", "tiny-bert",
        "--steps", "1", "--block", "1", "--warmup", "0", "--budgets", "3", "4",
        "--dtype", "fp32,bf16",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, check=True)
    text = out.stdout
    assert "compute dtype bfloat16 (--dtype bf16)" in text and "compute dtype float32" in text
    row = re.search(r"^CoA-LoRA step \(K=2\), s\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", text, re.M)
    assert row, text
    fp32, bf16, speedup = (float(g) for g in row.groups())
    assert speedup == pytest.approx(fp32 / bf16, abs=0.01)  # bf16 over fp32, whatever the order
    assert re.search(r"^bf16: one training pass [\d.]+ GFLOP/s .* bf16 GEMM rate", text, re.M)


@pytest.mark.slow
def test_memory_prints_bytes_per_parameter_for_each_dtype():
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "memory.py"), "--model", "tiny-llama",
        "--tokens", "1x16", "--dtype", "bf16,fp32", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, check=True)
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"bytes per base parameter: [\d.]+", lines[-1]), out.stdout
    assert re.search(r"^bfloat16\s+[\d.]+\s", out.stdout, re.M)
    assert re.search(r"^float32\s+[\d.]+\s", out.stdout, re.M)
    assert "LLaMA-2-7B projection (bfloat16, batch 4 x 256)" in out.stdout


@pytest.mark.slow
def test_heap_release_times_switches_with_and_without_it():
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "heap_release.py"), "--model", "tiny-llama",
        "--reps", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=True)
    for mode in ("release", "keep"):
        assert re.search(rf"^{mode}\s+median\s+[\d.]+ s .* RSS after [\d.]+ GiB$", out.stdout, re.M)
    assert re.search(r"^release / keep seconds: [\d.]+x$", out.stdout, re.M), out.stdout


@pytest.mark.slow
def test_lora_fusion_times_both_paths_and_finds_them_identical():
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "lora_fusion.py"), "--model", "tiny-bert",
        "--rounds", "2", "--steps", "1", "--eval-batches", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=True)
    text = out.stdout
    assert "12 of 12 adapters fuse" in text, text
    for part in ("eval", "train"):
        row = re.search(rf"^{part}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d. ]+$", text, re.M)
        assert row and float(row.group(1)) > 0 and float(row.group(2)) > 0, text
    assert "logits and trained weights bit-identical on both paths: yes" in text


def test_peft_import_puts_both_ways_side_by_side():
    cmd = [sys.executable, str(REPO / "benchmarks" / "peft_import.py"), "--repeat", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180, check=True)
    text = out.stdout
    assert re.search(r"^import_peft\s+[\d.]+\s+[\d.]+\s+\[False\]$", text, re.M), text
    assert re.search(r"^plain\s+[\d.]+\s+[\d.]+\s+\[True\]$", text, re.M), text
    assert re.search(r"^plain / import_peft \(cpu\): [\d.]+x, over 1 runs each$", text, re.M)
