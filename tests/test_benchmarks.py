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
