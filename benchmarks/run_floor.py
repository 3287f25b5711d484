"""A finished run's time against the floor its arithmetic sets (not a test).

Reads a finished results directory (default ``results``) and prints, per experiment:

- **job seconds**: the wall seconds of the training and evaluation jobs, from Snakemake's
  ``benchmark:`` files (``results/benchmarks/...``), set-up included. The other jobs (prepare,
  cost-table, allocate, reports) have no benchmark file and are not counted;
- **engine seconds**: what the engines themselves timed around the work the numbers need:
  the training engine's ``train_seconds`` (every checkpoint's manifest: optimizer steps and
  search rounds) plus the evaluation driver's ``setup_seconds`` and ``eval_seconds`` (every
  evaluation record: switching to a configuration and the forward passes);
- their share: what set-up, model loading and writing cost beyond the engines.

The floor: on ``--cores`` cores no schedule finishes these engines' work sooner than
engine seconds / cores, at the arithmetic speed they ran at. Lowering it needs less work
(fewer steps, examples or configurations: a preset's decision) or faster arithmetic. With
``--wall`` (the run's measured wall seconds) the run is set against its floor.

    python benchmarks/run_floor.py results --cores 2 --wall 867
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path: look in the repository.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from coalora.evaluate.results import read_result  # noqa: E402
from coalora.io import read_json  # noqa: E402
from coalora.train import MANIFEST  # noqa: E402


def job_seconds(results: Path) -> dict[str, list[float]]:
    """Wall seconds of each benchmarked job, by experiment (the first folder under
    ``benchmarks/``)."""
    jobs = defaultdict(list)
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        with tsv.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if not rows or "s" not in rows[0]:
            raise SystemExit(f"run_floor.py: {tsv} is not a Snakemake benchmark file")
        jobs[tsv.relative_to(results / "benchmarks").parts[0]].append(float(rows[0]["s"]))
    return jobs


def engine_seconds(results: Path, experiment: str) -> tuple[float, float]:
    """(training engine seconds, evaluation driver seconds) of one experiment's outputs."""
    root = results / experiment
    train = sum(
        read_json(path, "checkpoint manifest").get("train_seconds") or 0.0
        for path in root.rglob(MANIFEST)
    )
    evaluate = 0.0
    for path in root.rglob("eval/*.json"):
        record = read_result(path)
        evaluate += (record.get("setup_seconds") or 0.0) + (record.get("eval_seconds") or 0.0)
    return train, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results", help="a finished run's results")
    parser.add_argument("--cores", type=int, default=2, help="cores the run had")
    parser.add_argument("--wall", type=float, help="the run's measured wall seconds")
    args = parser.parse_args()
    results = Path(args.results)
    if args.cores < 1:
        parser.error("--cores must be >= 1")
    if not (results / "benchmarks").is_dir():
        sys.exit(f"run_floor.py: {results} has no benchmarks/ folder: not a finished run")
    try:
        report(results, args.cores, args.wall)
    except (OSError, ValueError) as err:  # a damaged record or manifest, named by the error
        sys.exit(f"run_floor.py: {err}")


def report(results: Path, cores: int, wall: float | None) -> None:
    jobs = job_seconds(results)
    header = (
        f"{'experiment':<24} {'jobs':>5} {'job s':>8} {'train s':>8} {'eval s':>8} "
        f"{'engine s':>9} {'engine/job':>11}"
    )
    print(f"run floor of {results}: train and evaluation jobs (benchmark files)")
    print(header)
    print("-" * len(header))
    totals = [0, 0.0, 0.0, 0.0]
    for experiment, seconds in sorted(jobs.items()):
        train, evaluate = engine_seconds(results, experiment)
        row = [len(seconds), sum(seconds), train, evaluate]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        print(_row(experiment, *row))
    print("-" * len(header))
    print(_row("total", *totals))
    engine = totals[2] + totals[3]
    floor = engine / cores
    print(
        f"\nfloor on {cores} core(s): engine seconds / {cores} = {floor:.0f} s "
        f"({floor / 60:.1f} min), before the unbenchmarked jobs (prepare, cost-table, "
        "allocate, reports) and Snakemake's own time"
    )
    if wall:
        print(
            f"the run's wall {wall:.0f} s ({wall / 60:.1f} min) = "
            f"{wall / floor:.2f} x the floor; the benchmarked jobs alone filled "
            f"{totals[1] / (cores * wall):.0%} of the cores' time"
        )


def _row(name: str, jobs: int, job_s: float, train: float, evaluate: float) -> str:
    engine = train + evaluate
    share = f"{engine / job_s:.0%}" if job_s else "-"
    return (
        f"{name:<24} {jobs:>5} {job_s:>8.1f} {train:>8.1f} {evaluate:>8.1f} "
        f"{engine:>9.1f} {share:>11}"
    )


if __name__ == "__main__":
    main()
