"""Run a command and record what it cost: wall time, peak memory of its process tree, disk.

    python scripts/measure.py --out results/logs/run.json --disk results -- snakemake --cores all

``make run`` and ``make smoke`` run the workflow through it; ``coalora reference`` copies the
JSON into ``results/reference/MACHINE.json``, which the README's figures come from.

Peak memory is the largest sum, over the command and every process below it (Snakemake, the
fork server and the jobs forked from it), of each process's proportional set size (PSS,
``/proc/<pid>/smaps_rollup``): pages shared between forked jobs count once, not once per job.
It is sampled every 2 s (SAMPLE_SECONDS), so a spike shorter than that can be missed. Disk is the
bytes under each ``--disk`` folder when the command ends (``--exclude`` leaves a sub-folder
out, e.g. ``results/reference``) and under coalora's cache (``$COALORA_CACHE``). Linux only
(``/proc``); elsewhere memory is recorded as null. The command's exit status is this script's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

# Reading smaps_rollup of GB-sized jobs costs CPU: measured 17% of a core at 0.5 s.
SAMPLE_SECONDS = 2.0


def parents() -> dict[int, int]:
    """pid -> parent pid of every process we can read."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may hold spaces.
        table[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return table


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in parents().items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass  # the process ended between listing and reading it
    return 0


def disk_bytes(folder: Path, exclude: list[Path]) -> int:
    total = 0
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if Path(here, d).resolve() not in exclude]
        for name in files:
            try:
                total += Path(here, name).lstat().st_size
            except OSError:
                pass
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON to write")
    parser.add_argument("--disk", action="append", default=[], help="a folder to size at the end")
    parser.add_argument("--exclude", action="append", default=[], help="a folder not to count")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")

    linux = Path("/proc/self/smaps_rollup").exists()
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    process = subprocess.Popen(command)
    # Ctrl-C reaches the command too (one process group); it decides how to stop, we wait.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    peak = 0
    while process.poll() is None:
        if linux:
            peak = max(peak, sum(pss_bytes(pid) for pid in tree(process.pid)))
        time.sleep(SAMPLE_SECONDS)
    wall = time.monotonic() - t0

    from coalora.io import cache_root

    exclude = [Path(p).resolve() for p in args.exclude]
    disk = {p: disk_bytes(Path(p), exclude) for p in args.disk if Path(p).is_dir()}
    cache = Path(cache_root())
    record = {
        "command": " ".join(command),
        "exit_status": process.returncode,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 1),
        "peak_memory_bytes": peak if linux else None,
        "disk_bytes": disk,
        "cache": str(cache),
        "cache_bytes": disk_bytes(cache, []) if cache.is_dir() else 0,
        "host_cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    gib = 1024**3
    memory = f"{peak / gib:.2f} GiB" if linux else "not measured (no /proc)"
    print(
        f"measure: {wall:.0f} s wall, peak memory {memory}, "
        + ", ".join(f"{p} {b / gib:.2f} GiB" for p, b in disk.items())
        + f", cache {record['cache_bytes'] / gib:.2f} GiB ({out})",
        file=sys.stderr,
    )
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
