"""Evaluation: metrics against hand computations, lm-eval on the in-memory tiny LLaMA, the
results schema, many configurations per loaded model, atomic writes, offline behaviour."""

from __future__ import annotations

import argparse
import json
import logging
import math
import socket
import time
from types import SimpleNamespace

import pytest
import torch

from coalora import models, runner
from coalora.data import BIBLE_LM_TEST_BOOKS, bible_verses
from coalora.evaluate import (
    BareBase,
    EvalSettings,
    Trained,
    classification_metrics,
    evaluate_configs,
    evaluate_from_cli,
    perplexity,
    read_result,
    read_results,
    window_length,
    write_result,
)
from coalora.evaluate.lm_eval_tasks import (
    HFLM_LOGGER,
    IN_MEMORY_MODEL_WARNINGS,
    LMEvalSuite,
    _drop_in_memory_model_warnings,
    bible_cloze_records,
    bible_mc_records,
    embedded_tasks_dir,
)
from coalora.evaluate.results import FIELDS, MACHINE_FIELDS
from coalora.machine import machine_info
from coalora.models import HubUnavailableError, load_model
from coalora.quant import ModelQConfig, QuantConfig, quantizable_targets

FAST = dict(limit=2, window=64, batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A private cache (tokenizers, embedded lm-eval tasks) and no hub, for the whole module."""
    root = tmp_path_factory.mktemp("coalora-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COALORA_CACHE", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        yield root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A CoA-LoRA checkpoint of tiny-llama on bible-lm, trained on the ILP configurations of
    budgets 3.0 and 4.0 (a couple of steps: the numbers only need to be real, not good)."""
    from coalora.runner import run_training
    from coalora.train import TrainSettings

    out = tmp_path_factory.mktemp("ckpt") / "coalora"
    settings = TrainSettings(steps=2, batch_size=2, max_length=16, r=4, lr=1e-2)
    return run_training(
        model="tiny-llama",
        task="bible-lm",
        method="coalora",
        settings=settings,
        out=out,
        budgets=[3.0, 4.0],
        max_train=8,
        progress=False,
    )


@pytest.fixture(scope="module")
def llama_targets():
    return quantizable_targets(load_model("tiny-llama").model)


# ============================================================================ perplexity


class BigramModel(torch.nn.Module):
    """Logits of position t depend only on token t, through a fixed table."""

    def __init__(self, table: torch.Tensor, max_positions: int = 10_000):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=max_positions)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def test_perplexity_equals_a_hand_computation_on_a_toy_model():
    torch.manual_seed(0)
    vocab = 5
    table = torch.randn(vocab, vocab, dtype=torch.float64)
    stream = torch.randint(0, vocab, (23,))
    model = BigramModel(table)
    result = perplexity(model, stream, window=5, batch_size=2)

    # By hand: 4 windows of 5 tokens (3 tokens dropped); inside a window, token t + 1 is
    # predicted from token t; the first token of a window is never predicted.
    nll, count, per_window = 0.0, 0, []
    for w in range(4):
        tokens = stream[w * 5 : (w + 1) * 5].tolist()
        start = nll
        for prev, nxt in zip(tokens[:-1], tokens[1:], strict=True):
            row = table[prev].tolist()
            log_norm = math.log(sum(math.exp(x) for x in row))
            nll += log_norm - row[nxt]
            count += 1
        per_window.append((nll - start) / 4)
    assert count == 16
    assert result.num_windows == 4 and result.window == 5
    assert result.predicted_tokens == 16 and result.dropped_tokens == 3
    assert result.total_tokens == 23
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-9)
    # The per-window mean NLLs (the record's per-example outcomes) in window order.
    assert result.window_nll == pytest.approx(per_window, rel=1e-9)
    assert "window_nll" not in result.protocol()

    # A model that knows nothing (uniform logits) has perplexity = vocabulary size.
    uniform = BigramModel(torch.zeros(vocab, vocab))
    assert perplexity(uniform, stream, window=5).perplexity == pytest.approx(vocab)
    # max_windows scores a prefix of the windows and says so.
    first = perplexity(model, stream, window=5, max_windows=1)
    assert first.num_windows == 1 and first.dropped_tokens == 18


def test_perplexity_window_is_capped_and_checked():
    model = BigramModel(torch.zeros(3, 3), max_positions=16)
    assert window_length(model, 2048) == 16
    assert window_length(model, 8) == 8
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, torch.zeros(10, dtype=torch.long), window=16)
    with pytest.raises(ValueError, match="window"):
        window_length(model, 1)


# ============================================================================ classification


def test_classification_metrics_by_hand():
    # tp = 2 (idx 0, 4), fp = 1 (idx 1), fn = 1 (idx 3): F1 = 2*2 / (2*2 + 1 + 1).
    metrics = classification_metrics([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], num_labels=2)
    assert metrics == {"accuracy": pytest.approx(3 / 5), "f1": pytest.approx(4 / 6)}
    # Three labels: macro F1. Class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 1 fp 1 fn 0 -> 2/3;
    # class 2: tp 1 fp 0 fn 0 -> 1.
    metrics = classification_metrics([0, 1, 1, 2], [0, 0, 1, 2], num_labels=3)
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError, match="predictions"):
        classification_metrics([1], [1, 0], num_labels=2)


def test_tiny_bert_metrics_equal_predicting_one_example_at_a_time(tmp_path):
    from coalora.data import load_task

    settings = EvalSettings(limit=20, batch_size=6, max_length=32)
    [record] = evaluate_configs(
        BareBase("tiny-bert"), [None], "bible-testament", [tmp_path / "fp.json"], settings
    )
    assert record == read_result(tmp_path / "fp.json")
    assert record["method"] == "none" and record["config_name"] == "full-precision"
    assert record["quantizer"] == "none" and record["avg_bits"] == 32.0
    assert record["primary_metric"] == "accuracy" and record["higher_is_better"] is True
    assert record["protocol"]["n_examples"] == 20 and record["protocol"]["split"] == "test"

    # By hand: the same seeded model, one unpadded example at a time, counted in plain Python.
    task = load_task("bible-testament", max_eval=20)
    loaded = load_model("tiny-bert", kind="classification", num_labels=2, seed=0)
    preds, labels = [], []
    with torch.no_grad():
        for r in task.test:
            enc = loaded.tokenizer(
                r["sentence"], truncation=True, max_length=32, return_tensors="pt"
            )
            preds.append(int(loaded.model(**enc).logits.argmax(-1)))
            labels.append(r["label"])
    correct = sum(p == y for p, y in zip(preds, labels, strict=True))
    tp = sum(p == 1 and y == 1 for p, y in zip(preds, labels, strict=True))
    fp = sum(p == 1 and y == 0 for p, y in zip(preds, labels, strict=True))
    fn = sum(p == 0 and y == 1 for p, y in zip(preds, labels, strict=True))
    assert record["metrics"]["accuracy"] == pytest.approx(correct / 20)
    assert record["metrics"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)


# ============================================================================ lm-eval


def test_embedded_multiple_choice_data_is_deterministic_and_well_formed():
    records = bible_mc_records()
    assert records == bible_mc_records()
    assert len(records) == 644  # docs/tasks.md gives the count
    # Only bible-lm's test books: a model fine-tuned on bible-lm never saw an item.
    assert {r["ref"].rsplit(" ", 1)[0] for r in records} == set(BIBLE_LM_TEST_BOOKS)
    for r in records[:50]:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert 0 <= r["label"] < 4
    labels = [r["label"] for r in records]
    assert all(labels.count(k) > len(labels) / 8 for k in range(4))  # gold position varies


def test_embedded_cloze_data_is_deterministic_and_well_formed():
    records = bible_cloze_records()
    assert records == bible_cloze_records()
    assert len(records) == 444  # docs/tasks.md gives the count
    assert {r["ref"].rsplit(" ", 1)[0] for r in records} == set(BIBLE_LM_TEST_BOOKS)
    verses = {v.ref: v.text for v in bible_verses()}
    for r in records:
        choices = r["choices"]
        assert len(choices) == 4 and len(set(choices)) == 4
        # " word": one space, then a short lower-case word (no punctuation in any choice).
        assert all(c[0] == " " and c[1:].isalpha() and c[1:].islower() for c in choices)
        assert all(len(c) <= 7 for c in choices)
        # The gold choice is the verse's own last word; only punctuation follows it there.
        rest = verses[r["ref"]].removeprefix(r["context"] + choices[r["label"]])
        assert rest != verses[r["ref"]] and not any(ch.isalnum() for ch in rest)
    labels = [r["label"] for r in records]
    assert all(labels.count(k) > len(labels) / 8 for k in range(4))  # gold position varies


def test_embedded_cloze_scores_each_choice_as_the_word_after_one_space():
    """lm-eval's own requests: (the verse without its last word, " word"), with no second
    space from the task's target delimiter."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(embedded_tasks_dir()), include_defaults=False)
    task = manager.load(["bible_cloze"])["tasks"]["bible_cloze"]
    task.build_all_requests(limit=2)
    docs = bible_cloze_records()[:2]
    expected = [(d["context"], c) for d in docs for c in d["choices"]]
    assert sorted(i.arguments for i in task.instances) == sorted(expected)


def test_lm_eval_scores_one_row_per_cloze_context_of_one_token_choices(monkeypatch):
    """HFLM's logits cache scores all one-token continuations of a context from one forward
    row (a continuation of n tokens needs a row of its own unless it shares its first n - 1
    tokens): what makes bible_cloze cheap. Counted on tiny-llama's tokenizer, whose small
    vocabulary splits some of the words."""
    from lm_eval.models.huggingface import HFLM

    rows = []
    model_call = HFLM._model_call

    def counting_model_call(self, inps, *rest, **kwargs):
        rows.append(inps.shape[0])
        return model_call(self, inps, *rest, **kwargs)

    monkeypatch.setattr(HFLM, "_model_call", counting_model_call)
    loaded = load_model("tiny-llama")
    tok = loaded.tokenizer
    limit = 12
    metrics, _ = LMEvalSuite(["bible_cloze"], batch_size=5).run(loaded.model, tok, limit)
    assert set(metrics) == {"lm_eval/bible_cloze/acc"}
    rows_per_doc = []
    for doc in bible_cloze_records()[:limit]:
        context = tok.encode(doc["context"])
        prefixes = set()
        for choice in doc["choices"]:
            continuation = tok.encode(doc["context"] + choice)[len(context) :]
            prefixes.add(tuple(continuation[:-1]))
        rows_per_doc.append(len(prefixes))
    assert sum(rows) == sum(rows_per_doc) < 4 * limit  # fewer rows than choices


def test_lm_eval_scores_the_in_memory_model_like_a_hand_computation(tmp_path):
    settings = EvalSettings(limit=4, window=64, batch_size=3)
    [record] = evaluate_configs(
        BareBase("tiny-llama"), [None], "bible-lm", [tmp_path / "r.json"], settings
    )
    metrics = record["metrics"]
    for name in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert metrics[f"lm_eval/bible_ppl/{name}"] > 0
    # lm-eval's own identity between its two rolling metrics.
    assert metrics["lm_eval/bible_ppl/bits_per_byte"] == pytest.approx(
        math.log2(metrics["lm_eval/bible_ppl/byte_perplexity"])
    )
    lm_eval = record["protocol"]["lm_eval"]
    assert lm_eval["lm_eval_version"] == "0.4.13"
    assert lm_eval["batch_size"] == 3 and lm_eval["limit"] == 4
    for task in ("bible_ppl", "bible_mc", "bible_cloze"):
        assert lm_eval["tasks"][task]["version"] == 1.0
        assert lm_eval["tasks"][task]["n_shot"] == 0
        assert lm_eval["tasks"][task]["n_samples"]["effective"] == 4

    # bible_mc by hand: log-likelihood of " " + choice after the context, summed over the
    # continuation's tokens; acc takes the arg-max, acc_norm divides by the choice's length.
    loaded = load_model("tiny-llama")
    tok = loaded.tokenizer
    docs = [json.loads(line) for line in (embedded_tasks_dir() / "bible_mc.jsonl").open()][:4]
    acc = acc_norm = 0
    with torch.no_grad():
        for doc in docs:
            lls = []
            for choice in doc["choices"]:
                context = tok.encode(doc["context"])
                whole = tok.encode(doc["context"] + " " + choice)
                logprobs = torch.log_softmax(loaded.model(torch.tensor([whole])).logits[0], -1)
                lls.append(
                    sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole)))
                )
            acc += max(range(4), key=lambda k: lls[k]) == doc["label"]
            norm = [ll / len(c) for ll, c in zip(lls, doc["choices"], strict=True)]
            acc_norm += max(range(4), key=lambda k: norm[k]) == doc["label"]
    assert metrics["lm_eval/bible_mc/acc"] == pytest.approx(acc / 4)
    assert metrics["lm_eval/bible_mc/acc_norm"] == pytest.approx(acc_norm / 4)

    # bible_cloze by hand: log-likelihood of the choice (" word") right after the context.
    docs = [json.loads(line) for line in (embedded_tasks_dir() / "bible_cloze.jsonl").open()][:4]
    acc = 0
    with torch.no_grad():
        for doc in docs:
            context = tok.encode(doc["context"])
            lls = []
            for choice in doc["choices"]:
                whole = tok.encode(doc["context"] + choice)
                logprobs = torch.log_softmax(loaded.model(torch.tensor([whole])).logits[0], -1)
                lls.append(
                    sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole)))
                )
            acc += max(range(4), key=lambda k: lls[k]) == doc["label"]
    assert metrics["lm_eval/bible_cloze/acc"] == pytest.approx(acc / 4)
    assert "lm_eval/bible_cloze/acc_norm" not in metrics  # one-token choices: acc only


def test_lm_eval_of_an_in_memory_model_logs_neither_hflm_warning():
    """HFLM's two warnings about being given a model object (what every evaluation here
    does) are dropped; the filter lets every other record of that logger through."""

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    # A handler on HFLM's own logger sees what its filters let through, whether or not
    # lm-eval's own logging set-up stops propagation to the root logger.
    collect = Collect()
    hflm_logger = logging.getLogger(HFLM_LOGGER)
    hflm_logger.addHandler(collect)
    try:
        loaded = load_model("tiny-llama")
        metrics, _ = LMEvalSuite(["bible_mc"]).run(loaded.model, loaded.tokenizer, limit=2)
        hflm_logger.warning("another warning")
    finally:
        hflm_logger.removeHandler(collect)
    assert "lm_eval/bible_mc/acc" in metrics
    assert collect.messages == ["another warning"]  # only the one logged after HFLM was built
    assert not hflm_logger.filters  # the filter was only there while HFLM was built
    for text in IN_MEMORY_MODEL_WARNINGS:
        record = logging.LogRecord(HFLM_LOGGER, logging.WARNING, "", 0, text + " more", (), None)
        assert not _drop_in_memory_model_warnings(record)
    other = logging.LogRecord(HFLM_LOGGER, logging.WARNING, "", 0, "other", (), None)
    assert _drop_in_memory_model_warnings(other)


def test_embedded_evaluation_never_touches_the_network(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    records = evaluate_configs(
        BareBase("tiny-llama"), [None], "bible-lm", None, EvalSettings(limit=2, window=32)
    )
    assert records[0]["metrics"]["lm_eval/bible_mc/acc"] >= 0


def test_a_users_local_lm_eval_task_runs_from_an_include_directory(tmp_path):
    # The documented way to give data to a task offline: YAML over local JSONL.
    data = tmp_path / "colours.jsonl"
    docs = [
        {"q": "The sky is", "choices": ["blue", "green"], "label": 0},
        {"q": "Grass is", "choices": ["red", "green"], "label": 1},
    ]
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "colours.yaml").write_text(
        "task: my_colours\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    loaded = load_model("tiny-llama")
    suite = LMEvalSuite(["my_colours"], include=[tmp_path], batch_size=2)
    metrics, protocol = suite.run(loaded.model, loaded.tokenizer)
    assert set(metrics) == {"lm_eval/my_colours/acc"}
    assert protocol["tasks"]["my_colours"]["n_samples"]["effective"] == 2
    with pytest.raises(FileNotFoundError, match="include directory"):
        LMEvalSuite(["my_colours"], include=[tmp_path / "missing"])


@pytest.mark.slow
def test_hub_only_lm_eval_task_offline_is_a_one_line_error():
    # Slow: naming a registry task makes lm-eval index its ~15k task YAMLs (~15 s here).
    started = time.perf_counter()
    with pytest.raises(HubUnavailableError) as err:
        LMEvalSuite(["hellaswag"]).prepare()
    message = str(err.value)
    assert "'hellaswag'" in message and "--lm-eval-include" in message and "\n" not in message
    with pytest.raises(ValueError, match="unknown lm-eval task 'no_such_task'"):
        LMEvalSuite(["no_such_task"]).prepare()
    assert time.perf_counter() - started < 90  # no retries against an absent hub


# ============================================================================ many configurations


def test_many_configurations_share_one_loaded_model(
    checkpoint, llama_targets, monkeypatch, tmp_path
):
    unseen = ModelQConfig.uniform(llama_targets, QuantConfig(2, 8, "fp32", 64, 256), name="u2")
    unseen.save(tmp_path / "u2.json")
    calls = []
    real_load = models.load_model
    counted = lambda *a, **k: calls.append(a) or real_load(*a, **k)  # noqa: E731
    monkeypatch.setattr(runner, "load_model", counted)  # where load_trained loads the model

    # Budget 3.0 twice: switching to other configurations and back must give the same numbers.
    items = [3.0, 4.0, tmp_path / "u2.json", 3.0]
    outs = [tmp_path / f"{i}.json" for i in range(4)]
    records = evaluate_configs(Trained(checkpoint), items, None, outs, EvalSettings(**FAST))
    assert len(calls) == 1  # load_trained once, then only in-memory switching

    names = [r["config_name"] for r in records]
    assert names[0] == names[3] and names[0].startswith("ilp-3") and names[2] == "u2"
    assert [r["budget"] for r in records] == [3.0, 4.0, None, 3.0]
    assert [r["seen"] for r in records] == [True, True, False, True]
    assert records[0]["metrics"] == records[3]["metrics"]
    # lm-eval scored the live model: its numbers move with the configuration.
    ppl = [r["metrics"]["lm_eval/bible_ppl/byte_perplexity"] for r in records]
    assert ppl[0] != ppl[1] != ppl[2]
    for record, out in zip(records, outs, strict=True):
        assert read_result(out) == record
        assert record["method"] == "coalora" and record["model"] == "tiny-llama"
        assert record["train_steps"] == 2 and record["train_seconds"] > 0
        assert record["hashes"]["checkpoint"] is not None
        assert record["protocol"]["perplexity"]["window"] == 64
        assert record["protocol"]["perplexity"]["num_windows"] == 2
        assert record["setup_seconds"] >= 0 and record["eval_seconds"] > 0
    assert records[0]["hashes"]["qconfig"] == records[3]["hashes"]["qconfig"]
    assert records[0]["hashes"]["qconfig"] != records[1]["hashes"]["qconfig"]

    frame = read_results(outs)
    assert len(frame) == 4 and list(frame["config_name"]) == names
    assert "metrics.perplexity" in frame and "metrics.lm_eval/bible_mc/acc" in frame
    assert list(frame["primary_value"]) == [r["metrics"]["perplexity"] for r in records]


def test_the_driver_refuses_what_its_source_cannot_give(checkpoint, tmp_path):
    with pytest.raises(TypeError, match="Trained"):
        evaluate_configs(checkpoint, [3.0])  # a path, not a source
    with pytest.raises(ValueError, match="2 output paths for 1 configurations"):
        evaluate_configs(Trained(checkpoint), [3.0], out_paths=["a.json", "b.json"])
    with pytest.raises(ValueError, match="quantized configurations only"):
        evaluate_configs(
            Trained(checkpoint), [3.0, None], out_paths=[tmp_path / "a", tmp_path / "b"]
        )
    with pytest.raises(ValueError, match="same output file"):
        evaluate_configs(BareBase("tiny-llama"), [None, 3.0], "bible-lm", [tmp_path / "a.json"] * 2)
    with pytest.raises(ValueError, match="no task of its own"):
        evaluate_configs(BareBase("tiny-llama"), [None])
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_cli_function_writes_one_file_per_configuration(
    checkpoint, llama_targets, tmp_path, capsys
):
    for b, name in ((2, None), (4, "four-bit")):
        mqc = ModelQConfig.uniform(llama_targets, QuantConfig(b, 8, "fp32", 64, 256), name=name)
        mqc.save(tmp_path / f"uniform{b}.json")
    args = argparse.Namespace(
        checkpoint=str(checkpoint),
        budget=None,
        qconfig=None,
        qconfigs=[str(tmp_path / "uniform2.json"), str(tmp_path / "uniform4.json")],
        task=None,
        out=None,
        out_dir=str(tmp_path / "results"),
        limit=2,
        lm_eval_tasks=[],  # perplexity only
        window=32,
    )
    evaluate_from_cli(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("wrote ") for line in lines)
    # Files follow the qconfig files' stems; config_name is the configuration's name, if any.
    for b, name in ((2, "uniform2"), (4, "four-bit")):
        record = read_result(tmp_path / "results" / f"uniform{b}.json")
        assert record["config_name"] == name
        assert set(record["metrics"]) == {"perplexity"}
        assert "lm_eval" not in record["protocol"]

    args.qconfig, args.out = str(tmp_path / "uniform2.json"), str(tmp_path / "x.json")
    with pytest.raises(ValueError, match="exactly one of --budget"):
        evaluate_from_cli(args)

    # The bare base model, unquantized: the full-precision reference row.
    base = argparse.Namespace(
        model="tiny-llama",
        full_precision=True,
        task="bible-lm",
        out=str(tmp_path / "fp.json"),
        limit=1,
        lm_eval_tasks=[],
        window=32,
    )
    evaluate_from_cli(base)
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'fp.json'}: none full-precision")
    record = read_result(tmp_path / "fp.json")
    assert record["hashes"]["checkpoint"] is None and record["seen"] is None
    assert (
        record["hashes"]["base_weights"]
        == json.loads((checkpoint / "manifest.json").read_text())["base_weights_hash"]
    )


# ============================================================================ results files


@pytest.fixture(scope="module")
def valid_record(tmp_path_factory):
    path = tmp_path_factory.mktemp("valid") / "r.json"
    settings = EvalSettings(limit=1, window=32, lm_eval_tasks=[])
    evaluate_configs(BareBase("tiny-llama"), [None], "bible-lm", [path], settings)
    return read_result(path)


@pytest.mark.parametrize("missing", sorted(FIELDS))
def test_reader_rejects_a_file_missing_a_field(valid_record, tmp_path, missing):
    broken = {k: v for k, v in valid_record.items() if k != missing}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=rf"{path}.*{missing!r}"):
        read_result(path)
    with pytest.raises(ValueError, match=rf"{path}.*{missing!r}"):
        read_results([path])


def test_reader_rejects_wrong_values(valid_record, tmp_path):
    path = tmp_path / "bad.json"
    for change, field in [
        ({"avg_bits": "3"}, "avg_bits"),
        ({"quantizer": "fp4"}, "quantizer"),
        ({"primary_metric": "accuracy"}, "primary_metric"),
        ({"hashes": {"qconfig": "x", "base_weights": "y", "checkpoint": None}}, "hashes.qconfig"),
        ({"surprise": 1}, "surprise"),
    ]:
        path.write_text(json.dumps({**valid_record, **change}))
        with pytest.raises(ValueError, match=field):
            read_result(path)


def test_records_and_manifests_name_the_machine(valid_record, checkpoint):
    machine = valid_record["machine"]
    assert list(machine) == list(MACHINE_FIELDS)
    assert machine == machine_info(valid_record["protocol"]["device"])
    assert all(isinstance(machine[k], str) for k in ("cpu", "arch", "blas"))
    assert isinstance(machine["isa"], list) and all(isinstance(x, str) for x in machine["isa"])
    assert isinstance(machine["torch_threads"], int)
    assert machine["torch_threads"] == valid_record["protocol"]["threads"]
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["machine"] == machine_info("cpu")  # the fixture trains on the CPU


def test_a_record_without_a_machine_still_reads(valid_record, tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({k: v for k, v in valid_record.items() if k != "machine"}))
    assert "machine" not in read_result(path)
    assert read_results([path])["machine"].tolist() == [None]  # unknown
    assert read_results([path, write_result(tmp_path / "new.json", valid_record)])[
        "machine"
    ].tolist() == [None, valid_record["machine"]]


def test_reader_rejects_a_malformed_machine(valid_record, tmp_path):
    path = tmp_path / "bad.json"
    machine = valid_record["machine"]
    for change, message in [
        ("x86", "field 'machine' must be an object"),
        ({**machine, "isa": ["avx512f", "avx2"]}, "field 'machine.isa' must be a sorted list"),
        ({**machine, "isa": ["avx9000"]}, "field 'machine.isa' must be"),
        ({**machine, "torch_threads": "2"}, "field 'machine.torch_threads' must be"),
        ({**machine, "gpu": 1}, "field 'machine.gpu' must be a string or null"),
        ({k: v for k, v in machine.items() if k != "blas"}, "missing field 'machine.blas'"),
        ({**machine, "ram": 1}, "unknown field.*'machine.ram'"),
    ]:
        path.write_text(json.dumps({**valid_record, "machine": change}))
        with pytest.raises(ValueError, match=rf"{path}: {message}"):
            read_result(path)


def test_results_are_written_atomically(valid_record, tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_result(path, valid_record)
    before = path.read_text()

    def crash_half_way(self, text, *args, **kwargs):
        with open(self, "w") as handle:
            handle.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr("pathlib.Path.write_text", crash_half_way)
    changed = {**valid_record, "seed": 7}
    with pytest.raises(OSError, match="disk full"):
        write_result(path, changed)
    with pytest.raises(OSError, match="disk full"):
        write_result(tmp_path / "new.json", changed)
    monkeypatch.undo()
    assert path.read_text() == before  # the old result is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no partial files
    # An invalid record is never written.
    with pytest.raises(ValueError, match="missing field 'seed'"):
        write_result(
            tmp_path / "invalid.json", {k: v for k, v in valid_record.items() if k != "seed"}
        )
    assert not (tmp_path / "invalid.json").exists()


def test_lm_eval_limit_caps_lm_eval_documents_apart_from_the_perplexity_windows():
    # A causal experiment may want few perplexity windows but hundreds of lm-eval items.
    settings = EvalSettings(limit=1, lm_eval_limit=3, window=32, lm_eval_tasks=["bible_cloze"])
    (record,) = evaluate_configs(BareBase("tiny-llama"), [None], "bible-lm", None, settings)
    assert len(record["per_example"]["window_nll"]) == 1
    assert record["protocol"]["lm_eval"]["limit"] == 3
    with pytest.raises(ValueError, match="lm_eval_limit"):
        EvalSettings(lm_eval_limit=0)
