"""scripts/measure.py, which measures what `make run` costs (the README's cost line): the
command's exit status passes through, its wall time and the peak memory of its process tree
(a child's allocation included) and the bytes of the folders it names are recorded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "measure.py"
MIB = 1024**2


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_measure_records_wall_peak_memory_of_the_tree_and_disk(tmp_path):
    folder = tmp_path / "out"
    (folder / "skip").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"x" * 5000)
    (folder / "skip" / "b.bin").write_bytes(b"x" * 7000)
    # A grandchild holds 300 MiB for 2 s, then the command fails with status 3.
    child = (
        "import time; b = bytearray(300 * 2**20); b[::4096] = b'1' * len(b[::4096]); time.sleep(2)"
    )
    command = f'{sys.executable} -c "{child}"; exit 3'
    record = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--out", record, "--disk", folder, "--exclude", folder / "skip",
         "--", "sh", "-c", command],
        capture_output=True, text=True, env={**os.environ, "COALORA_CACHE": str(tmp_path / "c")},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    run = json.loads(record.read_text())
    assert run["exit_status"] == 3 and run["command"].startswith("sh -c")
    assert 2.0 <= run["wall_seconds"] < 60
    assert 300 * MIB <= run["peak_memory_bytes"] < 1000 * MIB
    assert run["disk_bytes"] == {str(folder): 5000}
    assert run["cache_bytes"] == 0 and "peak memory" in proc.stderr


def test_measure_needs_a_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--out", tmp_path / "x.json"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no command given" in proc.stderr
    assert not (tmp_path / "x.json").exists()
