"""Tasks read from local files: ``local:<dir>`` tasks and local copies of hub tasks (``data_dir``
or ``$COALORA_DATA/<task>``).

A directory holds ``train``, ``validation`` and optionally ``test`` as ``.jsonl`` or ``.tsv``
(GLUE's ``dev`` names accepted), and optionally a ``task.yaml``/``task.yml``/``task.json``
naming the kind, text fields and labels; without one, fields and labels are inferred. Labels are
normalised to class indices. See docs/tasks.md for the format.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import yaml

from .task import TaskSpec

DATA_ENV = "COALORA_DATA"


_TASK_FILE_KEYS = {
    "kind",
    "text_fields",
    "label_field",
    "label_names",
    "num_labels",
    "metric",
    "description",
    "lm_separator",
}
# Keys a task file may set beside a named task's local copy: only how to read the files.
_OVERRIDE_KEYS = {"text_fields", "label_field", "label_names"}
_METRICS = {"classification": ("accuracy", "f1"), "lm": ("perplexity",)}
# File stems accepted per split; GLUE's own archives call validation "dev".
_SPLIT_STEMS = {
    "train": ("train",),
    "validation": ("validation", "dev"),
    "test": ("test",),
}
_MNLI_VALIDATION_STEMS = ("validation_matched", "dev_matched", "validation", "dev")
# Field names recognised when a local directory has no task file (GLUE conventions).
_KNOWN_PAIRS = [
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
    ("sentence",),
    ("text",),
]


def _read_task_file(directory: Path) -> tuple[Path, dict] | None:
    found = [
        directory / n for n in ("task.yaml", "task.yml", "task.json") if (directory / n).is_file()
    ]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(
            f"{directory} has more than one task file: {', '.join(p.name for p in found)}"
        )
    path = found[0]
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"task file {path} does not parse: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"task file {path} must hold a mapping of keys, got {type(data).__name__}")
    unknown = sorted(set(data) - _TASK_FILE_KEYS)
    if unknown:
        raise ValueError(
            f"task file {path}: unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(_TASK_FILE_KEYS))}"
        )
    return path, data


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object per line")
            records.append(record)
    return records


def _read_tsv(path: Path) -> list[dict]:
    # GLUE's TSVs contain unbalanced quotes: read them literally (QUOTE_NONE).
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if not header:
            raise ValueError(f"{path}: empty file (a TSV needs a header row)")
        records = []
        for line_no, row in enumerate(rows, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path}:{line_no}: {len(row)} columns where the header has {len(header)}"
                )
            records.append(dict(zip(header, row, strict=True)))
    return records


def _split_file(directory: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        found = [directory / f"{stem}.{ext}" for ext in ("jsonl", "tsv")]
        found = [p for p in found if p.is_file()]
        if len(found) > 1:
            raise ValueError(f"{directory} has both {found[0].name} and {found[1].name}")
        if found:
            return found[0]
    return None


def _read_split(path: Path) -> list[dict]:
    records = _read_jsonl(path) if path.suffix == ".jsonl" else _read_tsv(path)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _label_index(value, label_names: tuple[str, ...] | None, where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: label {value!r} is not a class index or name")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if label_names and text in label_names:
            return label_names.index(text)
        if re.fullmatch(r"-?\d+", text):
            return int(text)
    names = f" (label_names: {', '.join(label_names)})" if label_names else ""
    raise ValueError(f"{where}: label {value!r} is not a class index or a known name{names}")


def _normalise(
    records: list[dict],
    path: Path,
    read_fields: tuple[str, ...],
    spec: TaskSpec,
    label_field: str,
) -> list[dict]:
    """Records with the spec's field names; classification labels as ints (rows -1 dropped)."""
    out = []
    for n, record in enumerate(records, 1):
        where = f"{path} record {n}"
        row = {}
        for read, name in zip(read_fields, spec.text_fields, strict=True):
            value = record.get(read)
            if not isinstance(value, str):
                missing = "missing" if value is None else f"not text ({type(value).__name__})"
                raise ValueError(f"{where}: field {read!r} is {missing}")
            row[name] = value
        if spec.kind == "classification":
            if label_field not in record:
                raise ValueError(f"{where}: no {label_field!r} field")
            label = _label_index(record[label_field], spec.label_names, where)
            if label == -1:  # GLUE test rows: label hidden
                continue
            if not 0 <= label < spec.num_labels:
                raise ValueError(f"{where}: label {label} outside 0..{spec.num_labels - 1}")
            row["label"] = label
        out.append(row)
    if not out:
        raise ValueError(f"{path}: no labelled records (GLUE test files hide their labels)")
    return out


def _infer_fields(record: dict, path: Path) -> tuple[str, ...]:
    for fields in _KNOWN_PAIRS:
        if all(f in record for f in fields):
            return fields
    raise ValueError(
        f"{path}: cannot tell the text fields from {sorted(record)}: add a task.yaml naming "
        "kind and text_fields (see docs/tasks.md)"
    )


def _string_list(conf: dict, key: str, path: Path, max_len: int | None = None):
    """``conf[key]`` as a tuple of strings (a lone string is a list of one), or None."""
    value = conf.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(x, str) for x in value)
        or (max_len is not None and len(value) > max_len)
    ):
        size = f"one to {max_len} " if max_len else ""
        raise ValueError(
            f"{path}: {key} must be a list of {size}strings (in YAML quote words it reads as "
            f'booleans or numbers: "no", "yes", "1")'
        )
    return tuple(value)


def _label_field(conf: dict, path: Path) -> str:
    field_name = conf.get("label_field", "label")
    if not isinstance(field_name, str):
        raise ValueError(f"{path}: label_field must be a column name, got {field_name!r}")
    return field_name


def _local_spec(name: str, directory: Path, first: dict, train_path: Path) -> tuple[TaskSpec, str]:
    """The spec of a ``local:`` task from its task file, or inferred from the train records."""
    task_file = _read_task_file(directory)
    path, conf = task_file if task_file else (train_path, {})
    label_field = _label_field(conf, path)
    kind = conf.get("kind") or ("classification" if label_field in first else "lm")
    if kind not in _METRICS:
        raise ValueError(f"{path}: kind must be classification or lm, got {kind!r}")
    fields = _string_list(conf, "text_fields", path, max_len=2) or _infer_fields(first, train_path)
    if kind == "lm" and len(fields) != 1:
        raise ValueError(f"{path}: an lm task has exactly one text field, got {list(fields)}")
    metric = conf.get("metric", _METRICS[kind][0])
    if metric not in _METRICS[kind]:
        raise ValueError(f"{path}: metric for {kind} must be one of {', '.join(_METRICS[kind])}")
    label_names = _string_list(conf, "label_names", path)
    num_labels = conf.get("num_labels")
    if num_labels is not None and (not isinstance(num_labels, int) or num_labels < 2):
        raise ValueError(f"{path}: num_labels must be an integer >= 2, got {num_labels!r}")
    if label_names and num_labels and len(label_names) != num_labels:
        raise ValueError(f"{path}: {len(label_names)} label_names but num_labels {num_labels}")
    spec = TaskSpec(
        name=name,
        kind=kind,
        text_fields=fields,
        metric=metric,
        description=conf.get("description", f"local task from {directory}"),
        source=f"local files in {directory}",
        num_labels=num_labels or (len(label_names) if label_names else None),
        label_names=label_names,
        lm_separator=conf.get("lm_separator", "\n\n"),
    )
    return spec, label_field


def _complete_labels(spec: TaskSpec, train: list[dict], label_field: str, path: Path) -> TaskSpec:
    """Fill num_labels (and label_names for string labels) from the train records."""
    if spec.kind != "classification" or spec.num_labels:
        return spec
    indices, names = [], set()
    for record in train:
        if label_field not in record:
            continue  # reported with its record number by _normalise
        try:
            indices.append(_label_index(record[label_field], None, str(path)))
        except ValueError:
            names.add(str(record[label_field]))
    if indices and names:
        raise ValueError(
            f"{path}: labels mix class indices and names (e.g. {indices[0]} and "
            f"{min(names)!r}): list label_names in a task file"
        )
    if names:
        return replace(spec, label_names=tuple(sorted(names)), num_labels=len(names))
    if indices:
        return replace(spec, num_labels=max(max(indices) + 1, 2))
    return spec


def _load_dir(
    directory: Path, spec: TaskSpec | None, name: str
) -> tuple[TaskSpec, dict[str, list[dict]]]:
    """Read train/validation[/test] files; ``spec`` None means a ``local:`` task."""
    if not directory.is_dir():
        raise FileNotFoundError(f"task directory not found: {directory}")
    validation_stems = _MNLI_VALIDATION_STEMS if name == "mnli" else _SPLIT_STEMS["validation"]
    paths = {
        "train": _split_file(directory, _SPLIT_STEMS["train"]),
        "validation": _split_file(directory, validation_stems),
        "test": _split_file(directory, _SPLIT_STEMS["test"]),
    }
    for split in ("train", "validation"):
        if paths[split] is None:
            raise FileNotFoundError(f"{directory} has no {split}.jsonl or {split}.tsv")
    raw = {split: _read_split(path) for split, path in paths.items() if path is not None}
    if spec is None:
        spec, label_field = _local_spec(name, directory, raw["train"][0], paths["train"])
        spec = _complete_labels(spec, raw["train"], label_field, paths["train"])
        read_fields = spec.text_fields
    else:
        task_file = _read_task_file(directory)
        conf = task_file[1] if task_file else {}
        extra = sorted(set(conf) - _OVERRIDE_KEYS)
        if extra:
            raise ValueError(
                f"task file {task_file[0]}: for the named task {name!r} only "
                f"{', '.join(sorted(_OVERRIDE_KEYS))} may be set, not {', '.join(extra)}"
            )
        path = task_file[0] if task_file else directory
        read_fields = _string_list(conf, "text_fields", path) or spec.text_fields
        if len(read_fields) != len(spec.text_fields):
            raise ValueError(f"{path}: {name} needs {len(spec.text_fields)} text field(s)")
        label_field = _label_field(conf, path)
        label_names = _string_list(conf, "label_names", path)
        if label_names is not None:
            if len(label_names) != spec.num_labels:
                raise ValueError(
                    f"{path}: {name} has {spec.num_labels} labels, not {len(label_names)}"
                )
            spec = replace(spec, label_names=label_names)
        spec = replace(spec, source=f"local copy in {directory}")
    splits = {
        split: _normalise(records, paths[split], read_fields, spec, label_field)
        for split, records in raw.items()
    }
    return spec, splits


def _env_copy(name: str) -> Path | None:
    root = os.environ.get(DATA_ENV)
    if root and (Path(root).expanduser() / name).is_dir():
        return Path(root).expanduser() / name
    return None
