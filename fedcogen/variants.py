"""The CoGenesis generation variants: one list for the device, the CLI, the evaluation and the reports.

Kept in the core package (no torch) so that ``fedcogen --help`` can list them without loading a model.
"""

from __future__ import annotations

#: What the device-side generator can run (``client/cogen/cogen_device.py``; the one list, the device imports it).
VARIANTS: tuple[str, ...] = ("device", "cloud", "sketch", "logit", "gated", "draft_edit", "cloud_with_context")
#: The device model with the federated LoRA adapter (evaluation only; needs an adapter).
PERSONALISED_VARIANT = "device_personalised"
#: The privacy-violating upper bound: the cloud gets the private context (evaluation only).
EVAL_ONLY_VARIANT = "cloud_with_context"
#: The collaboration variants: with an adapter they run on the personalised device (the question is whether the
#: cloud helps the personalised device; ``simulations/evaluation/cogen_generator.py``).
COLLABORATIVE_VARIANTS: tuple[str, ...] = ("sketch", "logit", "gated", "draft_edit")
#: Variants that call the cloud.
CLOUD_VARIANTS: frozenset[str] = frozenset(v for v in VARIANTS if v != "device")
#: What ``fedcogen eval`` runs when no ``--variants`` are given (no adapter, no upper bound).
DEFAULT_EVAL_VARIANTS: tuple[str, ...] = tuple(v for v in VARIANTS if v != EVAL_ONLY_VARIANT)
#: Row order of the reports: baselines first, then the collaboration variants, the upper bound last.
REPORT_ORDER: tuple[str, ...] = ("cloud", "device", PERSONALISED_VARIANT, "sketch", "logit", "gated", "draft_edit",
                                 EVAL_ONLY_VARIANT)
