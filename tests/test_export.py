"""Deployment fold: an exported adapter, loaded by plain peft on a freshly quantized base,
reproduces the configuration-aware forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file

from coalora.export import (
    export_peft_adapter,
    fold_into_lora,
    folded_adapter_state,
    load_peft_adapter,
)
from coalora.lora import inject_lora
from coalora.mapper import CoALoRA, ConfigAwareMapper
from coalora.quant import ALL_OPTIONS, ModelQConfig, QuantizedBase, apply_qconfig

from tiny_models import tiny_bert, tiny_llama, tiny_llama_classifier, tiny_roberta

INPUT_IDS = torch.tensor([[1, 5, 9, 13, 2, 40, 33, 7], [3, 3, 60, 21, 8, 0, 11, 19]])


BUILDERS = {
    "llama": (tiny_llama, "CAUSAL_LM"),
    "bert": (tiny_bert, "SEQ_CLS"),
    "llama-cls": (tiny_llama_classifier, "SEQ_CLS"),
    "roberta": (tiny_roberta, "SEQ_CLS"),  # its head is a module: classifier.dense, .out_proj
}
HEADS = {"llama": None, "bert": ["classifier"], "llama-cls": ["score"], "roberta": ["classifier"]}


def random_config(targets, seed: int) -> ModelQConfig:
    """A non-uniform configuration: an independent random option per matrix."""
    rng = np.random.default_rng(seed)
    options = rng.integers(0, len(ALL_OPTIONS), size=len(targets))
    mqc = ModelQConfig.from_list(targets, [ALL_OPTIONS[i] for i in options])
    assert len(set(mqc.modules.values())) > 1
    return mqc


def trained_like(kind: str, r: int = 4):
    """A CoA-LoRA model whose parts all matter: nonzero B, a rough mapper, s != 1, and (for
    the classifier) a task head moved away from its initial values."""
    build, task = BUILDERS[kind]
    model = build()
    quantized = QuantizedBase(model)
    targets = quantized.targets
    wrappers = inject_lora(model, targets, r=r, alpha=8, seed=0)
    mapper = ConfigAwareMapper.for_targets(targets, r=r, seed=0)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for w in wrappers.values():
            w.lora_B.copy_(torch.randn(w.lora_B.shape, generator=gen) * 0.1)
        mapper.net[-1].weight.normal_(0.0, 0.05, generator=gen)
        mapper.net[-1].bias.normal_(0.0, 0.05, generator=gen)
        mapper.scale.fill_(1.7)
        if HEADS[kind]:
            for p in model.get_submodule(HEADS[kind][0]).parameters():
                p.add_(torch.randn(p.shape, generator=gen))
    return model, quantized, targets, CoALoRA(model, wrappers, mapper, targets), task


def coa_logits(model, quantized, coa, mqc) -> torch.Tensor:
    with torch.no_grad():
        quantized.apply(mqc)
        coa.set_config(mqc)
        return model(input_ids=INPUT_IDS).logits


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_exported_adapter_reproduces_coa_forward(kind, tmp_path):
    model, quantized, targets, coa, task = trained_like(kind)
    mqc = random_config(targets, seed=0)
    expected = coa_logits(model, quantized, coa, mqc)
    out = export_peft_adapter(
        model,
        coa.wrappers,
        coa.mapper,
        mqc,
        targets,
        tmp_path / "adapter",
        "tiny-" + kind,
        task,
        method="coalora",
    )

    # A fresh copy of the base model, quantized under the same configuration by the
    # one-shot path, plus the adapter through peft's own loader: no coalora LoRA code.
    fresh = BUILDERS[kind][0]()
    apply_qconfig(fresh, ModelQConfig.load(out / "qconfig.json", targets))
    loaded = PeftModel.from_pretrained(fresh, str(out)).eval()
    with torch.no_grad():
        got = loaded(input_ids=INPUT_IDS).logits
    assert (got - expected).abs().max().item() <= 1e-5

    # The fold and the head are what make it match: without the mixings the logits differ.
    with torch.no_grad():
        coa.set_plain()
        plain = model(input_ids=INPUT_IDS).logits
    assert (plain - expected).abs().max().item() > 1e-3


# get_peft_model warns that it renames the config's base model path; irrelevant here.
@pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path`")
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_adapter_files_are_what_peft_writes(kind, tmp_path):
    model, _, targets, coa, task = trained_like(kind)
    mqc = random_config(targets, seed=1)
    out = export_peft_adapter(
        model,
        coa.wrappers,
        coa.mapper,
        mqc,
        targets,
        tmp_path / "a",
        "tiny-base",
        task,
        method="coalora",
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "coalora_adapter.json",
        "qconfig.json",
    ]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_dropout"] == 0.0
    assert config["task_type"] == task and config["base_model_name_or_path"] == "tiny-base"
    assert sorted(config["target_modules"]) == sorted(coa.wrappers)
    assert config["modules_to_save"] == HEADS[kind]
    # peft's own state-dict naming for the same adapter on the same architecture.
    reference = get_peft_model(BUILDERS[kind][0](), PeftLoraConfig.from_pretrained(str(out)))
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert set(saved) == set(get_peft_model_state_dict(reference))
    assert ModelQConfig.load(out / "qconfig.json", targets).key() == mqc.key()


def test_configurations_fold_to_different_adapters_without_training(tmp_path):
    model, quantized, targets, coa, task = trained_like("llama")
    seen, unseen = random_config(targets, seed=2), random_config(targets, seed=3)
    # Only `seen` is ever run through the model; `unseen` is exported straight away.
    coa_logits(model, quantized, coa, seen)
    snapshot = {k: v.clone() for k, v in coa.state_dict().items()}
    state_seen = folded_adapter_state(model, coa.wrappers, coa.mapper, seen, targets)
    out = export_peft_adapter(
        model,
        coa.wrappers,
        coa.mapper,
        unseen,
        targets,
        tmp_path / "unseen",
        "tiny",
        task,
        method="coalora",
    )
    # Exporting changes nothing that training owns.
    assert all(torch.equal(v, coa.state_dict()[k]) for k, v in snapshot.items())
    state_unseen = load_file(str(out / "adapter_model.safetensors"))
    b_keys = [k for k in state_seen if k.endswith("lora_B.weight")]
    a_keys = [k for k in state_seen if k.endswith("lora_A.weight")]
    assert all(torch.equal(state_seen[k], state_unseen[k]) for k in a_keys)  # A is shared
    assert all((state_seen[k] - state_unseen[k]).abs().max() > 1e-6 for k in b_keys)

    expected = coa_logits(model, quantized, coa, unseen)
    loaded = load_peft_adapter(tiny_llama(), out).eval()
    with torch.no_grad():
        got = loaded(input_ids=INPUT_IDS).logits
    assert (got - expected).abs().max().item() <= 1e-5


def test_fold_into_lora_is_b_times_identity_plus_m():
    gen = torch.Generator().manual_seed(0)
    b, m, a = torch.randn(7, 3, generator=gen), torch.randn(3, 3, generator=gen), torch.randn(3, 5)
    folded = fold_into_lora(b, m)
    assert torch.allclose(folded @ a, b @ (torch.eye(3) + m) @ a, atol=1e-5)
    assert torch.equal(fold_into_lora(b, None), b)
    with pytest.raises(ValueError, match="shape"):
        fold_into_lora(b, torch.zeros(2, 2))


def test_plain_lora_export_and_its_guards(tmp_path):
    model, quantized, targets, coa, task = trained_like("llama")
    mqc = random_config(targets, seed=4)
    with torch.no_grad():
        coa.set_config(mqc)
    # A mixing left on the wrappers would not be in a plain export: refuse.
    with pytest.raises(ValueError, match="has a mixing matrix set"):
        export_peft_adapter(
            model, coa.wrappers, None, mqc, targets, tmp_path / "x", "t", task, method="coalora"
        )
    with pytest.raises(ValueError, match="needs a configuration"):
        export_peft_adapter(
            model,
            coa.wrappers,
            coa.mapper,
            None,
            targets,
            tmp_path / "x",
            "t",
            task,
            method="coalora",
        )
    with pytest.raises(ValueError, match="unknown peft task_type"):
        export_peft_adapter(
            model,
            coa.wrappers,
            coa.mapper,
            mqc,
            targets,
            tmp_path / "x",
            "t",
            "NOPE",
            method="coalora",
        )
    assert not (tmp_path / "x").exists()  # nothing half-written
    # Plain LoRA (a baseline): the export equals the wrappers with no mixing.
    coa.set_plain()
    with torch.no_grad():
        quantized.apply(mqc)
        expected = model(input_ids=INPUT_IDS).logits
    out = export_peft_adapter(
        model, coa.wrappers, None, mqc, targets, tmp_path / "p", "t", task, method="qlora"
    )
    loaded = load_peft_adapter(tiny_llama(), out).eval()
    with torch.no_grad():
        assert (loaded(input_ids=INPUT_IDS).logits - expected).abs().max().item() <= 1e-5
    with pytest.raises(FileNotFoundError, match="not a peft adapter directory"):
        load_peft_adapter(tiny_llama(), tmp_path / "missing")
