"""Evaluation of every configuration (docs/method.md section 7), one JSON result per evaluation.

- ``run``: ``evaluate_configs`` (a trained checkpoint, many configurations, one process),
  ``evaluate_base`` (the base model without adapter, and the full-precision reference),
  ``evaluate_from_cli`` (``coalora evaluate``).
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
from .run import EvalSettings, evaluate_base, evaluate_configs, evaluate_from_cli

__all__ = [
    "EMBEDDED_TASKS",
    "SCHEMA",
    "EvalSettings",
    "LMEvalSuite",
    "PerplexityResult",
    "classification_metrics",
    "embedded_tasks_dir",
    "evaluate_base",
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
