"""The evaluation results file: one JSON per (model, task, method, configuration).

Every table and plot reads only these files, so the schema is checked both when a file is
written and when it is read. Schema ``coalora.evaluation/2``::

    {"schema": "coalora.evaluation/2",
     "model": str, "task": str, "method": str,
     "config_name": str,            # "ilp-3.000", a qconfig's name or file stem, "full-precision"
     "seen": bool | null,           # in the method's final training set (null: unknown / n.a.)
     "avg_bits": float, "budget": float | null,
     "quantizer": "nf" | "int" | "none",   # "none" only for the full-precision reference row
     "metrics": {name: float},
     "per_example": {...} | null,   # per-example outcomes of the primary metric (below)
     "primary_metric": str, "higher_is_better": bool,
     "protocol": {...},             # how the numbers were measured (split, sizes, windows, ...)
     "hashes": {"qconfig": sha256, "base_weights": sha256, "checkpoint": sha256 | null},
     "seed": int, "train_seconds": float | null, "train_steps": int | null,
     "setup_seconds": float, "eval_seconds": float,
     "packages": {...}, "code_version": str,
     "machine": {...}}              # optional (older records lack it): see below

``per_example`` keeps what the claims' intervals resample (``coalora.verdicts.stats``), compactly:
classification ``{"predictions": "0110...", "labels": "0100..."}`` (one digit per test
example, in the test split's order, so records of one task pair example by example);
language modelling ``{"window_nll": [float, ...]}`` (mean token NLL of each perplexity
window, in order; every window has the same length). ``null`` where there are none.

``machine`` says where the numbers were measured (``coalora.machine.machine_info``)::

    {"cpu": str, "arch": str,       # CPU model name; platform.machine()
     "isa": [str, ...],             # sorted subset of coalora.machine.KERNEL_ISA in the CPU flags
     "kernel_env": {str: str},      # the set variables of coalora.machine.KERNEL_ENV
     "torch_threads": int, "blas": str,  # torch.get_num_threads(); torch's BLAS backend
     "gpu": str | null, "cuda": str | null}  # device name and CUDA version on a CUDA device

A record without it (written before it existed) still validates; its machine is unknown
(``read_results`` gives ``None``).

``read_result`` rejects a file that lacks a field, has an unknown one or a wrongly typed value,
with a one-line ``ValueError`` naming the file and the field. ``read_results`` gives a pandas
DataFrame, one row per file, with ``metrics.<name>`` and ``hashes.<name>`` columns.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from collections.abc import Iterable
from numbers import Real
from pathlib import Path

from .. import __version__
from ..io import read_json, write_json
from ..machine import KERNEL_ENV, KERNEL_ISA

SCHEMA = "coalora.evaluation/2"
QUANTIZERS = ("nf", "int", "none")
# The name and hashes of the unquantized reference row.
FULL_PRECISION = "full-precision"


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nullable(check):
    return lambda value: value is None or check(value)


def _is_str(value) -> bool:
    return isinstance(value, str)


def _is_dict(value) -> bool:
    return isinstance(value, dict)


def _is_per_example(value) -> bool:
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    if set(value) == {"predictions", "labels"}:
        p, y = value["predictions"], value["labels"]
        return (
            isinstance(p, str) and isinstance(y, str) and len(p) == len(y) > 0
            and (p + y).isdigit()
        )  # fmt: skip
    if set(value) == {"window_nll"}:
        nll = value["window_nll"]
        return isinstance(nll, list) and len(nll) > 0 and all(_is_number(x) for x in nll)
    return False


def _is_kernel_env(value) -> bool:
    return _is_dict(value) and all(k in KERNEL_ENV and isinstance(v, str) for k, v in value.items())


def _is_isa_list(value) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(x, str) and x in KERNEL_ISA for x in value)
        and value == sorted(set(value))
    )


def _is_sha256(value) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


# field -> (check, what it must be); the order is the order of a written file.
FIELDS: dict[str, tuple] = {
    "schema": (lambda v: v == SCHEMA, f"the string {SCHEMA!r}"),
    "model": (_is_str, "a string"),
    "task": (_is_str, "a string"),
    "method": (_is_str, "a string"),
    "config_name": (_is_str, "a string"),
    "seen": (_nullable(lambda v: isinstance(v, bool)), "true, false or null"),
    "avg_bits": (_is_number, "a number"),
    "budget": (_nullable(_is_number), "a number or null"),
    "quantizer": (lambda v: v in QUANTIZERS, f"one of {', '.join(QUANTIZERS)}"),
    "metrics": (
        lambda v: _is_dict(v) and all(_is_str(k) and _is_number(x) for k, x in v.items()),
        "an object of metric name -> number",
    ),
    "per_example": (
        _is_per_example,
        'null, {"predictions": digits, "labels": digits} of equal length, or '
        '{"window_nll": [numbers]}',
    ),
    "primary_metric": (_is_str, "a string"),
    "higher_is_better": (lambda v: isinstance(v, bool), "true or false"),
    "protocol": (_is_dict, "an object"),
    "hashes": (_is_dict, "an object"),
    "seed": (_is_int, "an integer"),
    "train_seconds": (_nullable(_is_number), "a number or null"),
    "train_steps": (_nullable(_is_int), "an integer or null"),
    "setup_seconds": (_is_number, "a number"),
    "eval_seconds": (_is_number, "a number"),
    "packages": (_is_dict, "an object"),
    "code_version": (_is_str, "a string"),
}
# Fields a record may lack (records written before they existed still read).
OPTIONAL_FIELDS: dict[str, tuple] = {
    "machine": (_is_dict, "an object"),
    # How much of its run trained on this configuration (coalora.train.exposure): null for
    # the unadapted base and for records written before it existed.
    "exposure": (
        _nullable(lambda v: _is_dict(v) and set(v) == {"steps", "of", "lr_steps", "lr_of"}),
        'null or {"steps", "of", "lr_steps", "lr_of"}',
    ),
}
MACHINE_FIELDS: dict[str, tuple] = {
    "cpu": (_is_str, "a string"),
    "arch": (_is_str, "a string"),
    "isa": (_is_isa_list, f"a sorted list of distinct names among {', '.join(KERNEL_ISA)}"),
    "kernel_env": (_is_kernel_env, f"an object of strings, keys among {', '.join(KERNEL_ENV)}"),
    "torch_threads": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "blas": (_is_str, "a string"),
    "gpu": (_nullable(_is_str), "a string or null"),
    "cuda": (_nullable(_is_str), "a string or null"),
}
HASH_FIELDS: dict[str, tuple] = {
    "qconfig": (_is_sha256, "a sha256 hex digest"),
    "base_weights": (_is_sha256, "a sha256 hex digest"),
    "checkpoint": (_nullable(_is_sha256), "a sha256 hex digest or null"),
}


def validate_result(record: dict, source: str = "evaluation result") -> dict:
    """Return ``record`` unchanged if it follows the schema; else a one-line ``ValueError``."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(record).__name__}")
    _check_fields(record, FIELDS, OPTIONAL_FIELDS, source)
    if "machine" in record:
        _check_fields(record["machine"], MACHINE_FIELDS, {}, source, "machine.")
    for name, (check, expected) in HASH_FIELDS.items():
        if name not in record["hashes"]:
            raise ValueError(f"{source}: missing field 'hashes.{name}'")
        if not check(record["hashes"][name]):
            raise ValueError(f"{source}: field 'hashes.{name}' must be {expected}")
    if record["primary_metric"] not in record["metrics"]:
        raise ValueError(
            f"{source}: primary_metric {record['primary_metric']!r} is not among the metrics "
            f"({', '.join(record['metrics']) or 'none'})"
        )
    return record


def _check_fields(
    data: dict, required: dict, optional: dict, source: str, prefix: str = ""
) -> None:
    """One-line ``ValueError`` for a missing, wrongly typed or unknown field of ``data``."""
    for name, (check, expected) in {**required, **optional}.items():
        if name not in data:
            if name in optional:
                continue
            raise ValueError(f"{source}: missing field {prefix + name!r}")
        if not check(data[name]):
            got = repr(data[name])
            got = got if len(got) <= 80 else got[:77] + "..."
            raise ValueError(f"{source}: field {prefix + name!r} must be {expected}, got {got}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        names = ", ".join(repr(prefix + name) for name in unknown)
        raise ValueError(f"{source}: unknown field(s) {names}")


def write_result(path: str | os.PathLike, record: dict) -> Path:
    """Validate and write ``record`` atomically (an interrupted write leaves no file)."""
    validate_result(record, f"result for {path}")
    write_json(path, record)
    return Path(path)


def read_result(path: str | os.PathLike) -> dict:
    """Read and validate one results file."""
    return validate_result(read_json(path, "evaluation result"), str(path))


def read_results(paths: Iterable[str | os.PathLike]):
    """One DataFrame row per results file: scalar fields, ``metrics.<name>``, ``hashes.<name>``,
    ``primary_value`` (the primary metric's value), ``path``; ``protocol``, ``packages`` and
    ``machine`` (``None`` for a record without one) stay dict-valued columns."""
    import pandas as pd

    rows = []
    for path in paths:
        record = read_result(path)
        row = {k: v for k, v in record.items() if k not in ("metrics", "hashes")}
        row.setdefault("machine", None)
        row.update({f"metrics.{k}": v for k, v in record["metrics"].items()})
        row.update({f"hashes.{k}": v for k, v in record["hashes"].items()})
        row["primary_value"] = record["metrics"][record["primary_metric"]]
        row["path"] = str(path)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- provenance


def qconfig_hash(mqc) -> str:
    """Identity of a configuration: its quantizer and every module's 5-tuple (``None``: the
    full-precision model). Names, budgets and other labels do not count."""
    from ..quant.model_config import config_identity

    return config_identity(mqc)


def directory_hash(directory: str | os.PathLike) -> str:
    """sha256 over every file of a directory (relative paths and bytes, in path order)."""
    root = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def code_version() -> str:
    """The package version, plus the git commit (``+g<sha>``, ``.dirty`` if tracked files
    differ from it) when the package runs from a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return __version__

    def git(*args: str) -> subprocess.CompletedProcess:
        # Read-only plumbing commands only: never touch the repository's state.
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return __version__
        dirty = git("diff-index", "--quiet", "HEAD", "--").returncode != 0
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{head.stdout.strip()}" + (".dirty" if dirty else "")
