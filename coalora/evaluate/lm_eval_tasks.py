"""Causal LMs through lm-evaluation-harness, on the in-memory model, offline by default.

Two embedded tasks are built from the World English Bible (``coalora.data.bible_verses``)
into JSONL files plus lm-eval task YAMLs (``dataset_path: json``) in a cache directory,
deterministically, once:

- ``bible_ppl``: held-out perplexity on the books no Bible training split contains (the test
  books of ``bible-lm``: one document per chapter, ``loglikelihood_rolling``; word and byte
  perplexity, bits per byte).
- ``bible_mc``: the first half of a verse from those books, and four candidate second halves:
  its own and those of three other verses (``multiple_choice``; acc and acc_norm).

The directory (``embedded_tasks_dir()``) also works with the ``lm_eval`` command:
``lm_eval --include_path DIR --tasks bible_mc ...``.

Any other task name is looked up in lm-eval's own registry (and in extra ``include``
directories). Registry tasks fetch their data from the Hugging Face hub; when the hub is
offline (``HF_DATASETS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``, or unreachable), loading one fails
at once with a one-line ``HubUnavailableError`` naming the task and how to give local data.
The embedded tasks never touch the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path

import yaml

from ..data import BIBLE_LM_TEST_BOOKS, bible_verses, load_task
from ..models import HubUnavailableError, cache_root, hub_offline_reason

EMBEDDED_TASKS = ("bible_ppl", "bible_mc")
# Bump when the generated data or YAML change: it is the tasks' lm-eval version and part of
# the cache key, so results made from different data never share a version.
EMBEDDED_VERSION = 1
# Verses shorter than this have halves too short to tell apart.
MC_MIN_WORDS = 8
MC_CHOICES = 4

log = logging.getLogger(__name__)


# ============================================================================ task data


def bible_ppl_records() -> list[dict]:
    """The test chapters of ``bible-lm`` (held-out books), in a fixed shuffled order so that a
    ``limit`` takes chapters from every book."""
    records = [
        {"text": r["text"], "book": r["book"], "chapter": r["chapter"]}
        for r in load_task("bible-lm").test
    ]
    random.Random(f"coalora:bible_ppl:v{EMBEDDED_VERSION}").shuffle(records)
    return records


def bible_mc_records() -> list[dict]:
    """Verse-continuation multiple choice over the held-out books, in a fixed shuffled order."""
    rng = random.Random(f"coalora:bible_mc:v{EMBEDDED_VERSION}")
    pool = [
        v
        for v in bible_verses()
        if v.book in BIBLE_LM_TEST_BOOKS and len(v.text.split()) >= MC_MIN_WORDS
    ]
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
        label = rng.randrange(MC_CHOICES)
        choices = distractors[:label] + [ending] + distractors[label:]
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
    return {
        **common,
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "metric_list": [_metric("acc", "mean", True), _metric("acc_norm", "mean", True)],
    }


_BUILDERS = {"bible_ppl": bible_ppl_records, "bible_mc": bible_mc_records}


def embedded_tasks_dir() -> Path:
    """The directory of the embedded tasks' YAML and JSONL files (built once, cached)."""
    # Private helper of coalora.models: build in a temp dir, rename into place, rebuild when
    # the stamp differs (here: another format version or a moved cache).
    from ..models import _cached_dir

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


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Make ``datasets`` and ``huggingface_hub`` use local files only (both read the env flag
    once, at import, so the flag alone is not enough once they are imported)."""
    import datasets
    from huggingface_hub import constants

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    if offline:
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class LMEvalSuite:
    """lm-eval tasks loaded once, run on any number of model states.

    The same model object is evaluated under many configurations (its weights and adapters
    are switched in place), so the harness wrapper (``HFLM``) and the loaded tasks are built
    once and reused; each ``run`` scores the model as it is now.
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
        self.include = [Path(p) for p in include]
        self.batch_size = batch_size
        self.max_length = max_length
        self._task_dict = None
        self._lm = None
        self._lm_model_id: int | None = None
        self._data_hashes: dict[str, str] = {}

    # --- loading ------------------------------------------------------------------------
    def _load_tasks(self) -> dict:
        from lm_eval.tasks import TaskManager

        embedded = [n for n in self.task_names if n in EMBEDDED_TASKS]
        others = [n for n in self.task_names if n not in EMBEDDED_TASKS]
        merged: dict = {"tasks": {}, "groups": {}, "group_map": {}}

        def merge(loaded: dict) -> None:
            for key in merged:
                merged[key].update(loaded.get(key, {}))

        if embedded:
            directory = embedded_tasks_dir()
            self._data_hashes = {n: _file_sha256(directory / f"{n}.jsonl") for n in embedded}
            manager = TaskManager(include_path=str(directory), include_defaults=False)
            with _hub_offline(True):  # local JSONL only: never the network
                merge(manager.load(embedded))
        if others:
            # Indexing lm-eval's registry takes seconds: only done when a registry task is named.
            paths = [str(p) for p in self.include] or None
            manager = TaskManager(include_path=paths, include_defaults=True)
            reason = hub_offline_reason()
            for name in others:
                if name not in manager.all_tasks:
                    raise ValueError(
                        f"unknown lm-eval task {name!r}: not embedded ({', '.join(EMBEDDED_TASKS)}), "
                        f"not in lm-eval {version('lm-eval')}'s registry"
                        + (f" nor in {', '.join(map(str, self.include))}" if self.include else "")
                    )
                try:
                    with _hub_offline(reason is not None):
                        merge(manager.load([name]))
                except Exception as err:
                    if reason is not None:
                        raise HubUnavailableError(
                            f"lm-eval task {name!r} needs its data from the Hugging Face hub, "
                            f"which is offline ({reason}): write a task YAML over local JSONL "
                            "(dataset_path: json, dataset_kwargs: {data_files: ...}) and pass "
                            "its directory with --lm-eval-include"
                        ) from err
                    raise RuntimeError(
                        f"lm-eval task {name!r} failed to load: {_first_line(err)}"
                    ) from err
        for task in merged["tasks"].values():
            # What simple_evaluate does: zero-shot unless the task says otherwise, fixed seed.
            if task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=1234)
        return merged

    def _harness_model(self, model, tokenizer):
        from lm_eval.models.huggingface import HFLM

        if self._lm is None or self._lm_model_id != id(model):
            logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-call info chatter
            self._lm = HFLM(
                pretrained=model,
                tokenizer=tokenizer,
                batch_size=self.batch_size,
                max_length=self.max_length,
            )
            self._lm_model_id = id(model)
        return self._lm

    def prepare(self) -> None:
        """Build the task data and load the tasks now (else on the first ``run``)."""
        if self._task_dict is None:
            self._task_dict = self._load_tasks()

    # --- running ------------------------------------------------------------------------
    def run(self, model, tokenizer, limit: int | None = None) -> tuple[dict[str, float], dict]:
        """(metrics, protocol): metrics are ``lm_eval/<task>/<metric>`` (``/<filter>`` when
        the filter is not ``none``); the protocol holds versions, n-shot, sizes, batch size."""
        from lm_eval import evaluator

        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        self.prepare()
        lm = self._harness_model(model, tokenizer)
        model.eval()
        output = evaluator.evaluate(
            lm=lm, task_dict=self._task_dict, limit=limit, bootstrap_iters=0, log_samples=False
        )
        metrics = {}
        for task, values in output["results"].items():
            for key, value in values.items():
                if "," not in key or "_stderr" in key or isinstance(value, bool):
                    continue
                metric, filter_name = key.split(",", 1)
                if isinstance(value, int | float):
                    suffix = "" if filter_name == "none" else f"/{filter_name}"
                    metrics[f"lm_eval/{task}/{metric}{suffix}"] = float(value)
        tasks = {}
        for task in output["results"]:
            tasks[task] = {
                "version": output.get("versions", {}).get(task),
                "n_shot": output.get("n-shot", {}).get(task),
                "n_samples": output.get("n-samples", {}).get(task),
            }
            if task in self._data_hashes:
                tasks[task]["data_sha256"] = self._data_hashes[task]
        protocol = {
            "lm_eval_version": version("lm-eval"),
            "tasks": tasks,
            "batch_size": self.batch_size,
            "max_length": lm.max_length,
            "limit": limit,
            "bootstrap_iters": 0,
        }
        return metrics, protocol
