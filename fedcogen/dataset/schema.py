"""The federation's on-disk schema: file names, splits, task kinds and the record dataclasses.

Shared by the generator, the reader/writer and the validator, and by every reader of a user's data
(the Flower client app, the secure-aggregation app, the simulations).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fedcogen.dataset.rich_tasks import RICH_KIND_LABELS

FORMAT_VERSION = 1
GENERATOR = "fedcogen.dataset"
# Hashed into every per-user random stream: the generator's first home, kept when it moved so that a seed
# still gives exactly the federation it gave before (figures stay comparable across versions).
SEED_NAMESPACE = "fedcogen.simulations.data"
SPLITS: tuple[str, ...] = ("train", "val", "test")
TASK_KINDS: tuple[str, ...] = ("email", "message", "social_post", "article")
#: How a kind is named inside prompts ("Write a social media post in my usual style."): the basic kinds,
#: then the kinds only the rich federation writes (``FederationConfig.variety = "rich"``).
KIND_LABELS: dict[str, str] = {
    "email": "email",
    "message": "text message",
    "social_post": "social media post",
    "article": "short article",
    **{k: v for k, v in RICH_KIND_LABELS.items() if k not in TASK_KINDS},
}
#: Generator variants: ``basic`` = the original 18 scenarios and one context layout (figures of earlier
#: runs were measured on it); ``rich`` = many task kinds, context formats, fact kinds and free-text history.
VARIETIES: tuple[str, ...] = ("basic", "rich")
TASK_FILES: dict[str, str] = {s: f"{s}.jsonl" for s in SPLITS}
PROFILES_FILE = "profiles.jsonl"
HISTORY_FILE = "history.jsonl"
CANARIES_FILE = "private/canaries.json"
MANIFEST_FILE = "manifest.json"

# --------------------------------------------------------------------------- canary format
#: Secret shape: ``A`` = one of :data:`CANARY_ALPHABETS["A"]`, ``D`` = a digit, anything else literal.
CANARY_PATTERN = "AAA-DDDD"
CANARY_ALPHABETS: dict[str, str] = {"A": "ABCDEFGHJKLMNPQRSTUVWXYZ23456789", "D": "0123456789"}
CANARY_PREFIXES: tuple[str, ...] = (
    "my locker code is",
    "the alarm code at home is",
    "my bike lock combination is",
    "the wifi password at the cabin is",
    "my gym membership PIN is",
    "the key safe by the back door opens with",
    "my backup recovery code is",
    "the storage unit code is",
)
#: Number of distinct secrets of the canary format (the exposure denominator |R|).
CANARY_SPACE_SIZE = 1
for _c in CANARY_PATTERN:
    CANARY_SPACE_SIZE *= len(CANARY_ALPHABETS.get(_c, "x"))


# --------------------------------------------------------------------------- records
class DataValidationError(ValueError):
    """A data file is malformed. The message names file, line and field, e.g.
    ``test.jsonl:7: field 'instruction': missing``; ``problems`` lists every (line, field, reason)."""

    def __init__(self, path: str | Path, problems: list[tuple[int, str, str]]):
        self.path = Path(path)
        self.problems = list(problems)
        line, fld, reason = self.problems[0]
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        where = f"{self.path.name}:{line}" if line else self.path.name
        super().__init__(f"{where}: field '{fld}': {reason}{more}")


@dataclass
class TaskRecord:
    """One writing task; also the public ``fedcogen eval`` JSONL record.

    ``instruction`` is what the cloud may see; ``private_context`` and ``private_facts`` never leave
    the device. ``task_id``, ``task_type``, ``scenario``, ``split`` and ``private_facts`` are optional
    in hand-written eval files.
    """

    user_id: str
    instruction: str
    private_context: str
    reference: str
    task_id: str = ""
    task_type: str = ""
    private_facts: list[str] = field(default_factory=list)
    split: str = ""
    scenario: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HistoryText:
    """A past text of the user (training data on their device only)."""

    user_id: str
    text_id: str
    kind: str
    text: str


@dataclass
class UserProfile:
    """A user's private profile. ``private_values`` lists every private field value (not canaries,
    which live apart in ``private/canaries.json``), for leak checks and attribute-inference attacks."""

    user_id: str
    name: str
    first_name: str
    last_name: str
    city: str
    employer: str
    role: str
    manager: str
    relatives: list[dict[str, str]]
    schedule: list[dict[str, str]]
    health: dict[str, str]
    money: dict[str, str]
    hobbies: list[str]
    style: dict[str, Any]
    kind_mix: dict[str, float]
    private_values: list[str]
    #: rich federation only: birthday, habit, pet, street, hosted event (all also in ``private_values``)
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> UserProfile:
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in obj]
        if missing:
            raise KeyError(missing[0])
        return cls(**{f.name: obj[f.name] for f in fields(cls) if f.name in obj})


@dataclass
class FederationConfig:
    """Size and seed of a synthetic federation. ``canary_repeats`` = how many training texts carry
    each canary (secret-sharer exposure grows with repetitions)."""

    n_users: int = 16
    seed: int = 0
    history_per_user: int = 24
    train_tasks_per_user: int = 16
    val_tasks_per_user: int = 4
    test_tasks_per_user: int = 4
    canaries_per_user: int = 2
    canary_repeats: int = 1
    #: "basic" (default: the generator every earlier figure was measured on) or "rich" (issue 26)
    variety: str = "basic"
    # rich only, each switchable so an ablation can tell which part matters:
    max_context_words: int = 1400  # longest private context (~2,000 SmolLM2 tokens)
    distractor_facts: int = 4  # up to this many profile facts the task does not need, in its context
    absent_fact_percent: int = 15  # tasks whose context lacks one fact; the reference must not invent it
    format_variety: bool = True  # profiles as key-value lines of any key style, prose, JSON or YAML

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            kind = type(f.default)
            if kind is int and (not isinstance(v, int) or isinstance(v, bool)):
                raise ValueError(f"FederationConfig.{f.name} must be an int, got {v!r}")
            if kind is not int and not isinstance(v, kind):
                raise ValueError(f"FederationConfig.{f.name} must be a {kind.__name__}, got {v!r}")
            if kind is int and f.name != "seed" and v < 0:
                raise ValueError(f"FederationConfig.{f.name} must be >= 0, got {v}")
        if self.variety not in VARIETIES:
            raise ValueError(f"FederationConfig.variety must be one of {', '.join(VARIETIES)}, got {self.variety!r}")
        if self.absent_fact_percent > 100:
            raise ValueError(f"FederationConfig.absent_fact_percent must be <= 100, got {self.absent_fact_percent}")
        if self.max_context_words < 50:
            raise ValueError(f"FederationConfig.max_context_words must be >= 50, got {self.max_context_words}")
        if self.n_users < 1:
            raise ValueError("FederationConfig.n_users must be at least 1")
        if self.canaries_per_user and self.canary_repeats < 1:
            raise ValueError("FederationConfig.canary_repeats must be >= 1 when canaries are planted")
        need = self.canaries_per_user * self.canary_repeats
        if need > self.history_per_user:
            raise ValueError(
                f"{self.canaries_per_user} canaries x {self.canary_repeats} repeats need {need} history texts "
                f"per user, but history_per_user is {self.history_per_user}"
            )
        if self.canaries_per_user > len(CANARY_PREFIXES):
            raise ValueError(f"at most {len(CANARY_PREFIXES)} canaries per user (distinct prefixes)")

    def tasks_per_split(self) -> dict[str, int]:
        return {"train": self.train_tasks_per_user, "val": self.val_tasks_per_user,
                "test": self.test_tasks_per_user}


@dataclass
class Federation:
    """Everything generated for one seed: profiles, history, tasks per split and canaries."""

    config: FederationConfig
    profiles: list[UserProfile]
    history: list[HistoryText]
    tasks: dict[str, list[TaskRecord]]
    canaries: dict[str, list[str]]
    planted_in: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def profile(self, user_id: str) -> UserProfile:
        for p in self.profiles:
            if p.user_id == user_id:
                return p
        raise ValueError(f"unknown user id '{user_id}' (known: {', '.join(user_ids(self))})")

    def history_of(self, user_id: str) -> list[HistoryText]:
        return [h for h in self.history if h.user_id == user_id]

    def tasks_of(self, user_id: str, split: str = "train") -> list[TaskRecord]:
        return [t for t in split_tasks(self, split) if t.user_id == user_id]


def user_ids(fed: Federation) -> list[str]:
    """User ids in stable order (``user-00``, ``user-01``, ...; zero padded so they also sort)."""
    return [p.user_id for p in fed.profiles]


def make_user_id(index: int, n_users: int) -> str:
    return f"user-{index:0{max(2, len(str(n_users - 1)))}d}"


def split_tasks(fed: Federation, split: str) -> list[TaskRecord]:
    if split not in fed.tasks:
        raise ValueError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")
    return fed.tasks[split]
