"""Causal LMs through lm-evaluation-harness, on the in-memory model, offline by default.

Two embedded tasks are built from the World English Bible (``coalora.data.bible_verses``)
into JSONL files plus lm-eval task YAMLs (``dataset_path: json``) in a cache directory,
deterministically, once:

- ``bible_ppl``: held-out perplexity on the test books of ``bible-lm``, which its training
  split never contains (one document per chapter, ``loglikelihood_rolling``; word and byte
  perplexity, bits per byte). The Bible classification tasks do draw verses from every book.
- ``bible_mc``: the first half of a verse from those books, and four candidate second halves:
  its own and those of three other verses (``multiple_choice``; acc and acc_norm).
- ``bible_cloze``: a verse from those books without its last word, and four candidate next
  words: its own and the last words of three other verses (``multiple_choice``; acc). Each
  choice is one short word, so in GPT-style tokenizers one token, and lm-eval's HFLM then
  scores all four choices from one forward pass over the shared context (its
  ``logits_cache``): a quarter of ``bible_mc``'s model rows, of about the same length.

The directory (``embedded_tasks_dir()``) also works with the ``lm_eval`` command:
``lm_eval --include_path DIR --tasks bible_mc ...``.

Any other task name is looked up in lm-eval's own registry (and in extra ``include``
directories). Registry tasks fetch their data from the Hugging Face hub; when the hub is
offline (``HF_DATASETS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``, or unreachable), loading one fails
at once with a one-line ``HubUnavailableError`` naming the task and how to give local data.
A hub mirror (``$COALORA_HUB_MIRROR``, ``coalora.offline``) may hold task YAMLs in its
``lm_eval_tasks/`` folder (``mirror_task_yaml``: a registry task reading the mirror's copy of
its data set), found before the registry.
The embedded tasks never touch the network.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import yaml

from ..data import BIBLE_LM_TEST_BOOKS, Verse, bible_verses, load_task
from ..io import cache_root
from ..models import _cached_dir
from ..offline import HUB_MIRROR_ENV, HubUnavailableError, hub_offline, hub_offline_reason

EMBEDDED_TASKS = ("bible_ppl", "bible_mc", "bible_cloze")
# Bump when the generated data or YAML change: it is the tasks' lm-eval version and part of
# the cache key, so results made from different data never share a version.
EMBEDDED_VERSION = 1
# Verses shorter than this have halves too short to tell apart (bible_mc), or too little
# context before their last word (bible_cloze).
MC_MIN_WORDS = 8
MC_CHOICES = 4
# bible_cloze: a verse qualifies when its last word is lower-case ASCII letters, at most 6 of
# them, followed only by punctuation (stripped from every choice alike). Short common words
# are one token in GPT-style BPE vocabularies (SmolLM2: 440 of the 444 qualifying verses);
# proper names (capitalised) mostly are not ("Vashti", "Haman", "Adar" are 2-3 tokens).
CLOZE_LAST_WORD = re.compile(r"(?P<word>[a-z]{1,6})[^\w]*")


# ============================================================================ task data


def bible_ppl_records() -> list[dict]:
    """The test chapters of ``bible-lm`` (held-out books), in a fixed shuffled order so that a
    ``limit`` takes chapters from every book."""
    records = [
        {"text": r["text"], "book": r["book"], "chapter": r["chapter"]}
        for r in load_task("bible-lm").test
    ]
    _task_rng("bible_ppl").shuffle(records)
    return records


def _task_rng(name: str) -> random.Random:
    """The generator of one embedded task's data: seeded by its name and the data version."""
    return random.Random(f"coalora:{name}:v{EMBEDDED_VERSION}")


def _test_book_verses() -> list[Verse]:
    """The multiple-choice tasks' source: verses of bible-lm's test books (never in its
    training text) of at least ``MC_MIN_WORDS`` words, in canonical order."""
    return [
        v
        for v in bible_verses()
        if v.book in BIBLE_LM_TEST_BOOKS and len(v.text.split()) >= MC_MIN_WORDS
    ]


def _placed(rng: random.Random, answer: str, distractors: list[str]) -> tuple[list[str], int]:
    """(choices, label): the answer inserted among the distractors at a drawn position."""
    label = rng.randrange(MC_CHOICES)
    return distractors[:label] + [answer] + distractors[label:], label


def bible_mc_records() -> list[dict]:
    """Verse-continuation multiple choice over the held-out books, in a fixed shuffled order."""
    rng = _task_rng("bible_mc")
    pool = _test_book_verses()
    halves = []
    for v in pool:
        words = v.text.split()
        middle = len(words) // 2
        halves.append((" ".join(words[:middle]), " ".join(words[middle:])))
    records = []
    for i, (v, (context, ending)) in enumerate(zip(pool, halves, strict=True)):
        # Distractors: endings of other verses, never a copy of the true ending.
        others = [j for j in range(len(pool)) if j != i and halves[j][1] != ending]
        distractors = [halves[j][1] for j in rng.sample(others, MC_CHOICES - 1)]
        choices, label = _placed(rng, ending, distractors)
        records.append({"context": context, "choices": choices, "label": label, "ref": v.ref})
    rng.shuffle(records)
    return records


def bible_cloze_records() -> list[dict]:
    """Last-word prediction over the held-out books, in a fixed shuffled order.

    The context is the verse without its last word; the choices are " word" (the space that
    precedes the word in the verse, so the task's ``target_delimiter`` is empty): the verse's
    own last word and three distinct other words that end test verses, drawn verse by verse
    (so in proportion to how often they end one: the choices share the endings' prior)."""
    rng = _task_rng("bible_cloze")
    items = []  # (verse, context, last word)
    for v in _test_book_verses():
        *context, last = v.text.split()
        match = CLOZE_LAST_WORD.fullmatch(last)
        if match:
            items.append((v, " ".join(context), match["word"]))
    records = []
    for v, context, word in items:
        others = [other for _, _, other in items if other != word]
        distractors: list[str] = []
        while len(distractors) < MC_CHOICES - 1:
            other = rng.choice(others)
            if other not in distractors:
                distractors.append(other)
        choices, label = _placed(rng, word, distractors)
        choices = [" " + c for c in choices]
        records.append({"context": context, "choices": choices, "label": label, "ref": v.ref})
    rng.shuffle(records)
    return records


def _metric(name: str, aggregation: str, higher_is_better: bool) -> dict:
    return {"metric": name, "aggregation": aggregation, "higher_is_better": higher_is_better}


def _task_yaml(name: str, data_file: Path) -> dict:
    common = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "num_fewshot": 0,
        "metadata": {"version": float(EMBEDDED_VERSION)},
    }
    if name == "bible_ppl":
        return {
            **common,
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [
                _metric("word_perplexity", "weighted_perplexity", False),
                _metric("byte_perplexity", "weighted_perplexity", False),
                _metric("bits_per_byte", "bits_per_byte", False),
            ],
        }
    multiple_choice = {
        **common,
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
    }
    if name == "bible_cloze":
        # The choices carry their own leading space. acc_norm (log-likelihood per character)
        # would only favour longer words among one-token choices: acc alone.
        return {
            **multiple_choice,
            "target_delimiter": "",
            "metric_list": [_metric("acc", "mean", True)],
        }
    return {
        **multiple_choice,
        "metric_list": [_metric("acc", "mean", True), _metric("acc_norm", "mean", True)],
    }


_BUILDERS = {
    "bible_ppl": bible_ppl_records,
    "bible_mc": bible_mc_records,
    "bible_cloze": bible_cloze_records,
}


def embedded_tasks_dir() -> Path:
    """The directory of the embedded tasks' YAML and JSONL files (built once, cached)."""
    # coalora.models' cached-directory helper: build in a temp dir, rename into place,
    # rebuild when the stamp differs (here: another format version or a moved cache).
    target = cache_root() / "lm_eval_tasks" / f"bible-v{EMBEDDED_VERSION}"
    stamp = {"format": EMBEDDED_VERSION, "tasks": list(EMBEDDED_TASKS), "path": str(target)}

    def build(out: Path) -> None:
        for name in EMBEDDED_TASKS:
            # The YAML names the file's final place: ``out`` is renamed onto ``target``.
            data_file = target / f"{name}.jsonl"
            with (out / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
                for record in _BUILDERS[name]():
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            text = yaml.safe_dump(_task_yaml(name, data_file), sort_keys=False)
            (out / f"{name}.yaml").write_text(text, encoding="utf-8")

    return _cached_dir(target, stamp, build)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ============================================================================ running

# lm-eval's HFLM logs two warnings whenever it is given a model object instead of a hub name
# (``lm_eval/models/huggingface.py``, lm-eval 0.4.13), whatever else it is passed. Passing a
# name is no option: the model evaluated is the one in memory, its weights quantized and its
# adapter set per configuration. Both warn of what is intended here (one process, no
# accelerate, no ``parallelize``), so exactly these two are dropped while HFLM is built.
HFLM_LOGGER = "lm_eval.models.huggingface"
IN_MEMORY_MODEL_WARNINGS = (
    "`pretrained` model kwarg is not of type `str`.",
    "Passed an already-initialized model through `pretrained`,",
)


def _drop_in_memory_model_warnings(record: logging.LogRecord) -> bool:
    """Logging filter: False for the two warnings above, True for everything else."""
    return not (
        record.levelno == logging.WARNING
        and record.getMessage().startswith(IN_MEMORY_MODEL_WARNINGS)
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@functools.cache
def _task_manager(include: tuple[str, ...], registry: bool):
    """lm-eval's TaskManager over ``include`` dirs, plus its own registry when ``registry``.
    Indexing the registry's ~15k task YAMLs takes seconds, so a manager is built once per
    process, and the registry only when a task is not in ``include``."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None, include_defaults=registry)


# In a hub mirror ($COALORA_HUB_MIRROR), this folder holds task YAMLs over the mirror's data
# sets (``mirror_task_yaml``); its tasks are found before lm-eval's registry is indexed.
MIRROR_TASKS = "lm_eval_tasks"


def mirror_tasks_dir() -> Path | None:
    root = os.environ.get(HUB_MIRROR_ENV)
    path = Path(root).expanduser() / MIRROR_TASKS if root else None
    return path if path is not None and path.is_dir() else None


def mirror_task_yaml(name: str, mirror: Path) -> dict:
    """A task YAML for the mirror's ``lm_eval_tasks/``: registry task ``name`` as lm-eval
    defines it (its YAML included: prompts, splits, processing functions, metrics), reading
    its data set from the mirror's copy of its hub repository (``dataset_path`` only)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = _task_manager((), registry=True).task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise ValueError(
            f"lm-eval task {name!r} is not a YAML task of lm-eval {version('lm-eval')}"
        )
    config = load_yaml(entry.yaml_path, resolve_func=False)
    repo = config.get("dataset_path")
    if not repo or not (Path(mirror) / repo).is_dir():
        raise ValueError(f"lm-eval task {name!r}: its data set {repo!r} is not in {mirror}")
    path = str((Path(mirror) / repo).resolve())
    return {"include": str(Path(entry.yaml_path).resolve()), "task": name, "dataset_path": path}


class LMEvalSuite:
    """lm-eval tasks loaded once, run on any number of model states.

    The same model object is evaluated under many configurations (its weights and adapters
    are switched in place), so the harness wrapper (``HFLM``) and the loaded tasks are built
    once and reused; each ``run`` scores the model as it is now. Each named task (or group)
    runs as its own ``evaluate`` call, so its time is recorded on its own.
    """

    def __init__(
        self,
        tasks: Sequence[str] = EMBEDDED_TASKS,
        include: Sequence[str | Path] = (),
        batch_size: int = 8,
        max_length: int | None = None,
    ):
        if not tasks:
            raise ValueError("no lm-eval tasks given")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"lm-eval tasks named twice: {list(tasks)}")
        for path in include:
            if not Path(path).is_dir():
                raise FileNotFoundError(f"lm-eval include directory not found: {path}")
        self.task_names = list(tasks)
        self.include = tuple(str(p) for p in include)
        self.batch_size = batch_size
        self.max_length = max_length
        self._loaded: dict[str, dict] | None = None  # name -> lm-eval task dict
        self._lm = None
        self._lm_model_id: int | None = None
        self._data_hashes: dict[str, str] = {}

    # --- loading ------------------------------------------------------------------------
    def _load_embedded(self, name: str) -> dict:
        from lm_eval.tasks import TaskManager

        directory = embedded_tasks_dir()
        self._data_hashes[name] = _file_sha256(directory / f"{name}.jsonl")
        manager = TaskManager(include_path=str(directory), include_defaults=False)
        with hub_offline(True):  # local JSONL only: never the network
            return manager.load([name])

    def _load_registry(self, name: str) -> dict:
        mirrored = mirror_tasks_dir()
        include = self.include + ((str(mirrored),) if mirrored else ())
        manager = _task_manager(include, registry=False) if include else None
        if manager is None or name not in manager.all_tasks:
            manager = _task_manager(self.include, registry=True)
        if name not in manager.all_tasks:
            where = f" nor in {', '.join(self.include)}" if self.include else ""
            raise ValueError(
                f"unknown lm-eval task {name!r}: not embedded ({', '.join(EMBEDDED_TASKS)}), "
                f"not in lm-eval {version('lm-eval')}'s registry{where}"
            )
        reason = hub_offline_reason()
        try:
            with hub_offline(reason is not None):
                return manager.load([name])
        except Exception as err:
            if reason is not None:
                raise HubUnavailableError(
                    f"lm-eval task {name!r} needs its data from the Hugging Face hub, which is "
                    f"offline ({reason}): write a task YAML over local JSONL (dataset_path: "
                    "json, dataset_kwargs: {data_files: ...}) and pass its directory with "
                    "--lm-eval-include"
                ) from err
            raise RuntimeError(f"lm-eval task {name!r} failed to load: {_first_line(err)}") from err

    def prepare(self) -> None:
        """Build the task data and load the tasks now (else on the first ``run``)."""
        if self._loaded is not None:
            return
        loaded = {}
        for name in self.task_names:
            # Embedded names always mean the embedded tasks (include dirs cannot shadow them).
            embedded = name in EMBEDDED_TASKS
            loaded[name] = self._load_embedded(name) if embedded else self._load_registry(name)
            for task in loaded[name]["tasks"].values():
                # What simple_evaluate does: zero-shot unless the task says otherwise, seeded.
                if task.get_config("num_fewshot") is None:
                    task.set_config(key="num_fewshot", value=0)
                task.set_fewshot_seed(seed=1234)
        self._loaded = loaded

    def _harness_model(self, model, tokenizer):
        from lm_eval.models.huggingface import HFLM

        if self._lm is None or self._lm_model_id != id(model):
            logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-call info chatter
            hflm_logger = logging.getLogger(HFLM_LOGGER)
            hflm_logger.addFilter(_drop_in_memory_model_warnings)
            try:
                self._lm = HFLM(
                    pretrained=model,
                    tokenizer=tokenizer,
                    batch_size=self.batch_size,
                    max_length=self.max_length,
                )
            finally:
                hflm_logger.removeFilter(_drop_in_memory_model_warnings)
            self._lm_model_id = id(model)
        return self._lm

    # --- running ------------------------------------------------------------------------
    def run(self, model, tokenizer, limit: int | None = None) -> tuple[dict[str, float], dict]:
        """(metrics, protocol): metrics are ``lm_eval/<task>/<metric>`` (``/<filter>`` when
        the filter is not ``none``); the protocol holds versions, n-shot, sizes, batch size
        and the seconds each named task took."""
        from lm_eval import evaluator

        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        self.prepare()
        lm = self._harness_model(model, tokenizer)
        model.eval()
        metrics: dict[str, float] = {}
        tasks: dict[str, dict] = {}
        for name, task_dict in self._loaded.items():
            clock = time.perf_counter()
            output = evaluator.evaluate(
                lm=lm, task_dict=task_dict, limit=limit, bootstrap_iters=0, log_samples=False
            )
            seconds = time.perf_counter() - clock
            metrics.update(_flatten_metrics(output))
            for task in output["results"]:
                tasks[task] = {
                    "version": output.get("versions", {}).get(task),
                    "n_shot": output.get("n-shot", {}).get(task),
                    "n_samples": output.get("n-samples", {}).get(task),
                }
                if task in self._data_hashes:
                    tasks[task]["data_sha256"] = self._data_hashes[task]
            tasks.setdefault(name, {})["seconds"] = seconds
        protocol = {
            "lm_eval_version": version("lm-eval"),
            "tasks": tasks,
            "batch_size": self.batch_size,
            "max_length": lm.max_length,
            "limit": limit,
            "bootstrap_iters": 0,
        }
        return metrics, protocol


def _flatten_metrics(output: dict) -> dict[str, float]:
    metrics = {}
    for task, values in output["results"].items():
        for key, value in values.items():
            if "," not in key or "_stderr" in key or isinstance(value, bool):
                continue
            metric, filter_name = key.split(",", 1)
            if isinstance(value, int | float):
                suffix = "" if filter_name == "none" else f"/{filter_name}"
                metrics[f"lm_eval/{task}/{metric}{suffix}"] = float(value)
    return metrics
