"""The public corpus the cloud provider trains on: generated users disjoint from the federation.

Why this shape: CoGenesis's premise is a cloud that writes well with the context and poorly without
it. Our cloud is the same 135M network as the device and has never seen this kind of writing, so it
does not write better than the device (issue 27). The provider may train on anything public, and the
generator can draw as many fake users as it likes; what it must not do is train on a federation user.
So the corpus is drawn with its own seed, users whose name equals any federation user's are dropped,
and each task is turned into one of two public views (both under the cloud's own system prompt,
because that is how the cloud is asked):

* **with context** (``device_prompt(instruction, context)`` -> reference): the fake user's facts and
  style are public here, so the cloud learns to read a context and write in its style. This is the
  skill the privacy-violating upper bound (``cloud_with_context``) measures.
* **instruction only** (``cloud_prompt(instruction)`` -> reference with every private value replaced
  by a typed placeholder such as ``[city]`` or ``[sister's name]``): the cloud learns the structure,
  tone and format of each kind of text without learning to invent private facts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedcogen.dataset import Federation, FederationConfig, TaskRecord, UserProfile, generate_federation
from fedcogen.prompts import cloud_prompt, device_prompt

DEFAULT_RECIPE = Path(__file__).with_name("recipe.json")


@dataclass(frozen=True)
class CloudRecipe:
    """Everything that decides the trained cloud adapter; its digest names the cached artifact."""

    base_model: str = "smollm2"
    public_seed: int = 2027  # the demo and every experiment draw their federation with seed 0
    public_users: int = 160
    tasks_per_user: int = 8
    context_share: float = 0.5  # share of tasks shown with their (public, fake) context
    # the federations the corpus must stay disjoint from: (seed, users) of the demo and the sweeps
    exclude_seed: int = 0
    exclude_users: int = 64
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    # LoRA on the top layers only: backward stops there, so a step costs ~30 % less on 2 shared cores
    lora_first_layer: int = 20
    steps: int = 35
    batch_size: int = 4
    lr: float = 3e-3
    max_seq_len: int = 320
    seed: int = 0

    def __post_init__(self) -> None:
        if self.public_seed == self.exclude_seed:
            raise ValueError(f"public_seed {self.public_seed} is the federation's seed: the corpus must be disjoint")
        if not 0.0 <= self.context_share <= 1.0:
            raise ValueError(f"context_share must be in [0, 1] (got {self.context_share})")
        if self.lora_first_layer < 0:
            raise ValueError(f"lora_first_layer must be >= 0 (got {self.lora_first_layer})")
        for name in ("public_users", "tasks_per_user", "steps", "batch_size", "lora_r", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe field {name} must be >= 1 (got {getattr(self, name)})")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0 (got {self.lr})")

    def digest(self) -> str:
        """sha256 of the recipe (sorted JSON): the cache key and the artifact's name."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @classmethod
    def load(cls, path: str | Path = DEFAULT_RECIPE) -> CloudRecipe:
        """Read a recipe file; unknown keys are an error (a typo must not silently train another recipe)."""
        data = json.loads(Path(path).read_text())
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown recipe keys {unknown} (known: {sorted(known)})")
        return cls(**data)


def federation_names(seed: int, users: int) -> set[str]:
    """Full names of a federation's users (what the public corpus must not share)."""
    fed = generate_federation(FederationConfig(n_users=users, seed=seed, canaries_per_user=0))
    return {p.name for p in fed.profiles}


def public_federation(recipe: CloudRecipe) -> tuple[Federation, list[str]]:
    """The public users' federation and the ids of the users kept (those not sharing a federation name)."""
    cfg = FederationConfig(n_users=recipe.public_users, seed=recipe.public_seed, history_per_user=6,
                           train_tasks_per_user=recipe.tasks_per_user, val_tasks_per_user=0,
                           test_tasks_per_user=0, canaries_per_user=0)
    fed = generate_federation(cfg)
    taken = federation_names(recipe.exclude_seed, recipe.exclude_users)
    return fed, [p.user_id for p in fed.profiles if p.name not in taken]


def placeholders(profile: UserProfile) -> dict[str, str]:
    """Every private value of a profile -> a typed placeholder a reader (or the device) can fill in."""
    out = {profile.name: "[my name]", profile.first_name: "[my first name]", profile.last_name: "[my last name]",
           profile.city: "[city]", profile.employer: "[employer]", profile.role: "[job]",
           profile.manager: "[manager's name]", profile.health["condition"]: "[health condition]",
           profile.health["medication"]: "[medication]", profile.money["item"]: "[purchase]",
           profile.money["amount"]: "[amount]"}
    for r in profile.relatives:
        out[r["name"]] = f"[{r['relation']}'s name]"
    for s in profile.schedule:
        out[s["with"]] = f"[{s['what']} with]"
        out[f"{s['day']} at {s['time']}"] = "[day and time]"
    for h in profile.hobbies:
        out[h] = "[hobby]"
    return {k: v for k, v in out.items() if k}


def mask_private(text: str, profile: UserProfile) -> str:
    """``text`` with every private value of ``profile`` replaced by its placeholder (longest first, so
    "Dr Okafor" is not half-replaced through "Okafor")."""
    pairs = sorted(placeholders(profile).items(), key=lambda kv: -len(kv[0]))
    for i, (value, _label) in enumerate(pairs):
        text = text.replace(value, f"\x00{i}\x00")
    for i, (_value, label) in enumerate(pairs):
        text = text.replace(f"\x00{i}\x00", label)
    return text


def _with_context(task: TaskRecord, recipe: CloudRecipe) -> bool:
    """A seeded, per-task choice of view (stable when the corpus grows)."""
    h = hashlib.sha256(f"{recipe.seed}:{task.task_id}".encode()).digest()
    return int.from_bytes(h[:4], "big") / 2**32 < recipe.context_share


def public_examples(recipe: CloudRecipe) -> list[dict[str, Any]]:
    """The training examples: ``{"user_id", "task_id", "view", "prompt", "target"}``, prompts for the
    cloud's system prompt (``view`` is ``context`` or ``instruction``)."""
    fed, kept = public_federation(recipe)
    keep = set(kept)
    out = []
    for task in fed.tasks["train"]:
        if task.user_id not in keep:
            continue
        profile = fed.profile(task.user_id)
        if _with_context(task, recipe):
            out.append({"user_id": task.user_id, "task_id": task.task_id, "view": "context",
                        "prompt": device_prompt(task.instruction, task.private_context), "target": task.reference})
        else:
            out.append({"user_id": task.user_id, "task_id": task.task_id, "view": "instruction",
                        "prompt": cloud_prompt(task.instruction), "target": mask_private(task.reference, profile)})
    return out
