"""ONE training engine for every method (CoA-LoRA and all baselines).

The engine owns what must be identical across methods for a fair comparison: the data
order, AdamW with warm-up + linear decay, gradient-norm clipping, the step budget, seeds,
progress, timing and checkpoints. A method (``coalora.methods``) owns only what differs:
which parameters train, which configurations a step sees, and how a configuration is
activated on the model.

Each optimizer step draws K configurations from the method, computes the task loss under
each on the same minibatch, averages the K losses (docs/method.md section 4 [decision]; the
official code summed them) and steps once.

Every step is logged (``TrainResult.step_log``: the learning rate it ran at, the identity of
each configuration drawn and its loss), and at fixed fractions of the steps
(``TrainSettings.snapshots``, ``snapshot_plan``) the trained parts are kept as evaluable snapshots: the learning
curves, the claims' settled gate and each record's exposure (how many steps trained on its
configuration) come from them (docs/claims.md, "Trained far enough?").

Determinism and resume: batch k, the configurations of step k and every dropout mask
depend only on (seed, k), so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would. Resume state lives in ``<out>.resume/`` beside the output, so a
half-finished run never looks like a finished checkpoint.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import precision
from .io import atomic_dir, atomic_path, read_json, write_json
from .quant.model_config import config_identity
from .timing import mark

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """Hyper-parameters shared by every method (defaults: docs/method.md section 3)."""

    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    batch_size: int = 8
    max_length: int = 128
    grad_clip: float = 1.0
    configs_per_step: int = 2
    seed: int = 0
    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.0
    # Steps between search rounds (CoA-LoRA's "epoch"); 0 disables the end-of-epoch hook.
    epoch_steps: int = 0
    # Steps between resume checkpoints; 0 writes none until the end.
    save_every: int = 0
    # CoA-LoRA's configuration search, run every ``epoch_steps`` (docs/method.md section 5):
    # mode full | frozen | random, new configurations per round, held-out batches for f1,
    # segments U of the Pareto filter, walkers K0 (0: twice the candidates) and steps T.
    search_mode: str = "full"
    search_candidates: int = 10
    search_eval_batches: int = 4
    search_segments: int = 40
    search_starts: int = 0
    search_steps: int = 10
    # "auto": the first CUDA GPU when there is one, else the CPU.
    device: str = "auto"
    # bf16 | fp32 | auto (bf16 where the device has bf16 matrix units): the dtype the frozen
    # base is held and the passes run in; trained parameters stay fp32 (coalora.precision).
    compute_dtype: str = "auto"
    # Fractions of ``steps`` after which an evaluable snapshot of the trained parts is kept
    # (e.g. [0.25, 0.5]; the end is the checkpoint itself): learning curves and the settled
    # gate. One list per experiment, the same for every method (``snapshot_steps``).
    snapshots: list = field(default_factory=list)
    # Options keyed by method (e.g. {"lqlora": {"iters": 100}}): a method reads only its own
    # entry and checks its keys (coalora.methods.Method.build_options).
    method_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("steps", "batch_size", "max_length", "configs_per_step", "r"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"training setting {name!r} must be >= 1, got {getattr(self, name)}"
                )
        if not self.lr > 0:
            raise ValueError(f"training setting 'lr' must be > 0, got {self.lr}")
        if self.search_mode not in ("full", "frozen", "random"):
            raise ValueError(
                f"training setting 'search_mode' must be full, frozen or random, got {self.search_mode!r}"
            )
        precision.check_setting(self.compute_dtype, "training setting 'compute_dtype'")
        bad = [f for f in self.snapshots if not (isinstance(f, int | float) and 0 < f < 1)]
        if bad:
            raise ValueError(
                f"training setting 'snapshots' takes fractions of the steps in (0, 1), got {bad}"
            )
        try:
            snapshot_plan(self.steps, self.snapshots)
        except ValueError as err:
            raise ValueError(f"training setting 'snapshots': {err}") from None
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(
                f"training setting 'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}"
            )

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss over K configs, per step
    epoch_logs: list[dict] = field(default_factory=list)
    dtype: str = ""  # the compute dtype the steps ran in (precision.record_name)
    # Per step: {"lr": the rate it ran at, "configs": identities of the configurations drawn
    # (ModelQConfig.identity), "losses": the loss under each}; what exposure is counted from.
    step_log: list[dict] = field(default_factory=list)


def snapshot_plan(steps: int, fractions) -> dict[str, int]:
    """The snapshots of a run of ``steps`` steps: name (``snapshot_name``) -> the step after
    which it is kept, each fraction of ``steps`` rounded half up (at least 1), in order. Named
    by fraction, so that every method of an experiment has the same snapshots whatever its
    steps (the workflow's file names; workflow/rules/common.smk). Two fractions on one step,
    or one on the last (the checkpoint itself), are refused."""
    plan = {}
    for fraction in sorted(set(fractions)):
        step = max(1, math.floor(fraction * steps + 0.5))
        if step >= steps:
            raise ValueError(
                f"snapshot {fraction:g} of a {steps}-step run falls on its last step (the "
                f"checkpoint itself): use a smaller fraction or more steps"
            )
        if step in plan.values():
            raise ValueError(
                f"snapshots {sorted(set(fractions))} of a {steps}-step run put two on step "
                f"{step}: use fewer snapshots or more steps"
            )
        plan[snapshot_name(fraction)] = step
    return plan


def snapshot_name(fraction: float) -> str:
    return f"at-{fraction:g}"


def snapshot_fraction(name: str) -> float:
    return float(name.removeprefix("at-"))


SNAPSHOTS_DIR = "snapshots"  # in a checkpoint (and its resume state): one folder per snapshot


def exposure(step_log: list[dict], identity: str, peak_lr: float) -> dict:
    """How much of a run trained on one configuration (its ``identity``): the optimizer steps
    that drew it, out of all, and the same weighted by each step's learning rate (over the
    peak rate) and by the configuration's share of the step's averaged loss (1/K)."""
    steps = lr_steps = lr_total = 0.0
    for entry in step_log:
        rate = entry["lr"] / peak_lr if peak_lr else 0.0
        lr_total += rate
        drawn = entry["configs"].count(identity)
        if drawn:
            steps += 1
            lr_steps += rate * drawn / len(entry["configs"])
    return {
        "steps": int(steps),
        "of": len(step_log),
        "lr_steps": round(lr_steps, 6),
        "lr_of": round(lr_total, 6),
    }


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"training setting 'device': {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"training setting 'device' is {name!r} but no CUDA GPU is available")
    return device


def linear_schedule_with_warmup(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the full rate, then linear decay to 0: transformers'
    ``get_linear_schedule_with_warmup``, written on torch's ``LambdaLR`` because importing
    ``transformers.optimization`` pulls in peft and bitsandbytes (about 6 s of CPU in every
    training job). ``tests/test_train.py`` checks it equals transformers' schedule."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def _resume_dir(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


def train(
    method,
    batch_for_step: Callable[[int], dict],
    settings: TrainSettings,
    out: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Run ``settings.steps`` optimizer steps of ``method`` (resuming from ``<out>.resume``).

    ``batch_for_step(k)`` returns the k-th minibatch (a dict of tensors for the model).
    ``stop_after`` ends the run early after that many total steps, leaving resume state:
    it exists to test that an interrupted run resumes to the same result.
    """
    snapshot_at = {
        step: name for name, step in snapshot_plan(settings.steps, settings.snapshots).items()
    }
    if snapshot_at and out is None:
        raise ValueError("training setting 'snapshots' needs an output directory to keep them")
    model = method.model
    device = next(model.parameters()).device
    dtype = precision.resolve(settings.compute_dtype, device)
    method.hold_in(dtype)
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"method {method.name!r} has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = linear_schedule_with_warmup(
        optimizer, math.ceil(settings.warmup_ratio * settings.steps), settings.steps
    )
    result = TrainResult(steps=0, seconds=0.0, dtype=precision.record_name(dtype))
    start = 0
    resume = _resume_dir(Path(out)) if out is not None else None
    if resume is not None and (resume / "state.pt").exists():
        start, result = _load_resume(resume, method, optimizer, scheduler, settings)
        if result.dtype != precision.record_name(dtype):
            raise ValueError(
                f"resume state {resume} ran in {result.dtype or 'float32'}, this run computes "
                f"in {precision.record_name(dtype)}: resume with compute_dtype="
                f"{precision.setting_of(result.dtype or 'float32')} or delete it to start over"
            )
        log.info("resuming %s at step %d", method.name, start)

    model.train()
    last = settings.steps if stop_after is None else min(stop_after, settings.steps)
    bar = tqdm(
        total=settings.steps,
        initial=start,
        desc=f"train {method.name}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    clock = time.perf_counter()
    for step in range(start, last):
        if step == start:  # set-up benchmark (coalora.timing): where set-up ends
            mark("first_step", once=True)
        seed = step_seed(settings.seed, step)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        batch = {k: v.to(device) for k, v in batch_for_step(step).items()}
        configs = method.configs_for_step(rng, settings.configs_per_step)
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for mqc in configs:
            method.activate(mqc)
            loss = model(**batch).loss
            (loss / len(configs)).backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        rate = scheduler.get_last_lr()[0]  # the rate this step's update runs at
        optimizer.step()
        scheduler.step()
        result.losses.append(sum(losses) / len(configs))
        result.step_log.append(
            {"lr": rate, "configs": [config_identity(m) for m in configs], "losses": losses}
        )
        bar.update(1)
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")

        done = step + 1
        if settings.epoch_steps and done % settings.epoch_steps == 0 and done < settings.steps:
            model.eval()
            epoch_log = method.end_of_epoch(done)
            model.train()
            if epoch_log is not None:
                result.epoch_logs.append(epoch_log)
        if done in snapshot_at:
            seconds = result.seconds + time.perf_counter() - clock
            _save_snapshot(resume / SNAPSHOTS_DIR / snapshot_at[done], method, done, seconds)
        if resume is not None and (
            (settings.save_every and done % settings.save_every == 0) or done == last
        ):
            result.steps = done
            result.seconds += time.perf_counter() - clock
            clock = time.perf_counter()
            if done < settings.steps:
                _save_resume(resume, method, optimizer, scheduler, result)
    bar.close()
    result.steps = last
    result.seconds += time.perf_counter() - clock
    model.eval()
    return result


SNAPSHOT_PROGRESS = "progress.json"


def _save_snapshot(folder: Path, method, step: int, seconds: float) -> None:
    """The trained parts after ``step`` steps, kept in the resume state until the checkpoint
    takes them (``runner.run_training``): written once, so a resumed run keeps the ones an
    uninterrupted run wrote (those after its resume point again, bit for bit)."""
    with atomic_dir(folder) as tmp:
        save_file(
            {k: v.detach().contiguous() for k, v in method.trainable_state().items()},
            tmp / WEIGHTS,
        )
        write_json(
            tmp / SNAPSHOT_PROGRESS,
            {"steps": step, "train_seconds": seconds,
             "train_configs": [m.to_dict() for m in method.train_configs]},
        )  # fmt: skip


def _save_resume(resume: Path, method, optimizer, scheduler, result: TrainResult) -> None:
    resume.mkdir(parents=True, exist_ok=True)
    with atomic_path(resume / "weights.safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in method.trainable_state().items()}, tmp)
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "result": asdict(result),
        "method_state": method.extra_state(),
    }
    with atomic_path(resume / "state.pt") as tmp:
        torch.save(state, tmp)


def _load_resume(resume: Path, method, optimizer, scheduler, settings: TrainSettings):
    try:
        method.load_trainable_state(load_file(resume / "weights.safetensors"))
        state = torch.load(resume / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        method.load_extra_state(state["method_state"])
        result = TrainResult(**state["result"])
    except Exception as err:  # noqa: BLE001 - any failure here means unusable resume state
        raise ValueError(
            f"resume state {resume} is corrupt ({type(err).__name__}: {err}); delete it to start over"
        ) from None
    if result.steps > settings.steps:
        raise ValueError(
            f"resume state {resume} is past the step budget ({result.steps} > {settings.steps})"
        )
    return result.steps, result


def clear_resume(out: str | Path) -> None:
    shutil.rmtree(_resume_dir(Path(out)), ignore_errors=True)


# --- finished checkpoints -----------------------------------------------------------------

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


def save_checkpoint(
    out: str | Path,
    trainable: dict,
    manifest: dict,
    extra_files: dict | None = None,
    snapshots: dict[str, tuple[Path, dict, dict]] | None = None,
):
    """Write ``out/`` atomically: weights (safetensors) + manifest (JSON) + extra JSON files,
    and each snapshot (name -> its weights file, manifest, extra files) as a checkpoint of its
    own under ``out/snapshots/<name>/``."""
    with atomic_dir(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in trainable.items()}, tmp / WEIGHTS)
        write_json(tmp / MANIFEST, manifest)
        for name, data in (extra_files or {}).items():
            write_json(tmp / name, data)
        for name, (weights, snap_manifest, snap_extra) in (snapshots or {}).items():
            folder = tmp / SNAPSHOTS_DIR / name
            folder.mkdir(parents=True)
            shutil.copyfile(weights, folder / WEIGHTS)
            write_json(folder / MANIFEST, snap_manifest)
            for file, data in snap_extra.items():
                write_json(folder / file, data)


def resumed_snapshots(out: str | Path, settings: TrainSettings) -> list[tuple[str, Path, dict]]:
    """The snapshots a finished run kept in its resume state: (name, weights file, progress),
    in step order; a missing one is an error (the run's plan says which there must be)."""
    root = _resume_dir(Path(out)) / SNAPSHOTS_DIR
    found = []
    for name in snapshot_plan(settings.steps, settings.snapshots):
        progress = read_json(root / name / SNAPSHOT_PROGRESS, "snapshot progress")
        found.append((name, root / name / WEIGHTS, progress))
    return found


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """Return (manifest, trainable tensors); a missing or corrupt checkpoint is a one-line error."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    manifest = read_json(path / MANIFEST, "checkpoint manifest")
    for key in ("method", "model", "task", "settings"):
        if key not in manifest:
            raise ValueError(f"checkpoint manifest {path / MANIFEST} lacks {key!r}")
    try:
        weights = load_file(path / WEIGHTS)
    except Exception as err:  # noqa: BLE001 - safetensors raises several types
        raise ValueError(f"checkpoint weights {path / WEIGHTS} are unreadable: {err}") from None
    return manifest, weights
