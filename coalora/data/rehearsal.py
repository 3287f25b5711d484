"""A rehearsal of a GPU preset on a CPU: the same DAG, code paths and data formats, at micro
scale (``snakemake --configfile config/paper.yaml --config rehearsal=true``).

The paper's grid names hub models (RoBERTa-large, Qwen2.5, LLaMA-2), hub data sets (GLUE,
C4) and lm-eval registry tasks whose data live on the hub. A rehearsal builds a **hub
mirror** (``coalora.offline.HUB_MIRROR_ENV``: a directory laid out like the hub,
``<mirror>/<owner>/<name>/``) holding, for each of them, a stand-in in the real format:

- each model: a random-init model of its own architecture class and config fields (RoBERTa,
  Qwen2, LLaMA; tied embeddings, grouped-query attention and the dtype the checkpoint ships
  in as the hub's), at tiny width, with a tokenizer of its own class (trained on the World
  English Bible);
- each data set: the repository's files (GLUE's per-config parquet files with its columns,
  ``ClassLabel`` names, splits and hidden test labels; C4's ``en/c4-*.json.gz`` JSON-lines
  shards; the lm-eval tasks' data sets), with a few rows of Bible text.

Every job then loads them through the code it uses for the hub (``datasets.load_dataset``
on the repository, ``from_pretrained``, lm-eval's registry task configs), only from the
mirror. ``SCALE`` is the one place where the rehearsal cuts steps, examples and lengths;
``scale_config`` applies it to a workflow configuration. Records of a rehearsal carry its
scale (``protocol.rehearsal``) and its claims say so: its numbers are no results.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..io import atomic_dir, read_json
from ..offline import HUB_MIRROR_ENV

MARKER_FILE = "rehearsal.json"  # in the mirror's root: what made it, at what scale
RESULTS_SUFFIX = "-rehearsal"


@dataclass(frozen=True)
class RehearsalScale:
    """Every cut a rehearsal makes, in one place (recorded in the mirror and every record).
    Whatever is not named here (methods, variants, budgets, ranks, quantizers, search modes,
    lm-eval tasks) runs as the preset says."""

    seeds: tuple[int, ...] = (0,)
    steps: int = 2  # optimizer steps of every run (the search runs every epoch_steps)
    # snapshot fractions (the learning curves and the settled gate): one, half-way, at step 1
    snapshots: tuple[float, ...] = (0.5,)
    epoch_steps: int = 1
    save_every: int = 1
    batch_size: int = 4
    max_length: int = 32  # training and classification length, in tokens
    max_train: int = 32  # training examples
    # CoA-LoRA's initial training set: the ILP configurations of these budgets (its own
    # default grid has 50: 50 ILP solves and 50 configurations scored per search round).
    coalora_budgets: tuple[float, ...] = (2.5, 3.0, 3.5, 4.0)
    search_candidates: int = 2
    search_eval_batches: int = 1
    search_segments: int = 4
    search_starts: int = 2
    search_steps: int = 2
    method_options: dict = field(
        default_factory=lambda: {"lqlora": {"iters": 2}, "gptq-lora": {"calib_samples": 4}}
    )
    eval_limit: int = 8  # test examples / perplexity windows per evaluation
    eval_window: int = 64  # perplexity window (and lm-eval max_length), in tokens
    lm_eval_limit: int = 2  # documents per lm-eval task
    # Sizes of the generated data: GLUE train / validation / test rows, C4 train / validation
    # documents, rows per split of an lm-eval task's data set.
    glue_rows: tuple[int, int, int] = (40, 16, 8)
    c4_documents: tuple[int, int] = (40, 16)
    lm_eval_rows: int = 4
    # The models: every hub model at this width and depth, in heads of 64 (grouped-query
    # models keep one key-value head: every matrix side stays >= 64, the largest LoRA rank a
    # low-rank method (LQ-LoRA, LoftQ) of the preset decomposes at), with this vocabulary.
    hidden_size: int = 128
    head_dim: int = 64
    num_hidden_layers: int = 2
    intermediate_size: int = 256
    vocab_size: int = 512

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


SCALE = RehearsalScale()


# ============================================================================ configuration


def results_dir(results: str) -> str:
    """A rehearsal's results folder: never a real run's (a rehearsal's outputs there would
    count as done for the real run), so ``-rehearsal`` is appended unless the name says so."""
    return results if "rehearsal" in Path(results).name else results + RESULTS_SUFFIX


def scale_config(config: dict, scale: RehearsalScale = SCALE) -> dict:
    """The workflow configuration ``config`` at the rehearsal's scale: the same experiments,
    methods, variants, budgets and lm-eval tasks, with ``scale``'s steps, examples, lengths
    and seeds, one thread per job and no cluster resources."""
    out = copy.deepcopy(config)
    out["results"] = results_dir(config.get("results", "results"))
    out["seeds"] = list(scale.seeds)
    out["snapshots"] = list(scale.snapshots)
    cuts = dict(
        batch_size=scale.batch_size,
        max_length=scale.max_length,
        epoch_steps=scale.epoch_steps,
        save_every=scale.save_every,
        search_candidates=scale.search_candidates,
        search_eval_batches=scale.search_eval_batches,
        search_segments=scale.search_segments,
        search_starts=scale.search_starts,
        search_steps=scale.search_steps,
    )
    for exp in out["experiments"].values():
        exp.pop("seeds", None)
        exp.pop("resources", None)
        steps = exp["steps"]
        exp["steps"] = scale.steps if isinstance(steps, int) else dict.fromkeys(steps, scale.steps)
        exp["max_train"] = scale.max_train
        exp["coalora_budgets"] = list(scale.coalora_budgets)
        options = copy.deepcopy(scale.method_options)
        for method, given in exp.get("train", {}).get("method_options", {}).items():
            options[method] = {**given, **options.get(method, {})}
        exp["train"] = {**exp.get("train", {}), **cuts, "method_options": options}
        for variant in exp.get("variants", {}).values():
            if "steps" in variant:
                variant["steps"] = scale.steps
        evaluation = exp.setdefault("eval", {})
        evaluation["limit"] = scale.eval_limit
        evaluation["lm_eval_limit"] = scale.lm_eval_limit
        evaluation.pop("lm_eval_seeds", None)
        if "window" in evaluation:
            evaluation["window"] = scale.eval_window
    return out


# ============================================================================ the marker


def rehearsal_note() -> dict | None:
    """The scale of the rehearsal whose hub mirror this process reads (``$COALORA_HUB_MIRROR``
    holds a ``rehearsal.json``), or None: recorded in every evaluation record."""
    root = os.environ.get(HUB_MIRROR_ENV)
    if not root or not (Path(root) / MARKER_FILE).is_file():
        return None
    return read_json(Path(root) / MARKER_FILE, "rehearsal marker")


# ============================================================================ models

# Each hub model's architecture as its config.json has it (class, fields that change the code
# path: tied embeddings, grouped-query attention, norms, the dtype its weights ship in);
# widths, depth and vocabulary come from SCALE.
MODELS: dict[str, dict] = {
    "FacebookAI/roberta-large": dict(
        model_type="roberta", architectures=["RobertaForMaskedLM"], tokenizer="roberta",
        grouped_query=False, dtype="float32",
        fields=dict(hidden_act="gelu", layer_norm_eps=1e-5, max_position_embeddings=514,
                    type_vocab_size=1),
    ),
    "Qwen/Qwen2.5-1.5B": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], tokenizer="qwen2",
        grouped_query=True, dtype="bfloat16",
        fields=dict(hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0,
                    max_position_embeddings=131072, tie_word_embeddings=True,
                    use_sliding_window=False),
    ),
    "Qwen/Qwen2.5-3B": dict(
        model_type="qwen2", architectures=["Qwen2ForCausalLM"], tokenizer="qwen2",
        grouped_query=True, dtype="bfloat16",
        fields=dict(hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0,
                    max_position_embeddings=32768, tie_word_embeddings=True,
                    use_sliding_window=False),
    ),
    "meta-llama/Llama-2-7b-hf": dict(
        model_type="llama", architectures=["LlamaForCausalLM"], tokenizer="llama",
        grouped_query=False, dtype="float16",
        fields=dict(hidden_act="silu", rms_norm_eps=1e-5, max_position_embeddings=4096,
                    tie_word_embeddings=False),
    ),
}  # fmt: skip


def _tokenizer(kind: str, scale: RehearsalScale):
    """A tokenizer of the hub model's own class and special tokens, its BPE vocabulary
    retrained on Bible verses (``train_new_from_iterator`` keeps the class's pipeline)."""
    from transformers import LlamaTokenizer, Qwen2Tokenizer, RobertaTokenizer

    from . import bible_verses

    base = {
        "roberta": lambda: RobertaTokenizer(model_max_length=512),
        "qwen2": lambda: Qwen2Tokenizer(model_max_length=131072),
        "llama": lambda: LlamaTokenizer(add_bos_token=True),  # LLaMA-2: <s> first, no pad
    }[kind]()
    texts = [v.text for v in bible_verses()[::4]]
    return base.train_new_from_iterator(texts, vocab_size=scale.vocab_size)


def _build_model(repo: str, out: Path, scale: RehearsalScale, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    spec = MODELS[repo]
    tokenizer = _tokenizer(spec["tokenizer"], scale)
    heads = scale.hidden_size // scale.head_dim
    shape = dict(
        hidden_size=scale.hidden_size,
        num_hidden_layers=scale.num_hidden_layers,
        num_attention_heads=heads,
        intermediate_size=scale.intermediate_size,
    )
    if spec["model_type"] != "roberta":
        shape["num_key_value_heads"] = 1 if spec["grouped_query"] else heads
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = AutoConfig.for_model(spec["model_type"], **spec["fields"], **shape, **ids)
    config.architectures = spec["architectures"]
    auto = AutoModelForMaskedLM if spec["model_type"] == "roberta" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=getattr(torch, spec["dtype"]))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# ============================================================================ data sets


def _verses() -> list[str]:
    from . import bible_verses

    return [v.text for v in bible_verses()]


def _rng(name: str) -> random.Random:
    return random.Random(f"coalora:rehearsal:{name}")


def _question(text: str) -> str:
    words = text.rstrip(".;:,!?").split()
    return "What " + " ".join(words[1:12]).lower() + "?"


def _parquet_repo(out: Path, configs: dict[str | None, dict[str, list[dict]]], features) -> None:
    """A hub data set repository as the hub's parquet conversion lays it out: one folder per
    config (``default`` when it has none), ``<split>-00000-of-00001.parquet`` files, and the
    README's ``configs`` metadata that ``load_dataset`` reads."""
    from datasets import Dataset

    lines = ["---", "configs:"]
    for config, splits in configs.items():
        name = config or "default"
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, rows in splits.items():
            path = f"{name}/{split}-00000-of-00001.parquet"
            (out / name).mkdir(parents=True, exist_ok=True)
            Dataset.from_list(rows, features=features(config)).to_parquet(str(out / path))
            lines += [f"  - split: {split}", f"    path: {name}/{split}-*"]
    (out / "README.md").write_text("\n".join(lines + ["---", ""]), encoding="utf-8")


# GLUE, as nyu-mll/glue has it: columns, label names, splits (test labels hidden: -1).
GLUE = {
    "sst2": (("sentence",), ("negative", "positive"), ("train", "validation", "test")),
    "qnli": (("question", "sentence"), ("entailment", "not_entailment"), ("train", "validation", "test")),
    "mnli": (
        ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
        ("train", "validation_matched", "validation_mismatched", "test_matched", "test_mismatched"),
    ),
    "qqp": (("question1", "question2"), ("not_duplicate", "duplicate"), ("train", "validation", "test")),
}  # fmt: skip


def _glue(out: Path, tasks: list[str], scale: RehearsalScale) -> None:
    from datasets import ClassLabel, Features, Value

    verses = _verses()
    n_train, n_validation, n_test = scale.glue_rows

    def rows(task: str, split: str) -> list[dict]:
        columns, labels, _ = GLUE[task]
        rng = _rng(f"glue:{task}:{split}")
        n = n_train if split == "train" else n_test if split.startswith("test") else n_validation
        out_rows = []
        for i in range(n):
            texts = [rng.choice(verses) for _ in columns]
            if columns[0].startswith("question"):
                texts[0] = _question(texts[0])
            if task == "qqp":
                texts[1] = _question(texts[1])
            hidden = split.startswith("test")
            label = -1 if hidden else i % len(labels)  # every label in every split
            out_rows.append({**dict(zip(columns, texts, strict=True)), "label": label, "idx": i})
        rng.shuffle(out_rows)
        return out_rows

    def features(task):
        columns, labels, _ = GLUE[task]
        return Features(
            {
                **{c: Value("string") for c in columns},
                "label": ClassLabel(names=list(labels)),
                "idx": Value("int32"),
            }
        )

    _parquet_repo(
        out,
        {task: {split: rows(task, split) for split in GLUE[task][2]} for task in tasks},
        features,
    )


def _c4(out: Path, scale: RehearsalScale) -> None:
    """allenai/c4's files: ``en/c4-{train,validation}.NNNNN-of-NNNNN.json.gz`` JSON lines with
    ``text``, ``timestamp`` and ``url``; the README's ``en`` config."""
    verses = _verses()
    shards = {
        "train": ("c4-train.00000-of-01024.json.gz", scale.c4_documents[0]),
        "validation": ("c4-validation.00000-of-00008.json.gz", scale.c4_documents[1]),
    }
    (out / "en").mkdir(parents=True)
    for split, (name, n) in shards.items():
        rng = _rng(f"c4:{split}")
        # mtime=0: the same bytes on every build.
        with gzip.GzipFile(out / "en" / name, "wb", mtime=0) as raw:
            for i in range(n):
                start = rng.randrange(len(verses) - 8)
                doc = {
                    "text": " ".join(verses[start : start + rng.randint(3, 6)]),
                    "timestamp": f"2019-04-{1 + i % 28:02d}T12:00:00Z",
                    "url": f"https://example.org/{split}/{i}",
                }
                raw.write((json.dumps(doc) + "\n").encode())
    (out / "README.md").write_text(
        "---\nconfigs:\n- config_name: en\n  data_files:\n"
        "  - split: train\n    path: en/c4-train.*.json.gz\n"
        "  - split: validation\n    path: en/c4-validation.*.json.gz\n---\n",
        encoding="utf-8",
    )


# ============================================================================ lm-eval data


# Words per stand-in text of an lm-eval item: a continuation must fit the rehearsal's
# evaluation window (lm-eval's max_length) in any stand-in tokenizer.
LM_EVAL_WORDS = 8


def _short(text: str) -> str:
    return " ".join(text.split()[:LM_EVAL_WORDS])


def _mc(rng: random.Random, verses: list[str], n_choices: int) -> tuple[str, list[str], int]:
    """A verse's first half, its own second half and other verses' second halves."""

    def halves(text):
        words = text.split()[: 2 * LM_EVAL_WORDS]
        return " ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])

    context, ending = halves(rng.choice(verses))
    choices = [halves(rng.choice(verses))[1] for _ in range(n_choices - 1)]
    gold = rng.randrange(n_choices)
    return context, choices[:gold] + [ending] + choices[gold:], gold


def _arc_row(rng, verses, i):
    context, choices, gold = _mc(rng, verses, 4)
    keys = ["A", "B", "C", "D"]
    return {
        "id": f"Rehearsal_{i}",
        "question": _question(context),
        "choices": {"text": choices, "label": keys},
        "answerKey": keys[gold],
    }


def _hellaswag_row(rng, verses, i):
    context, choices, gold = _mc(rng, verses, 4)
    words = context.split()
    return {
        "ind": i,
        "activity_label": "Reading",
        "ctx_a": " ".join(words[: len(words) // 2]),
        "ctx_b": " ".join(words[len(words) // 2 :]).lower(),
        "ctx": context,
        "endings": choices,
        "source_id": f"rehearsal~{i}",
        "split": "val",
        "split_type": "indomain",
        "label": str(gold),
    }


def _piqa_row(rng, verses, i):
    context, choices, gold = _mc(rng, verses, 2)
    return {"goal": context, "sol1": choices[0], "sol2": choices[1], "label": gold}


def _winogrande_row(rng, verses, i):
    words = rng.choice(verses).split()[: 2 * LM_EVAL_WORDS]
    blank = len(words) // 2
    options = [words[blank], rng.choice(rng.choice(verses).split())]
    gold = rng.randrange(2)
    if gold:
        options.reverse()
    sentence = " ".join(words[:blank] + ["_"] + words[blank + 1 :])
    return {
        "sentence": sentence,
        "option1": options[0],
        "option2": options[1],
        "answer": str(gold + 1),
    }


def _boolq_row(rng, verses, i):
    return {
        "question": _question(rng.choice(verses)).rstrip("?").lower(),
        "passage": _short(rng.choice(verses)),
        "idx": i,
        "label": i % 2,
    }


def _openbookqa_row(rng, verses, i):
    context, choices, gold = _mc(rng, verses, 4)
    keys = ["A", "B", "C", "D"]
    return {
        "id": f"rehearsal-{i}",
        "question_stem": context,
        "choices": {"text": choices, "label": keys},
        "answerKey": keys[gold],
    }


def _lambada_row(rng, verses, i):
    return {"text": _short(rng.choice(verses)).rstrip(".;:,!?")}


def _lm_eval_features():
    from datasets import ClassLabel, Features, Sequence, Value

    s, i32 = Value("string"), Value("int32")
    choices = {"text": Sequence(s), "label": Sequence(s)}
    return {
        "allenai/ai2_arc": Features({"id": s, "question": s, "choices": choices, "answerKey": s}),
        "Rowan/hellaswag": Features(
            {
                "ind": i32,
                "activity_label": s,
                "ctx_a": s,
                "ctx_b": s,
                "ctx": s,
                "endings": Sequence(s),
                "source_id": s,
                "split": s,
                "split_type": s,
                "label": s,
            }
        ),  # fmt: skip
        "baber/piqa": Features(
            {"goal": s, "sol1": s, "sol2": s, "label": ClassLabel(names=["0", "1"])}
        ),
        "allenai/winogrande": Features({"sentence": s, "option1": s, "option2": s, "answer": s}),
        "aps/super_glue": Features(
            {"question": s, "passage": s, "idx": i32, "label": ClassLabel(names=["False", "True"])}
        ),
        "allenai/openbookqa": Features(
            {"id": s, "question_stem": s, "choices": choices, "answerKey": s}
        ),
        "EleutherAI/lambada_openai": Features({"text": s}),
    }


# lm-eval registry task -> (its data set's hub repository, config, splits, row maker), as the
# registry's task YAML names them (lm-eval 0.4).
LM_EVAL_DATA: dict[str, tuple[str, str | None, tuple[str, ...], Callable]] = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", ("train", "validation", "test"), _arc_row),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", ("train", "validation", "test"), _arc_row),
    "hellaswag": ("Rowan/hellaswag", None, ("train", "validation", "test"), _hellaswag_row),
    "piqa": ("baber/piqa", None, ("train", "validation", "test"), _piqa_row),
    "winogrande": ("allenai/winogrande", "winogrande_xl", ("train", "validation", "test"), _winogrande_row),
    "boolq": ("aps/super_glue", "boolq", ("train", "validation", "test"), _boolq_row),
    "openbookqa": ("allenai/openbookqa", "main", ("train", "validation", "test"), _openbookqa_row),
    "lambada_openai": ("EleutherAI/lambada_openai", "default", ("test",), _lambada_row),
}  # fmt: skip


def _lm_eval(out: Path, final: Path, tasks: list[str], scale: RehearsalScale) -> None:
    """The registry tasks' data sets, and a task YAML for each in ``lm_eval_tasks/`` (the
    registry's task over the mirror's copy; ``final``: where the mirror will be)."""
    import yaml

    from ..evaluate.lm_eval_tasks import MIRROR_TASKS, mirror_task_yaml

    verses = _verses()
    features = _lm_eval_features()
    repos: dict[str, dict] = {}
    for task in tasks:
        repo, config, splits, make = LM_EVAL_DATA[task]
        repos.setdefault(repo, {})[config] = {
            split: [make(_rng(f"{task}:{split}:{i}"), verses, i) for i in range(scale.lm_eval_rows)]
            for split in splits
        }
    for repo, configs in repos.items():
        _parquet_repo(out / repo, configs, lambda _config, repo=repo: features[repo])
    if tasks:
        (out / MIRROR_TASKS).mkdir()
    for task in tasks:
        conf = mirror_task_yaml(task, out)
        conf["dataset_path"] = str(final.resolve() / LM_EVAL_DATA[task][0])
        text = yaml.safe_dump(conf, sort_keys=False)
        (out / MIRROR_TASKS / f"{task}.yaml").write_text(text, encoding="utf-8")


# ============================================================================ the mirror


def stand_ins(config: dict) -> dict[str, list[str]]:
    """What a workflow configuration reads from the hub, by kind: its models, its tasks and
    its lm-eval tasks (named or embedded ones included: ``build_mirror`` skips them)."""
    experiments = config["experiments"].values()
    return {
        "models": sorted({e["model"] for e in experiments}),
        "tasks": sorted({e["task"] for e in experiments}),
        "lm_eval_tasks": sorted(
            {t for e in experiments for t in e.get("eval", {}).get("lm_eval_tasks", [])}
        ),
    }


def build_mirror(
    out: str | os.PathLike,
    models: list[str],
    tasks: list[str],
    lm_eval_tasks: list[str],
    scale: RehearsalScale = SCALE,
) -> Path:
    """Write the hub mirror of these hub models, tasks and lm-eval tasks (names that are not
    on the hub, e.g. ``tiny-llama`` or ``bible_mc``, are skipped), deterministically: the same
    bytes on every build, with ``rehearsal.json`` in its root."""
    import datasets

    from ..evaluate.lm_eval_tasks import EMBEDDED_TASKS
    from ..models import MODELS as NAMED_MODELS
    from .hub import _HUB

    datasets.disable_progress_bars()
    models = [m for m in models if m not in NAMED_MODELS and not Path(m).expanduser().exists()]
    tasks = [t for t in tasks if t in _HUB]
    lm_eval_tasks = [t for t in lm_eval_tasks if t not in EMBEDDED_TASKS]
    unknown = [m for m in models if m not in MODELS]
    unknown += [t for t in tasks if t not in GLUE and t != "c4"]
    unknown += [t for t in lm_eval_tasks if t not in LM_EVAL_DATA]
    if unknown:
        raise ValueError(f"a rehearsal has no stand-in for {', '.join(unknown)}")
    out = Path(out)
    with atomic_dir(out) as tmp:
        for seed, repo in enumerate(models):
            _build_model(repo, tmp / repo, scale, seed)
        glue = [t for t in tasks if t in GLUE]
        if glue:
            _glue(tmp / _HUB["sst2"].path, glue, scale)
        if "c4" in tasks:
            _c4(tmp / _HUB["c4"].path, scale)
        _lm_eval(tmp, out, lm_eval_tasks, scale)
        marker = {
            "what": (
                "a rehearsal: random-init models and generated data in the hub's formats, at "
                "micro scale; its numbers are not results"
            ),
            "models": models,
            "tasks": tasks,
            "lm_eval_tasks": lm_eval_tasks,
            "scale": scale.as_dict(),
        }
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return out
