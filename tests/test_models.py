"""Base models: tiny seeded models, the packaged MiniLM and SmolLM2, local dirs, offline hub ids."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
import torch

from coalora import models, offline
from coalora.models import (
    MODELS,
    HubUnavailableError,
    list_models,
    load_model,
    weights_hash,
)
from coalora.quant.targets import quantizable_targets


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A private cache per test module: tokenizers are really built, nothing leaks to $HOME."""
    root = tmp_path_factory.mktemp("coalora-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COALORA_CACHE", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root


def test_registry_lists_every_named_model():
    names = [spec.name for spec in list_models()]
    assert names == ["smollm2-135m", "minilm-l6", "tiny-llama", "tiny-bert"]
    assert {spec.family for spec in list_models()} == {"causal-lm", "encoder"}
    assert "Q4_1" in MODELS["smollm2-135m"].description


@pytest.mark.parametrize(
    "name, kind, num_labels",
    [
        ("tiny-llama", "causal-lm", None),
        ("tiny-llama", "classification", 3),
        ("tiny-bert", "classification", 2),
    ],
)
def test_tiny_models_are_seeded(name, kind, num_labels):
    first = load_model(name, kind=kind, num_labels=num_labels, seed=0)
    again = load_model(name, kind=kind, num_labels=num_labels, seed=0)
    other = load_model(name, kind=kind, num_labels=num_labels, seed=1)
    assert weights_hash(first.model) == weights_hash(again.model)
    assert weights_hash(first.model) != weights_hash(other.model)
    assert not first.model.training
    assert all(p.dtype == torch.float32 for p in first.model.parameters())


def test_seeding_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny-llama", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_llama_forward_and_tokenizer():
    loaded = load_model("tiny-llama")
    tok = loaded.tokenizer
    assert tok.pad_token == "<pad>" and tok.eos_token == "<|endoftext|>"
    assert tok.pad_token_id != 0 and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right"
    text = "In the beginning God created the heavens and the earth."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text  # byte-level BPE is lossless
    assert len(ids) < len(text) / 2  # and merges real subwords
    batch = tok([text, "Jesus wept."], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = loaded.model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (*batch["input_ids"].shape, len(tok))
    assert torch.isfinite(out.loss)


def test_tiny_bert_classification_forward_and_tokenizer():
    loaded = load_model("tiny-bert", kind="classification", num_labels=2)
    tok = loaded.tokenizer
    for special in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"):
        assert special in tok.get_vocab()
    enc = tok("The LORD is my shepherd", "I shall lack nothing.")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert "lord" in tokens  # lower-cased WordPiece
    first_sep = tokens.index("[SEP]")
    assert set(enc["token_type_ids"][: first_sep + 1]) == {0}
    assert set(enc["token_type_ids"][first_sep + 1 :]) == {1}
    batch = tok(["a", "b c d"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_tiny_tokenizers_are_built_identically(tmp_path, monkeypatch):
    """The WordPiece trainer numbers tokens in hash order; the build renumbers them."""
    vocabs = []
    for run in range(2):
        monkeypatch.setenv("COALORA_CACHE", str(tmp_path / str(run)))
        vocabs.append(
            {
                name: load_model(name, "classification", 2).tokenizer.get_vocab()
                for name in ("tiny-llama", "tiny-bert")
            }
        )
    assert vocabs[0] == vocabs[1]
    assert len(vocabs[0]["tiny-bert"]) == len(vocabs[0]["tiny-llama"]) == models.TINY_VOCAB_SIZE


@pytest.mark.parametrize("kind", ["causal-lm", "classification"])
def test_quantizable_targets_of_tiny_llama(kind):
    model = load_model("tiny-llama", kind=kind, num_labels=2).model
    targets = quantizable_targets(model)
    layers = models.TINY_LLAMA_SHAPE["num_hidden_layers"]
    assert len(targets) == 7 * layers
    per_layer = [t.module_type for t in targets if t.layer_index == 0]
    assert per_layer == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    shapes = {t.module_type: t.shape for t in targets if t.layer_index == 1}
    assert shapes["k_proj"] == (32, 64)  # 2 KV heads of dim 16: grouped-query attention
    assert shapes["down_proj"] == (64, 128)


def test_quantizable_targets_of_tiny_bert():
    model = load_model("tiny-bert", kind="classification", num_labels=2).model
    targets = quantizable_targets(model)
    assert len(targets) == 6 * models.TINY_BERT_SHAPE["num_hidden_layers"]
    assert {t.module_type for t in targets} == {
        "query",
        "key",
        "value",
        "attn_output",
        "intermediate",
        "ffn_output",
    }


def test_minilm_loads_from_its_package_and_embeds_meaning():
    loaded = load_model("minilm-l6", kind="classification", num_labels=3, seed=0)
    model, tok = loaded.model, loaded.tokenizer
    assert 22.6e6 < sum(p.numel() for p in model.parameters()) < 22.8e6
    assert len(quantizable_targets(model)) == 6 * 6
    assert tok.pad_token == "[PAD]" and "token_type_ids" in tok.model_input_names
    sentences = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "Stock markets fell sharply today.",
    ]
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
        logits = model(**batch).logits
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # Pretrained sentence embeddings: the paraphrase is far closer than the unrelated sentence.
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3
    assert logits.shape == (3, 3)
    same = load_model("minilm-l6", kind="classification", num_labels=3, seed=0).model
    other = load_model("minilm-l6", kind="classification", num_labels=3, seed=1).model
    assert torch.equal(same.classifier.weight, model.classifier.weight)
    assert not torch.equal(other.classifier.weight, model.classifier.weight)
    assert torch.equal(
        other.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight
    )


def test_encoders_refuse_causal_lm_and_bad_arguments():
    with pytest.raises(ValueError, match="minilm-l6 is an encoder"):
        load_model("minilm-l6")
    with pytest.raises(ValueError, match="num_labels"):
        load_model("tiny-bert", kind="classification")
    with pytest.raises(ValueError, match="unknown model kind 'seq2seq'"):
        load_model("tiny-llama", kind="seq2seq")


def test_local_directory_round_trip(tmp_path):
    original = load_model("tiny-llama", seed=5)
    original.model.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.name == str(tmp_path)
    assert weights_hash(loaded.model) == weights_hash(original.model)
    assert loaded.tokenizer.pad_token_id == original.tokenizer.pad_token_id
    as_classifier = load_model(str(tmp_path), kind="classification", num_labels=2, seed=0)
    assert as_classifier.model.config.pad_token_id == original.tokenizer.pad_token_id


def test_missing_local_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found: ./no/such/model"):
        load_model("./no/such/model")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(str(tmp_path))


def test_offline_hub_id_fails_fast_with_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as err:
        load_model("some-org/not-cached-model")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "'some-org/not-cached-model'" in message and "local directory" in message
    assert "\n" not in message


def test_unreachable_hub_counts_as_offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(offline, "_hub_reachable", lambda: False)
    assert offline.hub_offline_reason() == "the hub is unreachable from this machine"
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="unreachable"):
        load_model("some-org/not-cached-model", kind="classification", num_labels=2)
    assert time.monotonic() - start < 10


def test_weights_hash_sees_every_change():
    model = load_model("tiny-bert", kind="classification", num_labels=2).model
    before = weights_hash(model)
    assert len(before) == 64
    with torch.no_grad():
        model.classifier.bias[0] += 1e-6
    assert weights_hash(model) != before


def test_interrupted_cache_build_leaves_nothing_that_looks_finished(tmp_path):
    target = tmp_path / "models" / "thing"

    def build(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. a job killed mid-conversion

    with pytest.raises(KeyboardInterrupt):
        models._cached_dir(target, {"v": 1}, build)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary directory is gone too

    calls = []

    def good(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    assert models._cached_dir(target, {"v": 1}, good) == target
    assert models._cached_dir(target, {"v": 1}, good) == target
    assert len(calls) == 1  # reused
    assert json.loads((target / "coalora_source.json").read_text()) == {"v": 1}
    models._cached_dir(target, {"v": 2}, good)  # another source: rebuilt
    assert len(calls) == 2


def test_concurrent_builder_keeps_the_first_result(tmp_path):
    target = tmp_path / "entry"

    def build(out: Path) -> None:
        # Another process finishes first while this one is still building.
        target.mkdir()
        (target / "winner").write_text("first")
        (out / "winner").write_text("second")

    models._publish_dir(build, target)
    assert (target / "winner").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


@pytest.mark.slow
def test_smollm2_converts_once_and_loads(cache):
    start = time.monotonic()
    loaded = load_model("smollm2-135m")
    converted_in = time.monotonic() - start
    directory = cache / "models" / "smollm2-135m"
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list(directory.glob("*.gguf"))
    model, tok = loaded.model, loaded.tokenizer
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert len(quantizable_targets(model)) == 30 * 7
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.pad_token_id == 2
    text = (
        "In the beginning God created the heavens and the earth. The earth was formless and empty."
    )
    batch = tok(text, return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert torch.exp(loss) < 100  # a trained LM; a random one is near the vocabulary size (49,152)

    mtime = (directory / "model.safetensors").stat().st_mtime_ns
    start = time.monotonic()
    again = load_model("smollm2-135m")
    assert time.monotonic() - start < converted_in / 3  # a plain from_pretrained of the cache
    assert (directory / "model.safetensors").stat().st_mtime_ns == mtime
    assert weights_hash(again.model) == weights_hash(model)


@pytest.mark.slow
def test_smollm2_conversion_parsing_the_gguf_once_gives_the_same_files(
    cache, tmp_path, monkeypatch
):
    """The conversion memoizes transformers' GGUF parsing (models._gguf_parsed_once); the
    directory it writes is byte for byte the one of transformers' own, unmemoized path."""
    import gguf

    real_reader = gguf.GGUFReader
    load_model("smollm2-135m")  # converted once into the module's cache (memoized)
    assert gguf.GGUFReader is real_reader  # restored after the conversion
    memoized = cache / "models" / "smollm2-135m"

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_gguf_parsed_once", contextlib.nullcontext)
    plain = models.smollm2_dir()
    assert plain == tmp_path / "models" / "smollm2-135m"
    names = sorted(p.name for p in memoized.iterdir())
    assert names == sorted(p.name for p in plain.iterdir()) and "model.safetensors" in names
    for name in names:
        assert (memoized / name).read_bytes() == (plain / name).read_bytes(), name
