"""Task data (Bible tasks, local files, hub fallbacks) and deterministic, right-padded batches."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from coalora import data
from coalora.data import (
    BIBLE_LM_TEST_BOOKS,
    BIBLE_LM_VALIDATION_BOOKS,
    TASKS,
    bible_verses,
    classification_batches,
    list_tasks,
    lm_batches,
    lm_token_ids,
    load_task,
    make_batches,
)
from coalora.models import HubUnavailableError, load_model


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COALORA_CACHE", str(tmp_path_factory.mktemp("coalora-cache")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.delenv("COALORA_DATA", raising=False)
        yield


@pytest.fixture(scope="module")
def llama_tok():
    return load_model("tiny-llama").tokenizer


@pytest.fixture(scope="module")
def bert_tok():
    return load_model("tiny-bert", kind="classification", num_labels=2).tokenizer


def labels_of(records):
    return collections.Counter(r["label"] for r in records)


# ----------------------------------------------------------------------------- the Bible


def test_bible_text_is_clean():
    verses = bible_verses()
    assert len(verses) == 31_095  # 31,102 minus 7 verses that are only a footnote
    assert verses[0].ref == "Genesis 1:1" and verses[-1].book == "Revelation"
    assert verses[0].text == "In the beginning God created the heavens and the earth."
    assert not any("{" in v.text or "}" in v.text or "  " in v.text for v in verses)
    assert len({v.book for v in verses}) == 66


def test_registry_lists_every_task():
    names = [spec.name for spec in list_tasks()]
    assert names == [
        "bible-testament",
        "bible-pair",
        "bible-lm",
        "sst2",
        "qnli",
        "mnli",
        "qqp",
        "mrpc",
        "c4",
        "wikitext",
    ]
    assert TASKS["qqp"].metric == TASKS["mrpc"].metric == "f1"
    assert TASKS["mnli"].num_labels == 3 and TASKS["bible-lm"].metric == "perplexity"


def test_testament_task_is_balanced_and_disjoint():
    task = load_task("bible-testament")
    assert task.spec.text_fields == ("sentence",)
    for split in data.SPLITS:
        counts = labels_of(task.split(split))
        assert counts[0] == counts[1] > 0
    refs = [{r["ref"] for r in task.split(s)} for s in data.SPLITS]
    assert not (refs[0] & refs[1] or refs[0] & refs[2] or refs[1] & refs[2])
    testament = {v.ref: v.testament for v in bible_verses()}
    assert all(testament[r["ref"]] == ("NT" if r["label"] else "OT") for r in task.train)
    n_new = sum(v.testament == "NT" for v in bible_verses())
    assert sum(task.sizes.values()) == 2 * n_new


def test_pair_labels_say_whether_verses_are_consecutive():
    task = load_task("bible-pair")
    verses = bible_verses()
    position = {v.ref: i for i, v in enumerate(verses)}
    for split in data.SPLITS:
        records = task.split(split)
        counts = labels_of(records)
        assert counts[0] == counts[1] > 0
        for r in records:
            i, j = position[r["ref1"]], position[r["ref2"]]
            assert r["sentence1"] == verses[i].text and r["sentence2"] == verses[j].text
            if r["label"] == 1:
                assert j == i + 1 and verses[i].book == verses[j].book
            else:
                assert (verses[i].book, verses[i].chapter) != (verses[j].book, verses[j].chapter)
    anchors = [r["ref1"] for s in data.SPLITS for r in task.split(s)]
    assert len(anchors) == len(set(anchors))  # each verse anchors one pair at most


def test_lm_task_is_split_by_book():
    task = load_task("bible-lm")
    books = {s: {r["book"] for r in task.split(s)} for s in data.SPLITS}
    assert books["validation"] == set(BIBLE_LM_VALIDATION_BOOKS)
    assert books["test"] == set(BIBLE_LM_TEST_BOOKS)
    assert not books["train"] & (books["validation"] | books["test"])
    assert len(books["train"]) == 66 - len(BIBLE_LM_VALIDATION_BOOKS) - len(BIBLE_LM_TEST_BOOKS)
    assert sum(task.sizes.values()) == 1189  # every chapter is one document
    assert task.train[0]["text"].startswith("In the beginning God created")


def test_bible_tasks_are_the_same_in_every_process():
    """Splits hang on no hash order or global RNG: two interpreters with different hash seeds."""
    code = (
        "import hashlib, json; from coalora.data import load_task\n"
        "t = [load_task(n, max_train=200, max_eval=50) for n in ('bible-testament', 'bible-pair')]\n"
        "print(hashlib.sha256(json.dumps([x.train + x.validation + x.test for x in t]).encode()).hexdigest())"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=dict(os.environ, PYTHONHASHSEED=hash_seed),
            stdout=subprocess.PIPE,
            text=True,
        )
        for hash_seed in ("1", "2")
    ]
    digests = {run.communicate(timeout=120)[0].strip() for run in runs}
    assert all(run.returncode == 0 for run in runs)
    assert len(digests) == 1 and len(digests.pop()) == 64


def test_size_limits_keep_balance_and_are_subsets():
    full = load_task("bible-pair")
    small = load_task("bible-pair", max_train=11, max_eval=6)
    assert small.sizes == {"train": 11, "validation": 6, "test": 6}
    assert sorted(labels_of(small.train).values()) == [5, 6]
    assert labels_of(small.test) == {0: 3, 1: 3}
    assert all(r in full.train for r in small.train)
    assert small.train == load_task("bible-pair", max_train=11, max_eval=6).train
    lm = load_task("bible-lm", max_train=3, max_eval=1)
    assert lm.train == load_task("bible-lm").train[:3]  # documents stay in order
    with pytest.raises(ValueError, match="max_train"):
        load_task("bible-lm", max_train=0)


def test_returned_lists_are_the_callers_own():
    task = load_task("bible-testament")
    task.train.clear()
    assert load_task("bible-testament").train


# ----------------------------------------------------------------------------- local files


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


PAIRS = [
    {"sentence1": f"first {i}", "sentence2": f"second {i}", "label": i % 2, "idx": i}
    for i in range(40)
]


def test_local_jsonl_task_with_all_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PAIRS[:30])
    write_jsonl(tmp_path / "validation.jsonl", PAIRS[30:35])
    write_jsonl(tmp_path / "test.jsonl", PAIRS[35:])
    task = load_task(f"local:{tmp_path}")
    assert task.spec.kind == "classification" and task.spec.text_fields == (
        "sentence1",
        "sentence2",
    )
    assert task.spec.num_labels == 2 and task.spec.metric == "accuracy"
    assert task.sizes == {"train": 30, "validation": 5, "test": 5}
    assert task.test[0] == {"sentence1": "first 35", "sentence2": "second 35", "label": 1}


def test_local_task_without_test_holds_out_validation_from_train(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PAIRS[:30])
    write_jsonl(tmp_path / "validation.jsonl", PAIRS[30:])
    task = load_task(f"local:{tmp_path}")
    assert [r["sentence1"] for r in task.test] == [f"first {i}" for i in range(30, 40)]
    assert len(task.validation) == 3  # 10% of train
    texts = {r["sentence1"] for r in task.train} | {r["sentence1"] for r in task.validation}
    assert texts == {f"first {i}" for i in range(30)} and len(task.train) == 27


def test_local_tsv_with_task_file_and_named_labels(tmp_path):
    rows = ["id\tquestion\tanswer\tgold"] + [
        f'{i}\tq {i}\ta "{i}\tyes' if i % 3 else f"{i}\tq {i}\ta {i}\tno" for i in range(30)
    ]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(rows[:5]) + "\n")
    (tmp_path / "task.yaml").write_text(
        "kind: classification\ntext_fields: [question, answer]\nlabel_field: gold\n"
        'label_names: ["no", "yes"]\nmetric: f1\n'
    )
    task = load_task(f"local:{tmp_path}")
    assert task.spec.label_names == ("no", "yes") and task.spec.metric == "f1"
    assert task.test[1] == {"question": "q 1", "answer": 'a "1', "label": 1}  # quotes are literal
    assert labels_of(task.test) == {0: 2, 1: 2}


def test_local_lm_task(tmp_path, llama_tok):
    docs = [{"text": f"Document number {i} says hello."} for i in range(20)]
    write_jsonl(tmp_path / "train.jsonl", docs)
    write_jsonl(tmp_path / "validation.jsonl", docs[:3])
    task = load_task(f"local:{tmp_path}")
    assert task.spec.kind == "lm" and task.spec.metric == "perplexity"
    ids = lm_token_ids(task, llama_tok, "test")
    assert llama_tok.decode(ids) == "\n\n".join(d["text"] for d in docs[:3])


@pytest.mark.parametrize(
    "files, error, match",
    [
        (
            {"train.jsonl": '{"sentence": "a", "label": 0}\n{"sentence": "b", "label": \n'},
            ValueError,
            r"train\.jsonl:2: not valid JSON",
        ),
        (
            {"train.jsonl": '{"sentence": "a", "label": 0}\n{"label": 1}\n'},
            ValueError,
            r"train\.jsonl record 2: field 'sentence' is missing",
        ),
        (
            {"train.jsonl": '{"sentence": "a", "label": 0}\n{"sentence": "b", "label": "maybe"}\n'},
            ValueError,
            r"train\.jsonl: labels mix class indices and names",
        ),
        (
            {
                "train.jsonl": '{"sentence": "a", "label": "maybe"}\n',
                "task.yaml": 'label_names: ["no", "yes"]\n',
            },
            ValueError,
            r"train\.jsonl record 1: label 'maybe' is not a class index or a known name \(label_names: no, yes\)",
        ),
        (
            {
                "train.jsonl": '{"sentence": "a", "label": 0}\n',
                "task.yaml": "label_names: [no, yes]\n",
            },
            ValueError,
            r"task\.yaml: label_names must be a list of strings \(in YAML quote",
        ),
        (
            {"train.tsv": "sentence\tlabel\na\t0\nb\t1\textra\n"},
            ValueError,
            r"train\.tsv:3: 3 columns where the header has 2",
        ),
        (
            {
                "train.jsonl": '{"sentence": "a", "label": 0}\n',
                "task.yaml": "kind: classification\nepochs: 3\n",
            },
            ValueError,
            r"task\.yaml: unknown key\(s\) epochs",
        ),
        (
            {"train.jsonl": '{"sentence": "a", "label": 0}\n', "task.yaml": "kind: [unclosed\n"},
            ValueError,
            r"task file .*task\.yaml does not parse",
        ),
        (
            {
                "train.jsonl": '{"sentence": "a", "label": 0}\n',
                "task.json": '{"num_labels": 2}',
                "task.yaml": "kind: lm\n",
            },
            ValueError,
            "more than one task file",
        ),
        (
            {"train.jsonl": '{"sentence": "a", "label": 0}\n', "task.yaml": "num_labels: 2\n"},
            ValueError,
            r"validation\.jsonl record 1: label 5 outside 0\.\.1",
        ),
        (
            {"train.jsonl": '{"words": "a", "label": 0}\n'},
            ValueError,
            r"cannot tell the text fields .* add a task\.yaml",
        ),
        (
            {"validation.jsonl": '{"sentence": "a", "label": 0}\n'},
            FileNotFoundError,
            r"has no train\.jsonl or train\.tsv",
        ),
        ({"train.jsonl": "\n"}, ValueError, r"train\.jsonl: no records"),
    ],
)
def test_malformed_local_tasks_name_the_culprit(tmp_path, files, error, match):
    files = {"validation.jsonl": '{"sentence": "v", "label": 5}\n', **files}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(error, match=match) as err:
        load_task(f"local:{tmp_path}")
    assert "\n" not in str(err.value)


def test_missing_local_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="task directory not found"):
        load_task(f"local:{tmp_path / 'absent'}")


def test_named_glue_task_from_original_glue_tsvs(tmp_path, monkeypatch):
    """GLUE's own QNLI archive: string labels map through the task's label names."""

    def tsv(n, offset):
        lines = ["index\tquestion\tsentence\tlabel"]
        lines += [
            f"{i}\tq{i}?\ts{i}.\t{'entailment' if i % 2 else 'not_entailment'}"
            for i in range(offset, offset + n)
        ]
        return "\n".join(lines) + "\n"

    qnli = tmp_path / "qnli"
    qnli.mkdir()
    (qnli / "train.tsv").write_text(tsv(50, 0))
    (qnli / "dev.tsv").write_text(tsv(8, 100))
    (qnli / "test.tsv").write_text(
        "index\tquestion\tsentence\n0\tq?\ts.\n"
    )  # GLUE hides test labels
    with pytest.raises(ValueError, match=r"test\.tsv record 1: no 'label' field"):
        load_task("qnli", data_dir=qnli)
    (qnli / "test.tsv").unlink()
    monkeypatch.setenv("COALORA_DATA", str(tmp_path))
    task = load_task("qnli")
    assert task.spec.metric == "accuracy" and task.spec.source.startswith("local copy")
    assert task.sizes == {"train": 45, "validation": 5, "test": 8}  # GLUE dev is our test
    assert task.test[1] == {"question": "q101?", "sentence": "s101.", "label": 0}  # entailment = 0


def test_named_task_copy_may_only_remap_columns(tmp_path):
    write_jsonl(
        tmp_path / "train.jsonl",
        [{"q1": f"a{i}", "q2": f"b{i}", "is_duplicate": i % 2} for i in range(20)],
    )
    write_jsonl(tmp_path / "validation.jsonl", [{"q1": "x", "q2": "y", "is_duplicate": 1}])
    (tmp_path / "task.yaml").write_text("text_fields: [q1, q2]\nlabel_field: is_duplicate\n")
    task = load_task("qqp", data_dir=tmp_path)
    assert task.test == [{"question1": "x", "question2": "y", "label": 1}]
    assert task.spec.metric == "f1"
    (tmp_path / "task.yaml").write_text("text_fields: [q1, q2]\nmetric: accuracy\n")
    with pytest.raises(ValueError, match="only label_field, label_names, text_fields may be set"):
        load_task("qqp", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["sst2", "mnli", "wikitext", "c4"])
def test_hub_tasks_fail_fast_offline(name):
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as err:
        load_task(name)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert (
        f"task '{name}'" in message and f"$COALORA_DATA/{name}" in message and "\n" not in message
    )


def test_hub_sources_map_onto_our_splits(monkeypatch):
    """With a hub (faked here), GLUE's validation becomes test and validation is held out."""
    import datasets

    from coalora import offline

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(offline, "_hub_reachable", lambda: True)
    calls = []

    def fake_load_dataset(path, name=None, data_files=None, split=None):
        calls.append((path, name, split, data_files))
        n = 50 if split == "train" else 7
        columns = {
            f: [f"{f} {split} {i}" for i in range(n)] for f in ("premise", "hypothesis", "text")
        }
        labels = [-1 if i == 0 else i % 3 for i in range(n)]  # -1: a row with a hidden label
        return datasets.Dataset.from_dict({**columns, "label": labels, "idx": list(range(n))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    mnli = load_task("mnli")
    assert [c[2] for c in calls] == ["train", "validation_matched"]
    assert calls[0][:2] == ("nyu-mll/glue", "mnli")
    assert mnli.sizes == {"train": 45, "validation": 4, "test": 6}
    assert mnli.test[0] == {
        "premise": "premise validation_matched 1",
        "hypothesis": "hypothesis validation_matched 1",
        "label": 1,
    }

    calls.clear()
    c4 = load_task("c4", max_train=10)
    assert calls[0][3]["validation"] == "en/c4-validation.00000-of-00008.json.gz"
    assert c4.sizes == {"train": 10, "validation": 5, "test": 7}
    assert set(c4.train[0]) == {"text"}

    calls.clear()
    wikitext = load_task("wikitext")
    assert [c[2] for c in calls] == ["train", "validation", "test"]
    assert wikitext.sizes == {"train": 50, "validation": 7, "test": 7}


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'glue-sst2'.*local:<directory>"):
        load_task("glue-sst2")


# ----------------------------------------------------------------------------- batches


def assert_right_padded(batch, pad_id):
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    for row, n in zip(range(mask.shape[0]), lengths.tolist(), strict=True):
        assert mask[row, :n].all() and not mask[row, n:].any()
        assert (batch["input_ids"][row, n:] == pad_id).all()
        assert (batch["input_ids"][row, :n] != pad_id).all()
    assert lengths.max() == mask.shape[1]  # padded to the longest row only


def test_classification_batches_are_right_padded_with_the_real_pad(llama_tok):
    task = load_task("bible-testament", max_train=20, max_eval=10)
    batches = classification_batches(task, llama_tok, "train", batch_size=8, max_length=48)
    assert llama_tok.pad_token_id != 0
    assert len(batches) == 3
    seen = []
    for k, batch in enumerate(batches):
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        assert batch["input_ids"].shape[1] <= 48
        assert_right_padded(batch, llama_tok.pad_token_id)
        records = task.train[8 * k : 8 * k + 8]  # seed None: in order
        assert batch["labels"].tolist() == [r["label"] for r in records]
        first = batch["input_ids"][0][batch["attention_mask"][0].bool()]
        assert records[0]["sentence"].startswith(llama_tok.decode(first))
        seen.append(len(batch["labels"]))
    assert seen == [8, 8, 4]


def test_pair_batches_for_bert_and_for_tokenizers_without_sep(bert_tok, llama_tok):
    task = load_task("bible-pair", max_train=16, max_eval=8)
    batch = next(iter(make_batches(task, bert_tok, "validation", 8, 64)))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert_right_padded(batch, bert_tok.pad_token_id)
    assert (batch["token_type_ids"] * (1 - batch["attention_mask"]) == 0).all()
    assert (batch["token_type_ids"].sum(1) > 0).all()  # second sentences are segment 1
    model = load_model("tiny-bert", kind="classification", num_labels=2).model
    assert torch.isfinite(model(**batch).loss)

    batch = next(iter(make_batches(task, llama_tok, "validation", 8, 256)))
    text = llama_tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert text == task.validation[0]["sentence1"] + "\n" + task.validation[0]["sentence2"]
    model = load_model("tiny-llama", kind="classification", num_labels=2).model
    assert torch.isfinite(model(**batch).loss)


def test_lm_batches_are_windows_of_the_token_stream(llama_tok):
    task = load_task("bible-lm", max_train=4, max_eval=2)
    stream = lm_token_ids(task, llama_tok, "train")
    assert llama_tok.decode(stream[:40]).startswith("In the beginning God created")
    batches = lm_batches(task, llama_tok, "train", batch_size=3, max_length=64)
    assert batches.num_examples == len(stream) // 64
    joined = torch.cat([b["input_ids"] for b in batches]).reshape(-1)
    assert torch.equal(joined, stream[: len(joined)])
    batch = batches.batch(0)
    assert batch["input_ids"].shape == (3, 64)
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["attention_mask"].all()
    model = load_model("tiny-llama").model
    assert torch.isfinite(model(**batch).loss)
    with pytest.raises(ValueError, match="fewer than max_length"):
        lm_batches(task, llama_tok, "validation", 1, 10**6)


def test_stream_is_resumable_and_seeded(llama_tok):
    task = load_task("bible-testament", max_train=10, max_eval=4)
    make = lambda seed: classification_batches(task, llama_tok, "train", 4, 32, seed=seed)  # noqa: E731
    batches = make(3)
    stream = [batches.batch(k) for k in range(8)]  # 32 examples: 3.2 epochs
    resumed = make(3).stream(start=5)
    for k in range(5, 8):
        got = next(resumed)
        assert all(torch.equal(got[key], stream[k][key]) for key in got)
    assert all(len(b["labels"]) == 4 for b in stream)  # stream batches are always full
    # The first epoch of the stream is the shuffled one-epoch iteration.
    epoch = list(make(3))
    assert torch.equal(epoch[0]["input_ids"], stream[0]["input_ids"])
    # Every example exactly once per epoch, in a seeded order.
    assert sorted(rows(epoch)) == sorted(rows(make(None)))
    assert len(set(rows(epoch))) == 10
    assert rows(epoch) != rows(make(None))
    assert rows(stream) != rows(make(4).batch(k) for k in range(8))


def rows(batches):
    """The real (unpadded) token sequences of a series of batches."""
    out = []
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            out.append(tuple(ids[mask.bool()].tolist()))
    return out


def test_batch_errors(llama_tok, bert_tok):
    task = load_task("bible-testament", max_train=8, max_eval=4)
    with pytest.raises(ValueError, match="not lm"):
        lm_batches(task, llama_tok, "train", 2, 16)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make_batches(task, llama_tok, "dev", 2, 16)
    with pytest.raises(ValueError, match="max_length"):
        make_batches(task, llama_tok, "train", 2, 1)
    with pytest.raises(ValueError, match="batch_size"):
        make_batches(task, llama_tok, "train", 0, 16)
    no_pad = load_model("tiny-llama").tokenizer
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        make_batches(task, no_pad, "train", 2, 16)
    with pytest.raises(ValueError, match="not classification"):
        classification_batches(load_task("bible-lm", max_train=2), bert_tok, "train", 2, 16)
