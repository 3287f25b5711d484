"""``coalora compare A B``: does a rerun agree with the run it reproduces?

Floating-point kernels differ between machines (CPU instruction sets, BLAS builds, thread
counts, GPUs), so two runs are bit-identical on one machine and only statistically comparable
across machines. This module compares two runs on both levels:

- per claim test (a row of ``claims.csv``, keyed by test, model, task, quantizer and
  comparison): both effects with their intervals, their difference, whether each effect lies
  inside the other run's interval, verdict changes, tests present in one run only;
- per evaluation record present in both runs (paired by path relative to the results
  directory): whether its metrics and per-example outcomes are bit-identical;
- per provenance field (code version, packages, the machine, compute dtype, threads, device):
  what differs, and so why records differ bit-wise, or that nothing recorded explains it;
- per experiment and method: the metric gap B - A with its 95% interval over seeds and test
  examples (``coalora.verdicts.metric_gaps``), e.g. what computing in bf16 instead of fp32 moved.

The runs *agree* when every test is in both, every verdict is the same and every effect lies
inside the other run's interval. Bit-level differences alone do not make runs disagree.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..evaluate.results import MACHINE_FIELDS as RECORD_MACHINE_FIELDS
from ..evaluate.results import read_result
from ..io import atomic_path
from .metric_gaps import BOUND, metric_gaps

CLAIMS_FILE_NAME = "claims.csv"  # the workflow's claims table, in the results directory
# A test with a margin has a row per reading (superior, comparable); tables written before
# readings existed have no such column (read as one reading, "").
TEST_KEY = ["test", "model", "task", "quantizer", "comparison", "reading"]
OPTIONAL_KEY = {"reading": ""}
# The claims.csv columns this module reads (others may come and go).
NUMERIC_FIELDS = ["effect", "low", "high"]
CLAIM_FIELDS = ["claim", *TEST_KEY, "statistic", "unit", *NUMERIC_FIELDS, "verdict", "noise"]
PER_RUN_FIELDS = ["effect", "low", "high", "verdict", "noise"]
RUNS = ("A", "B")
AGREES = "agrees"
# A test without an interval in either run (one measurement, e.g. a one-seed time ratio):
# there is no noise estimate to say whether two effects agree, so only its verdict counts.
UNJUDGED = "single measurement: same verdict, effects not comparable without an interval"

COMPARISON_COLUMNS = [
    "claim", *TEST_KEY, "statistic", "unit",
    *[f"{field}_{run.lower()}" for run in RUNS for field in PER_RUN_FIELDS],
    "difference", "a_inside_b", "b_inside_a", "verdict_agrees", "status",
]  # fmt: skip

# Every method's records, the per-configuration runs' included, lie at
# <exp>/<method>/s<seed>/eval/<cfg>.json (checkpoints and their manifests elsewhere).
RECORD_GLOB = "*/*/s*/eval/*.json"
CURVE_GLOB = "*/*/s*/curve/*/*.json"  # the runs' snapshot records (coalora.verdicts.settled)
SEED_FOLDER = re.compile(r"s\d+")

# Provenance field -> what differs, in words. The machine block's fields (the record's
# "machine"; absent in records older than it) and the protocol's dtype/threads/device.
# (torch_threads is shown once, as the protocol's threads.)
MACHINE_FIELDS = tuple(f for f in RECORD_MACHINE_FIELDS if f != "torch_threads")
PROVENANCE_FIELDS = {
    "code_version": "code versions",
    "packages": "package versions",
    "cpu": "CPUs",
    "arch": "CPU architectures",
    "isa": "CPU instruction sets",
    "kernel_env": "kernel-selecting environment (ONEDNN_MAX_CPU_ISA, MKL_CBWR, ...)",
    "blas": "BLAS backends",
    "gpu": "GPUs",
    "cuda": "CUDA versions",
    "dtype": "compute dtypes",
    "threads": "thread counts",
    "device": "devices",
}
NOT_RECORDED = "not recorded"


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Run:
    """One run: its claims table and its evaluation records (relative path -> record)."""

    name: str  # "A" or "B"
    root: Path  # the results directory
    claims_path: Path
    claims: pd.DataFrame
    records: dict[str, dict]


def read_claims(path: Path) -> pd.DataFrame:
    """The columns of ``claims.csv`` this module uses; one-line errors naming the file."""
    try:
        # Strings as written ("none" is a method label, not a missing value).
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a readable claims table: {message}") from None
    for column, absent in OPTIONAL_KEY.items():
        if column not in table.columns:
            table[column] = absent
    missing = [c for c in CLAIM_FIELDS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    table = table[CLAIM_FIELDS].copy()
    for column in NUMERIC_FIELDS:
        values = table[column].replace("", math.nan)
        try:
            table[column] = pd.to_numeric(values).astype(float)
        except (ValueError, TypeError):
            raise ValueError(
                f"{path}: column {column!r} has a value that is not a number"
            ) from None
    duplicated = table[table.duplicated(TEST_KEY, keep=False)]
    if len(duplicated):
        key = " / ".join(duplicated.iloc[0][TEST_KEY])
        raise ValueError(f"{path}: test {key} appears more than once")
    return table


def run_files(root: Path, glob: str = RECORD_GLOB) -> list[Path]:
    """The files of a results directory matching ``glob`` (``RECORD_GLOB``, ``CURVE_GLOB``)
    inside a seed folder (``<exp>/<method>/s<seed>/``), sorted."""
    root = Path(root)
    return [
        p for p in sorted(root.glob(glob))
        if SEED_FOLDER.fullmatch(p.relative_to(root).parts[2]) and p.is_file()
    ]  # fmt: skip


def find_records(root: Path) -> dict[str, dict]:
    """Every evaluation record of a results directory, by path relative to it (validated:
    a corrupt record is a one-line error naming it)."""
    return {p.relative_to(root).as_posix(): read_result(p) for p in run_files(root)}


def load_run(path: str | Path, name: str) -> Run:
    """A results directory (its ``claims.csv`` and records) or a ``claims.csv`` file (the
    records of the directory it lies in)."""
    path = Path(path)
    if path.is_dir():
        root, claims_path = path, path / CLAIMS_FILE_NAME
        if not claims_path.is_file():
            raise FileNotFoundError(f"run {name}: no {CLAIMS_FILE_NAME} in {path}")
    elif path.is_file():
        root, claims_path = path.parent, path
    else:
        raise FileNotFoundError(
            f"run {name}: {path} is neither a results directory nor a {CLAIMS_FILE_NAME}"
        )
    return Run(name, root, claims_path, read_claims(claims_path), find_records(root))


# --------------------------------------------------------------------------- claim tests


def _inside(effect: float, other: float, low: float, high: float) -> bool:
    """Whether ``effect`` lies in the other run's interval [low, high]; a test without an
    interval (one measurement) counts as the point interval at its effect ``other``."""
    if math.isnan(low) and math.isnan(high):
        low = high = other
    return bool(low <= effect <= high)


def compare_tests(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per claim test in either run (``COMPARISON_COLUMNS``); ``status`` is
    ``agrees`` or what does not."""
    merged = a.merge(b, on=TEST_KEY, how="outer", suffixes=("_a", "_b"), indicator=True)
    for shared in ("claim", "statistic", "unit"):
        merged[shared] = merged[f"{shared}_a"].fillna(merged[f"{shared}_b"])
    merged["difference"] = merged["effect_b"] - merged["effect_a"]
    rows = pd.DataFrame(
        [_judged(row) for row in merged.to_dict("records")],
        columns=merged.columns.tolist() + ["a_inside_b", "b_inside_a", "verdict_agrees", "status"],
    )
    return rows.sort_values(TEST_KEY, kind="stable")[COMPARISON_COLUMNS].reset_index(drop=True)


def _judged(row: dict) -> dict:
    """A merged row with its judgement: inside each other's interval, same verdict, status."""
    if row["_merge"] != "both":
        only = "A" if row["_merge"] == "left_only" else "B"
        return {**row, "a_inside_b": None, "b_inside_a": None, "verdict_agrees": None,
                "status": f"only in {only}"}  # fmt: skip
    judged = {
        **row,
        "a_inside_b": _inside(row["effect_a"], row["effect_b"], row["low_b"], row["high_b"]),
        "b_inside_a": _inside(row["effect_b"], row["effect_a"], row["low_a"], row["high_a"]),
        "verdict_agrees": row["verdict_a"] == row["verdict_b"],
    }
    problems = []
    if not judged["verdict_agrees"]:
        problems.append(f"verdict changed ({row['verdict_a']} -> {row['verdict_b']})")
    single = any(math.isnan(row[f"low_{r}"]) and math.isnan(row[f"high_{r}"]) for r in "ab")
    if single and not problems and row["effect_a"] != row["effect_b"]:
        return {**judged, "status": UNJUDGED}
    problems += [
        f"{run}'s effect outside {other}'s interval"
        for run, other, column in (("A", "B", "a_inside_b"), ("B", "A", "b_inside_a"))
        if not judged[column]
    ]
    return {**judged, "status": "; ".join(problems) or AGREES}


def _test_name(row) -> str:
    """A test's id with its reading where it has one ("C1.1 (comparable)")."""
    return f"{row.test} ({row.reading})" if row.reading else row.test


def failing(tests: pd.DataFrame) -> pd.DataFrame:
    return tests[~tests["status"].isin([AGREES, UNJUDGED])]


# --------------------------------------------------------------------------- records


def _canonical(value) -> str:
    """JSON text of a value: equal text is equal bits (floats are written as their shortest
    round-tripping repr, so -0.0 != 0.0 and NaN == NaN as bits would have it)."""
    return json.dumps(value, sort_keys=True)


def per_example_difference(a: dict | None, b: dict | None) -> str:
    """How two records' per-example outcomes differ, in words ("" when bit-identical)."""
    if _canonical(a) == _canonical(b):
        return ""
    if a is None or b is None or set(a) != set(b):
        return "different kinds of per-example outcomes"
    if "window_nll" in a:
        x, y = a["window_nll"], b["window_nll"]
        if len(x) != len(y):
            return f"{len(x)} vs {len(y)} test windows"
        changed = [abs(p - q) for p, q in zip(x, y, strict=True) if _canonical(p) != _canonical(q)]
        return f"{len(changed)} of {len(x)} window NLLs differ (max |diff| {max(changed):.3g})"
    if a["labels"] != b["labels"]:
        return "different test labels"
    x, y = a["predictions"], b["predictions"]
    changed = sum(p != q for p, q in zip(x, y, strict=True))
    return f"{changed} of {len(x)} predictions differ"


def metrics_difference(a: dict, b: dict) -> str:
    """The metrics of two records that are not bit-identical, with both values."""
    names = sorted(set(a) | set(b))
    return ", ".join(
        f"{n} {a.get(n, 'absent')} vs {b.get(n, 'absent')}"
        for n in names
        if _canonical(a.get(n)) != _canonical(b.get(n))
    )


def provenance(record: dict) -> dict:
    """What a record says about how it was computed (``PROVENANCE_FIELDS``); ``NOT_RECORDED``
    where it does not say (a record older than the machine block), ``None`` where it says
    there is none (no GPU)."""
    machine = record.get("machine")
    protocol = record["protocol"]
    out = {"code_version": record["code_version"], "packages": dict(record["packages"])}
    for name in MACHINE_FIELDS:
        value = machine.get(name, NOT_RECORDED) if machine else NOT_RECORDED
        out[name] = tuple(sorted(value)) if isinstance(value, list) else value
    out["dtype"] = protocol.get("dtype", NOT_RECORDED)
    out["threads"] = protocol.get("threads", (machine or {}).get("torch_threads", NOT_RECORDED))
    out["device"] = protocol.get("device", NOT_RECORDED)
    out["machine_recorded"] = bool(machine)
    return out


def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(value) or "none"
    return str(value)


def _set_difference(a: dict | tuple, b: dict | tuple, show) -> str:
    only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
    parts = [show(k) for k in a if k in b and a[k] != b[k]] if isinstance(a, dict) else []
    parts += [f"{', '.join(only_a)} only in A"] if only_a else []
    parts += [f"{', '.join(only_b)} only in B"] if only_b else []
    return "; ".join(parts)


def provenance_differences(a: dict, b: dict) -> list[str]:
    """Why two records' bits may differ: one phrase per provenance field that both record
    and that differs."""
    reasons = []
    for field, what in PROVENANCE_FIELDS.items():
        x, y = a[field], b[field]
        if x == y or NOT_RECORDED in (x, y):
            continue
        if field == "packages":
            detail = _set_difference(x, y, lambda k, x=x, y=y: f"{k} {x[k]} in A, {y[k]} in B")
        elif field == "isa":
            detail = _set_difference(x, y, str)
        else:
            detail = f"{_shown(x)} in A, {_shown(y)} in B"
        reasons.append(f"different {what}: {detail}")
    return reasons


def explanation(a: dict, b: dict) -> str:
    """Why two records differ bit-wise, from their provenance, or that nothing explains it."""
    reasons = provenance_differences(a, b)
    unknown = [run for run, p in zip(RUNS, (a, b), strict=True) if not p["machine_recorded"]]
    if unknown:
        note = f"no machine block in {' and '.join(unknown)}: the CPUs may differ"
        return "; ".join(reasons + [note]) if reasons else f"nothing recorded explains it ({note})"
    return "; ".join(reasons) or "nothing in the recorded provenance explains it"


RECORD_COLUMNS = ["record", "metrics_identical", "per_example_identical", "difference", "why"]


def compare_records(a: dict[str, dict], b: dict[str, dict]) -> pd.DataFrame:
    """One row per record in both runs (``RECORD_COLUMNS``): bit-identical or not, and why."""
    rows = []
    for path in sorted(set(a) & set(b)):
        x, y = a[path], b[path]
        metrics = metrics_difference(x["metrics"], y["metrics"])
        examples = per_example_difference(x["per_example"], y["per_example"])
        identical = not metrics and not examples
        rows.append(
            {
                "record": path,
                "metrics_identical": not metrics,
                "per_example_identical": not examples,
                "difference": "; ".join(d for d in (metrics, examples) if d),
                "why": "" if identical else explanation(provenance(x), provenance(y)),
            }
        )
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


def run_provenance(records: dict[str, dict]) -> dict[str, str]:
    """A run's provenance, field -> its values over the run's records (joined by " / "),
    packages as one "name version" entry each."""
    provenances = [provenance(r) for r in records.values()]
    out = {}
    for field in PROVENANCE_FIELDS:
        if field == "packages":
            continue
        values = sorted({_shown(p[field]) for p in provenances})
        out[field] = " / ".join(values) or "no records"
    names = sorted({name for p in provenances for name in p["packages"]})
    for name in names:
        versions = sorted({str(p["packages"].get(name, "absent")) for p in provenances})
        out[f"package {name}"] = " / ".join(versions)
    return out


def compare_provenance(a: dict[str, dict], b: dict[str, dict]) -> pd.DataFrame:
    """One row per provenance field or package: each run's values and whether they differ."""
    pa, pb = run_provenance(a), run_provenance(b)
    fields = list(dict.fromkeys([*pa, *pb]))
    rows = [{"field": f, "A": pa.get(f, "absent"), "B": pb.get(f, "absent")} for f in fields]
    table = pd.DataFrame(rows, columns=["field", "A", "B"])
    table["differs"] = table["A"] != table["B"]
    return table


# --------------------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class Comparison:
    a: Run
    b: Run
    tests: pd.DataFrame
    records: pd.DataFrame
    only_records: dict[str, list[str]]  # run -> records present in that run only
    provenance: pd.DataFrame
    gaps: pd.DataFrame  # per experiment and method: B - A (coalora.verdicts.metric_gaps)

    @property
    def agree(self) -> bool:
        return failing(self.tests).empty

    def failing_lines(self) -> list[str]:
        """One line per test on which the runs disagree: the test, its group, what fails."""
        return [
            f"{_test_name(r)} {r.model}/{r.task}/{r.quantizer} {r.comparison}: {r.status}"
            for r in failing(self.tests).itertuples(index=False)
        ]


def compare_runs(a_path: str | Path, b_path: str | Path) -> Comparison:
    a, b = load_run(a_path, "A"), load_run(b_path, "B")
    return Comparison(
        a,
        b,
        compare_tests(a.claims, b.claims),
        compare_records(a.records, b.records),
        {
            "A": sorted(set(a.records) - set(b.records)),
            "B": sorted(set(b.records) - set(a.records)),
        },
        compare_provenance(a.records, b.records),
        metric_gaps(a.records, b.records),
    )


# --------------------------------------------------------------------------- rendering


def _number(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _effect(effect, low, high) -> str:
    if effect is None or not math.isfinite(effect):
        return "absent"
    return f"{_number(effect)} [{_number(low)}, {_number(high)}]"


def _yes_no(value) -> str:
    return "" if value is None or value is pd.NA else ("yes" if value else "**no**")


def _verdicts(a, b) -> str:
    """ "holds" when both runs say so, "holds -> contradicted" when they differ, or the one
    present."""
    return " -> ".join(dict.fromkeys(v for v in (a, b) if isinstance(v, str)))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def why_summary(records: pd.DataFrame) -> list[str]:
    """The reasons of the differing records, each with how many records it covers."""
    differing = records[~(records["metrics_identical"] & records["per_example_identical"])]
    counts = Counter(differing["why"])
    return [f"{why} ({n} of {len(differing)} differing records)" for why, n in counts.items()]


def markdown(comparison: Comparison) -> str:
    c = comparison
    lines = ["# Comparing two runs", ""]
    for run in (c.a, c.b):
        lines.append(
            f"- {run.name}: `{run.claims_path}` ({len(run.claims)} claim tests, "
            f"{len(run.records)} evaluation records)"
        )
    bad = failing(c.tests)
    lines += [""]
    if bad.empty:
        lines.append(
            "**The runs agree**: every test is in both, with the same verdict, and each "
            "effect lies inside the other run's 95% interval."
        )
    else:
        lines.append(f"**The runs disagree** on {len(bad)} of {len(c.tests)} tests:")
        lines += [""] + [
            f"- {_test_name(r)} {r.model} / {r.task} / {r.quantizer} {r.comparison}: {r.status}"
            for r in bad.itertuples(index=False)
        ]

    lines += ["", "## Claim tests", ""]
    lines += _table(
        ["test", "group", "comparison", "A [95% interval]", "B [95% interval]", "B - A",
         "A in B's interval", "B in A's interval", "verdict A -> B", "status"],
        [
            [_test_name(r), f"{r.model} / {r.task} / {r.quantizer}", r.comparison,
             _effect(r.effect_a, r.low_a, r.high_a), _effect(r.effect_b, r.low_b, r.high_b),
             _number(r.difference), _yes_no(r.a_inside_b), _yes_no(r.b_inside_a),
             _verdicts(r.verdict_a, r.verdict_b),
             r.status]
            for r in c.tests.itertuples(index=False)
        ],
    )  # fmt: skip

    records = c.records
    identical = records["metrics_identical"] & records["per_example_identical"]
    lines += ["", "## Evaluation records", ""]
    lines.append(
        f"{len(records)} records in both runs: {int(identical.sum())} bit-identical (metrics "
        f"and per-example outcomes), {int((~identical).sum())} differ "
        f"({int((~records['metrics_identical']).sum())} in their metrics, "
        f"{int((~records['per_example_identical']).sum())} in their per-example outcomes)."
    )
    for run, paths in c.only_records.items():
        if paths:
            lines.append(f"Only in {run} ({len(paths)}): {', '.join(f'`{p}`' for p in paths)}.")
    if (~identical).any():
        lines += ["", "Why they differ:", ""] + [f"- {why}" for why in why_summary(records)]
        lines += [""] + _table(
            ["record", "what differs", "why"],
            [[f"`{r.record}`", r.difference, r.why] for r in records[~identical].itertuples()],
        )

    lines += ["", "## Metric gaps (B - A) per method", ""]
    if c.gaps.empty:
        lines.append("No records in both runs.")
    else:
        lines.append(
            f"Per seed the mean over configurations of B - A (points; for perplexity -100 "
            f"d ln(ppl): positive is B better), 95% interval over seeds and test examples; "
            f"bound fixed beforehand: +-{BOUND:g}."
        )
        lines += [""] + _table(
            ["experiment", "method", "metric", "seeds x configs", "B - A [95% interval]",
             "inside +-bound", "dtypes A -> B", "noise"],
            [
                [r.experiment, r.method, r.metric, f"{r.n_seeds} x {r.n_configs}",
                 _effect(r.effect, r.low, r.high),
                 "n/a" if r.within_bound is None else ("yes" if r.within_bound else "**no**"),
                 f"{r.dtype_a} -> {r.dtype_b}", r.noise]
                for r in c.gaps.itertuples(index=False)
            ],
        )  # fmt: skip

    lines += ["", "## Provenance", ""]
    differing = c.provenance[c.provenance["differs"]]
    if differing.empty:
        lines.append(
            "The runs' code version, packages, machine, compute dtype, threads and device "
            "are the same as recorded."
        )
    else:
        lines += _table(
            ["field", "A", "B"],
            [[r.field, r.A, r.B] for r in differing.itertuples(index=False)],
        )
    fields = c.provenance[~c.provenance["field"].str.startswith("package ")]
    unrecorded = fields[(fields["A"] == NOT_RECORDED) & (fields["B"] == NOT_RECORDED)]
    same = fields[~fields["differs"] & ~fields["field"].isin(unrecorded["field"])]
    if len(same) and not differing.empty:
        listed = "; ".join(f"{r.field} {r.A}" for r in same.itertuples())
        lines += ["", f"The same in both: {listed}."]
    if len(unrecorded):
        lines += ["", f"Recorded in neither run: {', '.join(unrecorded['field'])}."]
    return "\n".join(lines) + "\n"


def brief(comparison: Comparison) -> str:
    """A few lines: does B reproduce A bit for bit, statistically, or where does it differ."""
    c = comparison
    records = c.records
    identical = int((records["metrics_identical"] & records["per_example_identical"]).sum())
    bits = f"{identical} of {len(records)} shared evaluation records bit-identical"
    only = [f"{len(paths)} only in {run}" for run, paths in c.only_records.items() if paths]
    if only:
        bits += f" ({', '.join(only)})"
    bad = failing(c.tests)
    if not bad.empty:
        head = f"{c.b.root} differs from {c.a.root}: {len(bad)} of {len(c.tests)} claim tests"
        shown = [f"  {line}" for line in c.failing_lines()[:5]]
        more = [f"  ... and {len(bad) - 5} more"] if len(bad) > 5 else []
        return "\n".join([f"{head}; {bits}", *shown, *more]) + "\n"
    if identical == len(records) and len(records) and not only:
        return f"{c.b.root} reproduces {c.a.root} bit for bit: {bits}\n"
    why = f"; why: {'; '.join(why_summary(records))}" if identical < len(records) else ""
    return (
        f"{c.b.root} reproduces {c.a.root} statistically (every claim test agrees): {bits}{why}\n"
    )


def compare_from_cli(args) -> int:
    """Compare, then write the CSV and Markdown (only once every input has been read)."""
    comparison = compare_runs(args.a, args.b)
    text = brief(comparison) if getattr(args, "brief", False) else markdown(comparison)
    if args.out:
        with atomic_path(args.out, suffix=".csv") as tmp:
            comparison.tests.to_csv(tmp, index=False, float_format="%.6g")
    if getattr(args, "gaps", None):
        with atomic_path(args.gaps, suffix=".csv") as tmp:
            comparison.gaps.to_csv(tmp, index=False, float_format="%.6g")
    if args.markdown:
        with atomic_path(args.markdown, suffix=".md") as tmp:
            tmp.write_text(markdown(comparison))
    print(text, end="")
    if comparison.agree:
        return 0
    for line in [] if getattr(args, "brief", False) else comparison.failing_lines():
        print(f"coalora compare: disagree: {line}", file=sys.stderr)
    return 1
