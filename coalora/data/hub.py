"""Hub tasks (GLUE, C4, WikiText) and reading them from the Hugging Face hub.

``datasets`` is told to use only its local cache while the hub is offline or unreachable
(``coalora.offline``); a task that is neither cached nor reachable fails with a one-line
``HubUnavailableError`` saying where a local copy goes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..offline import HubUnavailableError, hub_mirror, hub_offline, hub_offline_reason
from .local import DATA_ENV
from .task import TaskSpec

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

HUB_TASKS: tuple[TaskSpec, ...] = (
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
)


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


def _load_hub(spec: TaskSpec) -> dict[str, list[dict]]:
    import datasets

    source = _HUB[spec.name]
    # The same repository, config, splits and files from $COALORA_HUB_MIRROR when it has them.
    mirrored = hub_mirror(source.path)
    path = source.path if mirrored is None else str(mirrored)
    reason = None if mirrored is not None else hub_offline_reason()
    columns = list(spec.text_fields) + (["label"] if spec.kind == "classification" else [])
    splits = {}
    try:
        with hub_offline(reason is not None or mirrored is not None):
            for ours, theirs in source.splits.items():
                table = datasets.load_dataset(
                    path, source.config, data_files=source.data_files, split=theirs
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
