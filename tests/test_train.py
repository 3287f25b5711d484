"""The shared training engine with CoA-LoRA on tiny random LLaMA and BERT models."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from coalora.data import load_task, make_batches
from coalora.methods import get_method
from coalora.models import load_model
from coalora.quant import ALL_OPTIONS, ModelQConfig, QuantizedBase
from coalora.train import TrainSettings, load_checkpoint, save_checkpoint, train

SETTINGS = dict(steps=24, lr=1e-2, batch_size=8, max_length=32, r=16, alpha=16, configs_per_step=2)


def random_configs(targets, n, seed, low_bits=True):
    rng = np.random.default_rng(seed)
    # Low-bit options make the quantization damage (and so the adaptation) visible.
    pool = [i for i, qc in enumerate(ALL_OPTIONS) if qc.b <= 3] if low_bits else range(432)
    pool = list(pool)
    return [
        ModelQConfig.from_list(targets, [ALL_OPTIONS[i] for i in rng.choice(pool, len(targets))])
        for _ in range(n)
    ]


def build(model_name, task_name, method="coalora", seed=0, **overrides):
    settings = TrainSettings(**{**SETTINGS, **overrides, "seed": seed})
    # A small training set, seen for several epochs: the random tiny models must be able to
    # fit it in a few steps. "held_out" is therefore the training set in a fixed order.
    task = load_task(task_name, max_train=64, max_eval=32)
    kind = "classification" if task.spec.kind == "classification" else "causal-lm"
    loaded = load_model(model_name, kind=kind, num_labels=task.spec.num_labels, seed=seed)
    qbase = QuantizedBase(loaded.model)
    configs = random_configs(qbase.targets, 3, seed)
    runner = get_method(method)(loaded, qbase, settings, configs)
    batches = make_batches(
        task, loaded.tokenizer, "train", settings.batch_size, settings.max_length, seed
    )
    held_out = make_batches(task, loaded.tokenizer, "train", 8, settings.max_length)
    return runner, batches, held_out, settings


@torch.no_grad()
def held_out_loss(runner, held_out, mqc):
    model = runner.prepare_eval(mqc)
    return float(np.mean([model(**b).loss.item() for b in held_out]))


@pytest.mark.parametrize(
    "model_name,task_name,overrides",
    [
        ("tiny-llama", "bible-lm", {}),
        # A random tiny BERT's [CLS] features barely depend on the input, so the classifier
        # case uses the real pretrained MiniLM encoder.
        ("minilm-l6", "bible-testament", dict(steps=16, lr=3e-3, r=8)),
    ],
)
def test_training_lowers_loss_under_every_training_configuration(model_name, task_name, overrides):
    runner, batches, held_out, settings = build(model_name, task_name, **overrides)
    before = [held_out_loss(runner, held_out, m) for m in runner.train_configs]
    mapper_before = {k: v.clone() for k, v in runner.mapper.state_dict().items()}
    result = train(runner, batches.batch, settings, progress=False)
    after = [held_out_loss(runner, held_out, m) for m in runner.train_configs]
    assert result.steps == settings.steps and result.seconds > 0
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)
    # The configuration-aware model itself was trained, not only A and B.
    changed = [not torch.equal(v, runner.mapper.state_dict()[k]) for k, v in mapper_before.items()]
    assert any(changed)


def test_unseen_configuration_gets_a_distinct_adapter():
    runner, batches, held_out, settings = build("tiny-llama", "bible-lm", steps=8)
    train(runner, batches.batch, settings, progress=False)
    [unseen] = random_configs(runner.targets, 1, seed=99)
    seen = runner.train_configs[0]
    with torch.no_grad():
        m_seen = runner.mapper.mixing_for(seen, runner.targets)
        m_unseen = runner.mapper.mixing_for(unseen, runner.targets)
    name = runner.targets[0].name
    assert not torch.allclose(m_seen[name], m_unseen[name])
    assert np.isfinite(held_out_loss(runner, held_out, unseen))


def test_same_seed_same_numbers():
    losses = []
    for _ in range(2):
        runner, batches, _, settings = build("tiny-bert", "bible-testament", steps=6)
        losses.append(train(runner, batches.batch, settings, progress=False).losses)
    assert losses[0] == losses[1]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    runner, batches, _, settings = build("tiny-bert", "bible-testament", steps=10, save_every=3)
    full = train(runner, batches.batch, settings, out=tmp_path / "a", progress=False)
    full_state = runner.trainable_state()

    runner, batches, _, settings = build("tiny-bert", "bible-testament", steps=10, save_every=3)
    partial = train(
        runner, batches.batch, settings, out=tmp_path / "b", progress=False, stop_after=7
    )
    assert partial.steps == 7 and (tmp_path / "b.resume" / "state.pt").exists()
    # A fresh process: new model, new method, resumed from disk.
    runner, batches, _, settings = build("tiny-bert", "bible-testament", steps=10, save_every=3)
    resumed = train(runner, batches.batch, settings, out=tmp_path / "b", progress=False)
    assert resumed.steps == 10
    assert resumed.losses == pytest.approx(full.losses, abs=0, rel=0)
    for key, value in full_state.items():
        assert torch.equal(value, runner.trainable_state()[key]), key


def test_checkpoint_round_trip_and_corrupt_checkpoint(tmp_path):
    runner, batches, _, settings = build("tiny-llama", "bible-lm", steps=2)
    train(runner, batches.batch, settings, progress=False)
    manifest = {"method": "coalora", "model": "tiny-llama", "task": "bible-lm", "settings": {}}
    save_checkpoint(tmp_path / "ckpt", runner.trainable_state(), manifest)
    loaded_manifest, weights = load_checkpoint(tmp_path / "ckpt")
    assert loaded_manifest == manifest
    assert set(weights) == set(runner.trainable_state())
    assert torch.equal(load_file(tmp_path / "ckpt" / "weights.safetensors")[next(iter(weights))],
                       weights[next(iter(weights))])  # fmt: skip
    (tmp_path / "ckpt" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing")


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="'steps'"):
        TrainSettings(steps=0)
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['stepz'\]"):
        TrainSettings.from_dict({"stepz": 3})


def test_qlora_is_per_configuration():
    task = load_task("bible-lm", max_train=64, max_eval=8)
    loaded = load_model("tiny-llama")
    qbase = QuantizedBase(loaded.model)
    with pytest.raises(ValueError, match="one configuration per run"):
        get_method("qlora")(
            loaded, qbase, TrainSettings(**SETTINGS), random_configs(qbase.targets, 2, 0)
        )
    del task


def test_resume_with_search_matches_an_uninterrupted_run(tmp_path):
    from coalora.runner import run_training

    settings = TrainSettings(
        **{**SETTINGS, "steps": 10, "r": 4, "epoch_steps": 3, "save_every": 2},
        search_candidates=2,
    )
    common = dict(model="tiny-llama", task="bible-lm", method="coalora", settings=settings,
                  budgets=[2.5, 3.0, 3.5], max_train=64, progress=False)  # fmt: skip
    run_training(out=tmp_path / "full", **common)
    assert run_training(out=tmp_path / "cut", stop_after=5, **common) is None
    run_training(out=tmp_path / "cut", **common)  # resumes at step 5, after one search round
    full_manifest, full_weights = load_checkpoint(tmp_path / "full")
    cut_manifest, cut_weights = load_checkpoint(tmp_path / "cut")
    assert full_manifest["loss_first_last"] == cut_manifest["loss_first_last"]
    assert full_manifest["num_train_configs"] == cut_manifest["num_train_configs"]
    for key, value in full_weights.items():
        assert torch.equal(value, cut_weights[key]), key
    full_log = (tmp_path / "full" / "search_log.json").read_text()
    assert len(json.loads(full_log)) == 3


def test_the_learning_rate_schedule_is_transformers_linear_warmup():
    from transformers import get_linear_schedule_with_warmup

    from coalora.train import linear_schedule_with_warmup

    def rates(make):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = make(optimizer, 3, 20)
        out = []
        for _ in range(22):
            out.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return out

    assert rates(linear_schedule_with_warmup) == rates(get_linear_schedule_with_warmup)
