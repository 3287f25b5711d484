"""Evaluating configurations: one model loaded once, many configurations, one results file each.

One driver, ``evaluate_configs(source, configs, ...)``, serves every kind of row. A
``ModelSource`` is where "the model under configuration C" comes from, and what it says
about itself in the records:

- ``Trained(checkpoint)``: a trained method rebuilt from its checkpoint; each configuration
  is activated in memory with ``method.prepare_eval`` (quantized base weights from the
  ``QuantizedBase`` cache, the adapter for that configuration). Records carry the checkpoint
  hash, training steps and time, and the protocol the ``trained_method`` and
  ``train_settings``.
- ``BareBase(model)``: the base model without any adapter (method ``"none"``); each
  configuration quantizes its weights in place, and a ``None`` configuration is the
  unquantized full-precision reference.

The driver loads the source and the task once, resolves the configurations (budgets,
qconfig files, ``ModelQConfig`` objects), then per configuration asks the source for the
model (timed as set-up), measures it (timed as evaluation), builds the record with
``make_record`` and writes it atomically as soon as it is measured. The one-time loading is
recorded as ``protocol.load_seconds``.

What is measured depends on the task's kind (``TaskMeasure``):

- classification (encoders, sequence classifiers): accuracy and F1 on the test split
  (``classification.py``); the primary metric is the task's own (``spec.metric``);
- language modelling (causal LMs): GPTQ-style perplexity on the test split
  (``perplexity.py``, primary) plus lm-eval-harness tasks, by default the embedded
  ``bible_ppl`` and ``bible_mc`` (``lm_eval_tasks.py``).

The command-line entry points (``coalora evaluate``, ``coalora train --evaluate-out``) only
turn flags into a source, configurations and output paths for the driver.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from ..budgets import DEFAULT_ALLOCATION, AllocationSpec, configs_for_budgets
from ..data import TASKS, TaskData, lm_token_ids, load_task
from ..methods import Serves, get_method
from ..models import LoadedModel, load_model, weights_hash
from ..quant import ModelQConfig, QuantizedBase
from ..runner import load_trained, model_kind, package_versions
from ..train import resolve_device
from .classification import evaluate_classifier, split_batches
from .lm_eval_tasks import EMBEDDED_TASKS, LMEvalSuite
from .perplexity import DEFAULT_WINDOW, perplexity, window_length
from .results import (
    FULL_PRECISION,
    SCHEMA,
    code_version,
    directory_hash,
    qconfig_hash,
    validate_result,
    write_result,
)

# Classification truncation when neither the settings nor the source give one.
DEFAULT_MAX_LENGTH = 128


@dataclass
class EvalSettings:
    """How configurations are evaluated (recorded in each result's ``protocol``)."""

    batch_size: int = 8  # classification examples / lm-eval requests per forward pass
    max_length: int | None = None  # classification truncation (None: the training length)
    window: int = DEFAULT_WINDOW  # perplexity window, capped at the model's max positions
    ppl_batch_size: int = 1  # perplexity windows per forward pass
    limit: int | None = None  # test examples / perplexity windows / lm-eval docs per task
    # lm-eval tasks for causal LMs (None: the embedded ones; () or []: none).
    lm_eval_tasks: Sequence[str] | None = None
    lm_eval_include: Sequence[str] = field(default_factory=tuple)  # extra task YAML dirs

    def __post_init__(self):
        for name in ("batch_size", "ppl_batch_size", "window", "max_length", "limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"evaluation setting {name!r} must be a positive integer, got {value!r}"
                )
        if self.lm_eval_tasks is not None:
            self.lm_eval_tasks = tuple(self.lm_eval_tasks)
        self.lm_eval_include = tuple(str(p) for p in self.lm_eval_include)


# ============================================================================ sources


class ModelSource(ABC):
    """Where "the model under configuration C" comes from, and its provenance in records.

    ``load`` runs once, first: it loads the model and the task and sets ``loaded`` and
    ``qbase``; then ``prepare`` is called once per configuration."""

    loaded: LoadedModel
    qbase: QuantizedBase
    quantizer: str = "nf"  # of the configurations given as budgets
    max_length: int | None = None  # classification truncation when the settings give none
    protocol: dict  # extra entries of every record's protocol

    @abstractmethod
    def load(self, task: str | None, settings: EvalSettings) -> TaskData:
        """Load the model once; return the task (``None``: the source's own, if it has one)."""

    def check(self, mqcs: Sequence[ModelQConfig | None]) -> None:
        """Refuse, before anything is measured, configurations this source cannot give (by
        default it gives every one)."""
        return None

    @abstractmethod
    def prepare(self, mqc: ModelQConfig | None) -> torch.nn.Module:
        """The model under ``mqc`` (``None``: full precision), in eval mode."""

    def own_configuration(self) -> ModelQConfig:
        """The configuration the source chose for itself (the ``TRAINED`` item)."""
        raise ValueError(f"{type(self).__name__} has no training configuration of its own")

    @abstractmethod
    def provenance(self, mqc: ModelQConfig | None) -> dict:
        """``make_record``'s fields that come from the source: model, method, seen,
        base_hash, checkpoint_hash, seed, train_seconds, train_steps."""


class Trained(ModelSource):
    """A trained method, rebuilt once from its checkpoint directory (``coalora train --out``,
    via ``coalora.runner.load_trained``); each configuration is activated in memory with
    ``method.prepare_eval``. Budgets use the checkpoint's quantizer; the task defaults to the
    checkpoint's own; quantized configurations only.

    ``label`` is the records' ``method`` (default: the checkpoint's method): a workflow's
    name for an ablation variant such as ``coalora-r32``. The protocol always carries the
    checkpoint's ``trained_method`` and ``train_settings``."""

    def __init__(self, checkpoint: str | os.PathLike, label: str | None = None):
        self.checkpoint = checkpoint
        self.label = label

    def load(self, task: str | None, settings: EvalSettings) -> TaskData:
        self.method, manifest = load_trained(self.checkpoint)
        task_data = _load_eval_task(task or manifest["task"], settings)
        spec = task_data.spec
        if spec.kind == "classification" and spec.num_labels != manifest.get("num_labels"):
            raise ValueError(
                f"task {spec.name!r} has {spec.num_labels} labels, the checkpoint's "
                f"classifier {manifest.get('num_labels')}"
            )
        self.manifest = manifest
        self.loaded, self.qbase = self.method.loaded, self.method.qbase
        self.quantizer = manifest.get("quantizer", "nf")
        train_settings = manifest["settings"]
        self.max_length = train_settings.get("max_length")
        self.protocol = {
            "trained_method": manifest["method"],
            "train_settings": train_settings,
            # Which configurations the method serves (its class's trait), read by the report.
            "serves": str(self.method.serves),
        }
        self.checkpoint_hash = directory_hash(self.checkpoint)
        self.trained_keys = {m.key() for m in self.method.train_configs}
        return task_data

    def check(self, mqcs):
        if any(m is None for m in mqcs) and self.method.serves != Serves.FULL_PRECISION:
            raise ValueError("a trained method is evaluated under quantized configurations only")

    def own_configuration(self) -> ModelQConfig:
        if self.method.serves != Serves.FIXED_CONFIGURATION:
            return super().own_configuration()
        return self.method.train_configs[0]

    def prepare(self, mqc):
        return self.method.prepare_eval(mqc)

    def provenance(self, mqc):
        m = self.manifest
        return {
            "model": m["model"],
            "method": self.label or m["method"],
            "seen": None if mqc is None else mqc.key() in self.trained_keys,
            "base_hash": m["base_weights_hash"],
            "checkpoint_hash": self.checkpoint_hash,
            "seed": m["settings"].get("seed", 0),
            "train_seconds": m.get("train_seconds"),
            "train_steps": m.get("steps"),
        }


class BareBase(ModelSource):
    """The base model without any adapter (method ``"none"``): reference rows. Each
    configuration quantizes the weights in place (``QuantizedBase.apply``); ``None`` is the
    unquantized full-precision model (config ``"full-precision"``, quantizer ``"none"``).
    Budgets use ``quantizer``; a task must be given; a classifier's head is the untrained
    one drawn from ``seed``."""

    def __init__(self, model: str, seed: int = 0, quantizer: str = "nf"):
        self.model = model
        self.seed = seed
        self.quantizer = quantizer
        self.protocol = {}

    def load(self, task: str | None, settings: EvalSettings) -> TaskData:
        if task is None:
            raise ValueError("the bare base model has no task of its own: give one")
        task_data = _load_eval_task(task, settings)
        spec = task_data.spec
        self.loaded = load_model(
            self.model, kind=model_kind(spec.kind), num_labels=spec.num_labels, seed=self.seed
        )
        self.base_hash = weights_hash(self.loaded.model)
        self.loaded.model.to(resolve_device("auto"))
        self.qbase = QuantizedBase(self.loaded.model)
        return task_data

    def prepare(self, mqc):
        if mqc is None:
            self.qbase.restore()
        else:
            self.qbase.apply(mqc)
        return self.loaded.model.eval()

    def provenance(self, mqc):
        return {
            "model": self.model,
            "method": "none",
            "seen": None,
            "base_hash": self.base_hash,
            "checkpoint_hash": None,
            "seed": self.seed,
            "train_seconds": None,
            "train_steps": None,
        }


# ============================================================================ the driver


def evaluate_configs(
    source: ModelSource,
    configs: Sequence,
    task: str | None = None,
    out_paths: Sequence[str | os.PathLike] | None = None,
    settings: EvalSettings | None = None,
    allocation: AllocationSpec = DEFAULT_ALLOCATION,
) -> list[dict]:
    """Evaluate ``source``'s model under many configurations in one process.

    ``configs`` items are ``ModelQConfig`` objects, budgets (floats: the ILP configuration,
    under ``allocation`` with the source's quantizer), qconfig JSON paths, ``TRAINED`` (the
    configuration a method fixed for itself) or ``None`` (full precision: ``BareBase``, or a
    method that serves full precision);
    see ``resolve_configs``. ``task`` defaults to the source's own (a checkpoint's task).
    Each result is written to its ``out_paths`` entry (atomically) as soon as it is
    measured; all are returned."""
    if not isinstance(source, ModelSource):
        raise TypeError(
            f"evaluate_configs takes a ModelSource (Trained(checkpoint), BareBase(model)), "
            f"got {source!r}"
        )
    settings = settings or EvalSettings()
    paths = _check_out_paths(out_paths, len(configs))
    started = time.perf_counter()
    task_data = source.load(task, settings)
    allocation = dataclasses.replace(allocation, quantizer=source.quantizer)
    mqcs = resolve_configs(configs, source.loaded, source.qbase, allocation)
    mqcs = [source.own_configuration() if m is TRAINED else m for m in mqcs]
    source.check(mqcs)
    max_length = settings.max_length or source.max_length or DEFAULT_MAX_LENGTH
    measure = TaskMeasure(source.loaded, task_data, settings, max_length)
    load_seconds = time.perf_counter() - started

    records = []
    for mqc, path in zip(mqcs, paths, strict=True):
        clock = time.perf_counter()
        model = source.prepare(mqc)
        setup = time.perf_counter() - clock
        clock = time.perf_counter()
        metrics, protocol, per_example = measure.measure(model)
        evaluation = time.perf_counter() - clock
        protocol.update(_common_protocol(task_data, source.loaded, load_seconds, len(mqcs)))
        protocol["eval_settings"] = asdict(settings)
        protocol.update(source.protocol)
        record = make_record(
            task=task_data.spec.name,
            mqc=mqc,
            metrics=metrics,
            per_example=per_example,
            primary=measure.primary_metric,
            protocol=protocol,
            setup_seconds=setup,
            eval_seconds=evaluation,
            **source.provenance(mqc),
        )
        if path is not None:
            write_result(path, record)
        records.append(record)
    return records


def _check_out_paths(out_paths, n: int) -> list[Path | None]:
    if out_paths is None:
        return [None] * n
    paths = [Path(p) for p in out_paths]
    if len(paths) != n:
        raise ValueError(f"{len(paths)} output paths for {n} configurations")
    if len(set(paths)) != len(paths):
        raise ValueError("two configurations would write the same output file")
    return paths


def _load_eval_task(name: str, settings: EvalSettings) -> TaskData:
    # For classification the limit is a stratified sample of the test split; for language
    # modelling it caps windows and lm-eval documents instead (the token stream stays whole).
    spec = TASKS.get(name)
    task = None if spec else load_task(name)  # local:<dir>: its kind is known once loaded
    kind = spec.kind if spec else task.spec.kind
    if kind == "classification" and settings.limit is not None:
        return load_task(name, max_eval=settings.limit)
    return task or load_task(name)


def _common_protocol(task: TaskData, loaded, load_seconds: float, n_configs: int) -> dict:
    param = next(loaded.model.parameters())
    return {
        "task_source": task.spec.source,
        "dtype": str(param.dtype).removeprefix("torch."),
        "device": str(param.device),
        "threads": torch.get_num_threads(),
        "load_seconds": load_seconds,
        "configs_in_process": n_configs,
    }


# ============================================================================ measuring


class TaskMeasure:
    """Measures a model on one task; holds what stays the same across configurations (the
    test token stream, loaded lm-eval tasks, the harness wrapper)."""

    def __init__(self, loaded, task: TaskData, settings: EvalSettings, max_length: int):
        self.loaded = loaded
        self.task = task
        self.settings = settings
        self.max_length = max_length
        self.kind = task.spec.kind
        self.suite = None
        if self.kind == "classification":
            if loaded.kind != "classification":
                raise ValueError(
                    f"task {task.spec.name!r} is classification but the model is {loaded.kind}"
                )
            if settings.lm_eval_tasks:
                raise ValueError("lm-eval tasks need a causal LM; this is a classification task")
            # Tokenized once per job, not once per configuration.
            self.batches = split_batches(task, loaded.tokenizer, settings.batch_size, max_length)
            return
        if loaded.kind != "causal-lm":
            raise ValueError(
                f"task {task.spec.name!r} is {self.kind} but the model is {loaded.kind}"
            )
        self.window = window_length(loaded.model, settings.window)
        self.token_ids = lm_token_ids(task, loaded.tokenizer, "test")
        tasks = EMBEDDED_TASKS if settings.lm_eval_tasks is None else settings.lm_eval_tasks
        if tasks:
            self.suite = LMEvalSuite(
                tasks, settings.lm_eval_include, settings.batch_size, max_length=self.window
            )
            # Loading belongs to the one-time set-up, not to the first configuration's time.
            self.suite.prepare()

    @property
    def primary_metric(self) -> tuple[str, bool]:
        if self.kind == "classification":
            return self.task.spec.metric, True
        return "perplexity", False

    @torch.no_grad()
    def measure(self, model: torch.nn.Module) -> tuple[dict[str, float], dict, dict]:
        """(metrics, protocol, per-example outcomes of the primary metric) of ``model`` as it
        is now."""
        s = self.settings
        if self.kind == "classification":
            metrics, protocol, per_example = evaluate_classifier(
                model,
                self.loaded.tokenizer,
                self.task,
                s.batch_size,
                self.max_length,
                batches=self.batches,
            )
            return metrics, {"kind": "classification", **protocol, "limit": s.limit}, per_example
        clock = time.perf_counter()
        result = perplexity(model, self.token_ids, self.window, s.ppl_batch_size, s.limit)
        metrics = {"perplexity": result.perplexity}
        protocol = {
            "kind": "lm",
            "split": "test",
            "limit": s.limit,
            "perplexity": {**result.protocol(), "seconds": time.perf_counter() - clock},
        }
        if self.suite is not None:
            lm_metrics, protocol["lm_eval"] = self.suite.run(model, self.loaded.tokenizer, s.limit)
            metrics.update(lm_metrics)
        return metrics, protocol, {"window_nll": [round(x, 6) for x in result.window_nll]}


# ============================================================================ records


def config_label(mqc: ModelQConfig | None) -> str:
    if mqc is None:
        return FULL_PRECISION
    return mqc.name or f"bits-{mqc.avg_bits:.3f}-{qconfig_hash(mqc)[:8]}"


def _packages() -> dict:
    packages = package_versions()
    try:
        packages["datasets"] = version("datasets")  # lm-eval reads its task data through it
    except PackageNotFoundError:
        pass
    return packages


def make_record(
    *,
    model: str,
    task: str,
    method: str,
    mqc: ModelQConfig | None,
    seen: bool | None,
    metrics: dict,
    per_example: dict | None,
    primary: tuple[str, bool],
    protocol: dict,
    base_hash: str,
    checkpoint_hash: str | None,
    seed: int,
    train_seconds: float | None,
    train_steps: int | None,
    setup_seconds: float,
    eval_seconds: float,
) -> dict:
    """A schema-checked results record (``coalora.evaluate.results``)."""
    record = {
        "schema": SCHEMA,
        "model": model,
        "task": task,
        "method": method,
        "config_name": config_label(mqc),
        "seen": seen,
        # The full-precision base is fp32 (see protocol.dtype).
        "avg_bits": 32.0 if mqc is None else float(mqc.avg_bits),
        "budget": None if mqc is None or mqc.budget is None else float(mqc.budget),
        "quantizer": "none" if mqc is None else mqc.quantizer,
        "metrics": metrics,
        "per_example": per_example,
        "primary_metric": primary[0],
        "higher_is_better": primary[1],
        "protocol": protocol,
        "hashes": {
            "qconfig": qconfig_hash(mqc),
            "base_weights": base_hash,
            "checkpoint": checkpoint_hash,
        },
        "seed": int(seed),
        "train_seconds": None if train_seconds is None else float(train_seconds),
        "train_steps": None if train_steps is None else int(train_steps),
        "setup_seconds": float(setup_seconds),
        "eval_seconds": float(eval_seconds),
        "packages": _packages(),
        "code_version": code_version(),
    }
    # What a reader will get back from the file (tuples become lists, and so on).
    return validate_result(json.loads(json.dumps(record)))


# ============================================================================ configurations


# A configuration item: the one configuration the trained method chose for itself
# (QLoRA-bnb's NF4), known only once the checkpoint is loaded.
TRAINED = "the method's own training configuration"


def resolve_configs(
    items: Sequence, loaded, qbase, allocation: AllocationSpec = DEFAULT_ALLOCATION
) -> list[ModelQConfig | None]:
    """Configurations from mixed items: a ``ModelQConfig``; a float (a budget: the ILP
    configuration on this model); a path (a qconfig JSON, named by its file stem unless it
    has a name); ``None`` (full precision). Every configuration must fit the model."""
    budgets = [float(x) for x in items if isinstance(x, int | float) and not isinstance(x, bool)]
    by_budget = {}
    if budgets:
        allocated = configs_for_budgets(loaded, budgets, allocation, qbase=qbase)
        by_budget = dict(zip(budgets, allocated, strict=True))
    out: list[ModelQConfig | None] = []
    for item in items:
        if item is None or item is TRAINED or isinstance(item, ModelQConfig):
            mqc = item
        elif isinstance(item, int | float) and not isinstance(item, bool):
            mqc = by_budget[float(item)]
        elif isinstance(item, str | os.PathLike):
            mqc = ModelQConfig.load(item, qbase.targets)
            mqc.name = mqc.name or Path(item).stem
        else:
            raise ValueError(f"not a configuration, budget or qconfig path: {item!r}")
        if isinstance(mqc, ModelQConfig):
            mqc.check_targets(qbase.targets, f"configuration {config_label(mqc)!r}")
        out.append(mqc)
    return out


# ============================================================================ command line


def evaluate_from_cli(args) -> None:
    """``coalora evaluate``: evaluate a checkpoint (or the bare base model) and write results.

    Flags (argparse dest in brackets; exactly one of --checkpoint / --model, and exactly one
    of --budget / --qconfig / --qconfigs / --full-precision):

    --checkpoint DIR       [checkpoint]  trained method (coalora train --out)
    --model NAME           [model]       evaluate the base model without adapter (method "none")
    --budget FLOAT         [budget]      the ILP configuration for this budget
    --qconfig FILE         [qconfig]     one configuration JSON
    --qconfigs FILE...     [qconfigs]    many configurations (nargs="+"), one process; each
                                         result goes to OUT_DIR/<qconfig file stem>.json
    --full-precision       [full_precision]  (with --model) the unquantized base
    --out FILE             [out]         result JSON (with --budget / --qconfig / --full-precision)
    --out-dir DIR          [out_dir]     result directory (with --qconfigs)
    --task NAME            [task]        default: the checkpoint's task (required with --model)
    --label NAME           [label]       (with --checkpoint) the results' method name, e.g. an
                                         ablation variant "coalora-r32"
    --limit N              [limit]       test examples / perplexity windows / lm-eval docs per task
    --lm-eval-tasks T...   [lm_eval_tasks]  (nargs="*") causal LMs: lm-eval tasks (default
                                         bible_ppl bible_mc; give the flag with no names for none)
    --lm-eval-include DIR  [lm_eval_include] (action="append") extra lm-eval task YAML dirs
    --batch-size N         [batch_size]  default 8
    --window N             [window]      perplexity window, default 2048 (capped at the model's)
    --max-length N         [max_length]  classification truncation (default: training length)
    --quantizer nf|int     [quantizer]   with --model --budget (a checkpoint uses its own)
    --fisher-task, --max-elements, --seed  as for `coalora allocate` (budgets; seed of --model)
    """
    opt = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    checkpoint, model = opt("checkpoint"), opt("model")
    if (checkpoint is None) == (model is None):
        raise ValueError("give exactly one of --checkpoint and --model")
    forms = {
        "--budget": opt("budget") is not None,
        "--qconfig": opt("qconfig") is not None,
        "--qconfigs": bool(opt("qconfigs")),
        "--full-precision": bool(opt("full_precision")),
    }
    if sum(forms.values()) != 1:
        raise ValueError("give exactly one of --budget, --qconfig, --qconfigs, --full-precision")
    if forms["--full-precision"] and checkpoint is not None:
        raise ValueError("--full-precision evaluates the base model: use it with --model")
    if forms["--qconfigs"]:
        if opt("out_dir") is None:
            raise ValueError("--qconfigs writes one file per configuration: give --out-dir")
        items = list(opt("qconfigs"))
    else:
        if opt("out") is None:
            raise ValueError("give --out (the result JSON to write)")
        items = [opt("budget") if forms["--budget"] else opt("qconfig")]
        if forms["--full-precision"]:
            items = [None]
    settings = eval_settings_from_cli(args)
    allocation = AllocationSpec(fisher_task=opt("fisher_task"), max_elements=opt("max_elements"))
    if forms["--qconfigs"]:
        # Files are named by the qconfig file's stem (what a workflow expects); the record's
        # config_name is the configuration's own name, else that stem.
        stems = [Path(p).stem for p in items]
        if len(set(stems)) != len(stems):
            raise ValueError(
                "two --qconfigs files have the same file name: their results would collide"
            )
        out_paths = [Path(opt("out_dir")) / f"{stem}.json" for stem in stems]
    else:
        out_paths = [Path(opt("out"))]
    if checkpoint is not None:
        source = Trained(checkpoint, label=opt("label"))
    else:
        if opt("task") is None:
            raise ValueError("--model needs --task")
        source = BareBase(model, seed=opt("seed") or 0, quantizer=opt("quantizer") or "nf")
    records = evaluate_configs(source, items, opt("task"), out_paths, settings, allocation)
    for path, record in zip(out_paths, records, strict=True):
        print(summary_line(path, record))


def eval_settings_from_cli(args) -> EvalSettings:
    """The evaluation options of ``coalora evaluate`` / ``coalora train --evaluate-out``."""
    opt = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    lm_eval_tasks = opt("lm_eval_tasks")
    return EvalSettings(
        batch_size=opt("batch_size") or 8,
        max_length=opt("max_length"),
        window=opt("window") or DEFAULT_WINDOW,
        limit=opt("limit"),
        lm_eval_tasks=None if lm_eval_tasks is None else list(lm_eval_tasks),
        lm_eval_include=opt("lm_eval_include") or (),
    )


def evaluate_trained_from_cli(args) -> None:
    """``coalora train --evaluate-out FILE``: evaluate the checkpoint just written under the
    configuration it was trained on (``--qconfig`` or ``--budget``; for a method that chooses
    its own configuration, that one), as ``coalora evaluate`` would, in the same process (one
    start-up and import instead of two)."""
    own = get_method(args.method).serves
    if args.qconfig is not None or args.budget is not None:
        item = args.qconfig if args.qconfig is not None else args.budget
    elif own == Serves.FULL_PRECISION:
        item = None
    elif own == Serves.FIXED_CONFIGURATION:
        item = TRAINED
    else:
        raise ValueError(
            "--evaluate-out evaluates a run under its one configuration: give --qconfig or "
            f"--budget (method {args.method!r} serves {own} configurations)"
        )
    allocation = AllocationSpec(fisher_task=args.fisher_task, max_elements=args.max_elements)
    source = Trained(args.out, label=args.label)
    settings = eval_settings_from_cli(args)
    (record,) = evaluate_configs(
        source, [item], None, [Path(args.evaluate_out)], settings, allocation
    )
    print(summary_line(args.evaluate_out, record))


def summary_line(path, record: dict) -> str:
    primary = record["primary_metric"]
    return (
        f"wrote {path}: {record['method']} {record['config_name']} "
        f"avg_bits {record['avg_bits']:.3f} {primary} {record['metrics'][primary]:.4f} "
        f"(set-up {record['setup_seconds']:.2f} s, eval {record['eval_seconds']:.1f} s)"
    )
