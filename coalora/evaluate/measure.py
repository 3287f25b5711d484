"""What is measured on one task, and how: ``EvalSettings`` (recorded in each result's
``protocol``) and ``TaskMeasure``, which measures a model as it is now.

What is measured depends on the task's kind:

- classification (encoders, sequence classifiers): accuracy and F1 on the test split
  (``classification.py``); the primary metric is the task's own (``spec.metric``);
- language modelling (causal LMs): GPTQ-style perplexity on the test split
  (``perplexity.py``, primary) plus lm-eval-harness tasks, by default the embedded
  ``bible_ppl`` and ``bible_mc`` (``lm_eval_tasks.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .. import precision
from ..data import TASKS, TaskData, lm_token_ids, load_task
from .classification import evaluate_classifier, split_batches
from .lm_eval_tasks import EMBEDDED_TASKS, LMEvalSuite
from .perplexity import DEFAULT_WINDOW, perplexity, window_length

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
    # lm-eval docs per task when it should differ from ``limit`` (None: ``limit``): a causal
    # experiment may want a few perplexity windows but a few hundred lm-eval items.
    lm_eval_limit: int | None = None
    # lm-eval tasks for causal LMs (None: the embedded ones; () or []: none).
    lm_eval_tasks: Sequence[str] | None = None
    lm_eval_include: Sequence[str] = field(default_factory=tuple)  # extra task YAML dirs
    # bf16 | fp32 | auto (bf16 where the device has bf16 matrix units): the dtype the frozen
    # model is held and the passes run in; metrics are reduced in fp32 (coalora.precision).
    compute_dtype: str = "auto"

    @property
    def lm_eval_docs(self) -> int | None:
        """lm-eval documents per task (``lm_eval_limit``, else ``limit``)."""
        return self.limit if self.lm_eval_limit is None else self.lm_eval_limit

    def __post_init__(self):
        for name in (
            "batch_size",
            "ppl_batch_size",
            "window",
            "max_length",
            "limit",
            "lm_eval_limit",
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"evaluation setting {name!r} must be a positive integer, got {value!r}"
                )
        precision.check_setting(self.compute_dtype, "evaluation setting 'compute_dtype'")
        if self.lm_eval_tasks is not None:
            self.lm_eval_tasks = tuple(self.lm_eval_tasks)
        self.lm_eval_include = tuple(str(p) for p in self.lm_eval_include)


def load_eval_task(name: str, settings: EvalSettings) -> TaskData:
    # For classification the limit is a stratified sample of the test split; for language
    # modelling it caps windows and lm-eval documents instead (the token stream stays whole).
    spec = TASKS.get(name)
    task = None if spec else load_task(name)  # local:<dir>: its kind is known once loaded
    kind = spec.kind if spec else task.spec.kind
    if kind == "classification" and settings.limit is not None:
        return load_task(name, max_eval=settings.limit)
    return task or load_task(name)


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
            lm_metrics, protocol["lm_eval"] = self.suite.run(
                model, self.loaded.tokenizer, s.lm_eval_docs
            )
            metrics.update(lm_metrics)
        return metrics, protocol, {"window_nll": [round(x, 6) for x in result.window_nll]}
