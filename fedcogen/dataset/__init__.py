"""The synthetic federation (one module per concept, re-exported here): deterministic synthetic federation of private personalised-writing users (CoGenesis-style).

No public data set pairs a *public* writing instruction with the *private* context a user's own
device holds, so this package generates one, modelled on the personalised writing tasks of
CoGenesis (arXiv 2403.03129). Every user is one federated client with

* a private **profile**: name, relatives (relation + first name), city, employer and role, a
  manager, a schedule of appointments (who, day and time), one health detail (condition +
  medication), one money detail (item + amount), hobbies, and a writing **style** (greeting,
  opener, sign-off, favourite phrases, formality, typical length, emoji/hashtag habits);
* a private **history** of past texts written in that style (causal-LM training data), some of
  which carry the user's **canaries** (random secrets for secret-sharer exposure experiments);
* **tasks** (email, text message, social media post, short article) split into train/val/test.
  A task's ``instruction`` never contains a private value (it is what the cloud may see), the
  ``private_context`` holds the facts needed (it never leaves the device), the ``reference`` uses
  those facts in the user's style, and ``private_facts`` lists the fact strings a good answer
  uses and that must not leak.

Users differ naturally (non-IID): styles, lengths, task-kind mixes and facts are drawn per user.
Instructions are built only from public template slots (``{relation}``, ``{timeframe}`` plus tone
and length hints); this is checked when :mod:`fedcogen.dataset.scenarios` is imported, and :func:`find_leaks` checks the
generated data (normalised substring match of every user's private values in every instruction,
canaries only inside their owner's training history).

Determinism: each user is drawn from ``random.Random(f"...:{seed}:{user_id}:...")`` objects (no
global RNG, string seeds are hashed with SHA-512 so ``PYTHONHASHSEED`` does not matter), JSON is
written with ``sort_keys=True``. Same seed -> byte-identical files; user *i* depends only on users
``< i`` (for name uniqueness), so growing ``n_users`` keeps the earlier users unchanged.

Output folder (:func:`write_federation`)::

    manifest.json          format_version, generator, seed, n_users, config, counts per split/kind,
                           and for every file below: sha256, bytes and record count
    profiles.jsonl         one private profile per user; ``private_values`` lists every private
                           field value explicitly (for privacy attacks / leak checks)
    history.jsonl          past texts {user_id, text_id, kind, text}; training only; the only file
                           that contains canaries, each only in its owner's texts
    train.jsonl            task records {user_id, task_id, task_type, scenario, instruction,
    val.jsonl              private_context, reference, private_facts, split}; this is also the
    test.jsonl             public ``fedcogen eval`` JSONL format (user_id, instruction,
                           private_context, reference required; private_facts, task_type optional)
    private/canaries.json  {"canaries": {user_id: [canary, ...]}, "planted_in": {...},
                           "format": {...}}: kept apart so nothing else needs to read it

A canary is ``"<prefix> <SECRET>"`` (e.g. ``"my locker code is K7Q-4829"``) whose secret follows
:data:`CANARY_PATTERN`; it is planted as ``"P.S. Note to self: <canary>."`` at the end of history
texts. :func:`canary_records` gives attack-ready records (prefix as trained, secret, prompt) and
:func:`random_canary_like` draws same-format alternatives for exposure.

Main API: :class:`FederationConfig`, :func:`generate_federation`, :func:`write_federation`,
the word pools in :mod:`fedcogen.dataset.pools`, :func:`load_federation`, :func:`validate_task_file` (+ :class:`DataValidationError`),
:func:`client_examples`, :func:`to_hf_dataset`, :func:`partition_by_user`, :func:`user_ids`,
:func:`find_leaks`, :func:`canary_records`, :func:`random_canary_like`.
"""

from __future__ import annotations

from fedcogen.dataset.build import generate_federation
from fedcogen.dataset.canaries import canary_records, canary_secret, load_canaries, random_canary_like
from fedcogen.dataset.examples import client_examples, partition_by_user, swap_private_values, to_hf_dataset
from fedcogen.dataset.files import load_federation, write_federation
from fedcogen.dataset.leaks import find_leaks, private_values
from fedcogen.dataset.pools import LENGTHS
from fedcogen.dataset.schema import (
    CANARIES_FILE,
    CANARY_PATTERN,
    FORMAT_VERSION,
    KIND_LABELS,
    MANIFEST_FILE,
    PROFILES_FILE,
    SPLITS,
    TASK_FILES,
    TASK_KINDS,
    VARIETIES,
    DataValidationError,
    Federation,
    FederationConfig,
    HistoryText,
    TaskRecord,
    UserProfile,
    make_user_id,
    user_ids,
)
from fedcogen.dataset.validate import validate_task_file
from fedcogen.dataset.variety import distinct_n, template_reuse, variety_report
from fedcogen.dataset.vocabulary import names_and_places

__all__ = [
    "CANARIES_FILE",
    "CANARY_PATTERN",
    "DataValidationError",
    "FORMAT_VERSION",
    "Federation",
    "FederationConfig",
    "HistoryText",
    "KIND_LABELS",
    "MANIFEST_FILE",
    "PROFILES_FILE",
    "SPLITS",
    "TASK_FILES",
    "TASK_KINDS",
    "VARIETIES",
    "TaskRecord",
    "UserProfile",
    "make_user_id",
    "user_ids",
    "LENGTHS",
    "canary_records",
    "canary_secret",
    "load_canaries",
    "random_canary_like",
    "generate_federation",
    "find_leaks",
    "private_values",
    "load_federation",
    "write_federation",
    "validate_task_file",
    "client_examples",
    "partition_by_user",
    "swap_private_values",
    "to_hf_dataset",
    "distinct_n",
    "template_reuse",
    "variety_report",
    "names_and_places",
]
