"""A finished run's time against the floor its arithmetic sets (not a test).

Reads a finished results directory (default ``results``) and prints, per experiment:

- **job seconds**: every job's wall seconds, from Snakemake's ``benchmark:`` files
  (``results/benchmarks/``, one beside each job's log), set-up included; those of the
  training and evaluation jobs apart from the others (prepare, cost tables, allocation,
  figures; the tables and claims of all experiments have a row of their own);
- **engine seconds**: what the engines themselves timed around the work the numbers need:
  the training engine's ``train_seconds`` (every checkpoint's manifest: optimizer steps and
  search rounds) plus the evaluation driver's ``setup_seconds`` and ``eval_seconds`` (every
  evaluation record: switching to a configuration and the forward passes).

The floor: on ``--cores`` cores no schedule finishes these engines' work sooner than
engine seconds / cores, at the arithmetic speed they ran at. Lowering it needs less work
(fewer steps, examples or configurations: a preset's decision) or faster arithmetic. With
``--wall`` (the run's measured wall seconds) the run is set against its floor, and the jobs'
seconds against the cores' time.

    python benchmarks/run_floor.py results --cores 2 --wall 840
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path: look in the repository.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from coalora.evaluate.results import read_result  # noqa: E402
from coalora.io import read_json  # noqa: E402
from coalora.timing import benchmark_jobs  # noqa: E402
from coalora.train import MANIFEST  # noqa: E402

REPORTS = "(tables, claims)"  # the jobs of all experiments together, under benchmarks/


def job_seconds(results: Path) -> dict[str, dict[str, list[float]]]:
    """Wall seconds of each job, by experiment (the folder under ``benchmarks/``; REPORTS for
    files directly in it) and kind ("engine": training and evaluation jobs; "other")."""
    jobs = defaultdict(lambda: {"engine": [], "other": []})
    try:
        jobs_of_run = list(benchmark_jobs(results))
    except ValueError as error:
        raise SystemExit(f"run_floor.py: {error}") from None
    for tsv, parts, seconds in jobs_of_run:
        experiment = parts[0] if len(parts) > 1 else REPORTS
        kind = (
            "engine" if tsv.stem in ("train", "eval") or tsv.stem.startswith("train-") else "other"
        )
        jobs[experiment][kind].append(seconds)
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
        f"{'experiment':<22} {'jobs':>5} {'job s':>8} {'train+eval jobs s':>18} "
        f"{'train s':>8} {'eval s':>8} {'engine s':>9} {'engine/job':>11}"
    )
    print(f"run floor of {results}: every job's benchmark file, and the engines' own seconds")
    print(header)
    print("-" * len(header))
    totals = [0, 0.0, 0.0, 0.0, 0.0]
    for experiment, kinds in sorted(jobs.items(), key=lambda item: item[0] == REPORTS):
        train, evaluate = (
            (0.0, 0.0) if experiment == REPORTS else engine_seconds(results, experiment)
        )
        count = len(kinds["engine"]) + len(kinds["other"])
        row = [
            count,
            sum(kinds["engine"]) + sum(kinds["other"]),
            sum(kinds["engine"]),
            train,
            evaluate,
        ]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        print(_row(experiment, *row))
    print("-" * len(header))
    print(_row("total", *totals))
    engine = totals[3] + totals[4]
    floor = engine / cores
    print(
        f"\nfloor on {cores} core(s): engine seconds / {cores} = {floor:.0f} s "
        f"({floor / 60:.1f} min); all jobs' seconds / {cores} = {totals[1] / cores:.0f} s"
    )
    if wall:
        print(
            f"the run's wall {wall:.0f} s ({wall / 60:.1f} min) = {wall / floor:.2f} x the "
            f"floor; its jobs filled {totals[1] / (cores * wall):.0%} of the cores' time "
            "(the rest: Snakemake's own time and idle cores)"
        )


def _row(
    name: str, jobs: int, job_s: float, engine_jobs_s: float, train: float, evaluate: float
) -> str:
    engine = train + evaluate
    share = f"{engine / job_s:.0%}" if job_s else "-"
    return (
        f"{name:<22} {jobs:>5} {job_s:>8.1f} {engine_jobs_s:>18.1f} {train:>8.1f} "
        f"{evaluate:>8.1f} {engine:>9.1f} {share:>11}"
    )


if __name__ == "__main__":
    main()
