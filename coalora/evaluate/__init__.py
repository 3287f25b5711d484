"""Evaluation of every configuration (docs/method.md section 7), one JSON result per evaluation.

- ``driver``: ``evaluate_configs``, the one driver: a model loaded once from a source under
  many configurations, one process.
- ``sources``: the sources (``Trained``: a checkpoint; ``BareBase``: the base model without
  adapter, including the full-precision reference).
- ``configs``: configurations from budgets, qconfig files, full precision (``resolve_configs``).
- ``measure``: ``EvalSettings`` and ``TaskMeasure`` (what a task measures, and how).
- ``records``: ``make_record``, one result's record.
- ``run``: the command-line entry points, ``evaluate_from_cli`` (``coalora evaluate``) and
  ``evaluate_trained_from_cli`` (``coalora train --evaluate-out``).
- ``classification``: accuracy and F1 of sequence classifiers.
- ``perplexity``: GPTQ-style perplexity over fixed non-overlapping windows.
- ``lm_eval_tasks``: lm-evaluation-harness on the in-memory model; the embedded offline tasks
  ``bible_ppl`` and ``bible_mc``.
- ``results``: the results schema, its writer and readers (``read_result``, ``read_results``).
"""

from .classification import classification_metrics, evaluate_classifier
from .driver import evaluate_configs
from .lm_eval_tasks import EMBEDDED_TASKS, LMEvalSuite, embedded_tasks_dir
from .measure import EvalSettings
from .perplexity import PerplexityResult, perplexity, window_length
from .results import SCHEMA, read_result, read_results, validate_result, write_result
from .run import evaluate_from_cli
from .sources import BareBase, ModelSource, Trained

__all__ = [
    "EMBEDDED_TASKS",
    "SCHEMA",
    "BareBase",
    "EvalSettings",
    "LMEvalSuite",
    "ModelSource",
    "PerplexityResult",
    "Trained",
    "classification_metrics",
    "embedded_tasks_dir",
    "evaluate_classifier",
    "evaluate_configs",
    "evaluate_from_cli",
    "perplexity",
    "read_result",
    "read_results",
    "validate_result",
    "window_length",
    "write_result",
]
