"""Evaluation of every configuration (docs/method.md section 7), one JSON result per evaluation.

- ``run``: ``evaluate_configs``, the one driver: a model loaded once from a source
  (``Trained``: a checkpoint; ``BareBase``: the base model without adapter, including the
  full-precision reference) under many configurations, one process; ``evaluate_from_cli``
  (``coalora evaluate``).
- ``classification``: accuracy and F1 of sequence classifiers.
- ``perplexity``: GPTQ-style perplexity over fixed non-overlapping windows.
- ``lm_eval_tasks``: lm-evaluation-harness on the in-memory model; the embedded offline tasks
  ``bible_ppl`` and ``bible_mc``.
- ``results``: the results schema, its writer and readers (``read_result``, ``read_results``).
"""

from .classification import classification_metrics, evaluate_classifier
from .lm_eval_tasks import EMBEDDED_TASKS, LMEvalSuite, embedded_tasks_dir
from .perplexity import PerplexityResult, perplexity, window_length
from .results import SCHEMA, read_result, read_results, validate_result, write_result
from .run import (
    BareBase,
    EvalSettings,
    ModelSource,
    Trained,
    evaluate_configs,
    evaluate_from_cli,
)

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
