"""The rich federation (``FederationConfig.variety = "rich"``): many task kinds, profiles in several formats,
free-text histories of varied length, and facts of several kinds that appear in a reference only where the
task calls for them.

Why: an adapter trained on the basic generator repeats its template sentences and its names on users
written by someone else (issue 26). Here every context is laid out differently (key-value lines in one of
six key styles, prose, JSON or YAML; ``format_variety``), carries facts the task does not need
(``distractor_facts``), sometimes lacks a fact the task would use, and then the reference says it without
the value (``absent_fact_percent``: teaches not to invent), and is followed by a free-text writing history
of 0 to ``max_context_words`` words. Deterministic like the basic writer: one ``random.Random`` per user and
purpose, the basic profile as a base (same names for the same seed) plus extra facts from their own stream.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from fedcogen.dataset.generator import (
    article,
    dedupe,
    make_profile,
    one_line_sign_off,
    plant_canaries,
    task_slots,
    user_rng,
)
from fedcogen.dataset.pools import LENGTH_HINTS, TONE_HINTS, TONES
from fedcogen.dataset.rich_pools import (
    CONTEXT_FORMATS,
    CONTRACTIONS,
    EVENT_KINDS,
    GENERIC_CLOSINGS,
    GENERIC_OPENERS,
    HABITS,
    KEY_STYLES,
    LEADS,
    MARKERS,
    MONTHS,
    NOTE_OPENERS,
    PET_KINDS,
    PET_NAMES,
    PLACES_PUBLIC,
    PRODUCTS,
    RECIPIENT_ROLES,
    STREETS,
    SYNONYMS,
    TAILS,
    TOPICS,
    VENUES,
)
from fedcogen.dataset.rich_tasks import ABSENT_SENTENCES, FACT_SENTENCES, TASKS, RichTask
from fedcogen.dataset.schema import FederationConfig, HistoryText, TaskRecord, UserProfile

#: Where a fact slot lives in a context: slots that share a line (an appointment's who and when).
ITEM_OF_SLOT: dict[str, str] = {"appt_with": "appointment", "appt_when": "appointment", "money_item": "money",
                                "money_amount": "money", "venue": "event", "event_date": "event",
                                "pet_name": "pet"}
#: Context items a profile can show, in a stable order (the style line is added apart).
ITEMS: tuple[str, ...] = ("rel_name", "city", "employer", "role", "manager", "appointment", "hobby", "condition",
                          "medication", "money", "birthday", "habit", "pet", "street", "event")
#: Key synonyms per item: each context names its facts its own way.
KEYS: dict[str, tuple[str, ...]] = {
    "name": ("name", "me", "full name", "who I am"),
    "city": ("home city", "location", "lives in", "city"),
    "employer": ("employer", "works at", "company"),
    "role": ("job", "occupation", "role"),
    "manager": ("manager", "boss", "line manager"),
    "appointment": ("appointment", "calendar", "upcoming"),
    "hobby": ("hobby", "free time", "pastime"),
    "condition": ("health", "condition", "medical"),
    "medication": ("medication", "meds", "takes"),
    "money": ("money", "finances", "pending payment"),
    "birthday": ("birthday", "born on"),
    "habit": ("habit", "routine", "daily habit"),
    "pet": ("pet", "animal at home"),
    "street": ("address", "home address", "street"),
    "event": ("event", "hosting", "upcoming event"),
    "style": ("writing style", "style", "how I write"),
}
PROSE: dict[str, tuple[str, ...]] = {
    "name": ("My name is {v}.", "I'm {v}.", "This is {v}."),
    "city": ("I live in {v}.", "Home is {v}.", "I'm based in {v}."),
    "employer": ("I work at {v}.", "My employer is {v}."),
    "role": ("I work as {a}.", "By trade I'm {a}."),
    "manager": ("My manager is {v}.", "I report to {v}."),
    "appointment": ("Coming up: {v}.", "In my calendar: {v}."),
    "hobby": ("In my free time: {v}.", "I love {v}."),
    "condition": ("Health-wise I deal with {v}.", "I have {v}."),
    "medication": ("I take {v}.", "My medication: {v}."),
    "money": ("Money on my mind: {v}.", "Waiting on: {v}."),
    "birthday": ("My birthday is {v}.", "I was born on {v}."),
    "habit": ("I keep up {v}.", "One habit of mine: {v}."),
    "pet": ("At home: {v}.", "I share my flat with {v}."),
    "street": ("I live at {v}.", "My address is {v}."),
    "event": ("I'm hosting: {v}.", "Planning: {v}."),
    "style": ("How I write: {v}.", "My writing style: {v}."),
}
HEADERS: tuple[str, ...] = ("", "About me:", "Profile", "My details", "PERSONAL NOTES", "Things to know about me")
HISTORY_HEADERS: tuple[str, ...] = ("Past writing:", "Some things I wrote recently:", "Notes and messages:",
                                    "Writing history", "From my notebook:")
AUDIENCE_HINTS: tuple[str, ...] = ("", "", " It is for people who know me well.", " Write it in the first person.",
                                   " Use my own voice.")


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)}"


def make_rich_profile(user_id: str, seed: int, taken_names: set[str]) -> UserProfile:
    """The basic profile (same names for the same seed) plus the rich fact kinds and the user's voice."""
    p = make_profile(user_id, seed, taken_names)
    rng = user_rng(seed, user_id, "rich-profile")
    pet_kind, event_kind = rng.choice(PET_KINDS), rng.choice(EVENT_KINDS)
    birthday = _date(rng)
    event_date = _date(rng)
    while event_date == birthday:
        event_date = _date(rng)
    p.extra = {"birthday": birthday, "habit": rng.choice(HABITS), "pet_kind": pet_kind,
               "pet_name": rng.choice(PET_NAMES), "street": rng.choice(STREETS), "venue": rng.choice(VENUES),
               "event_kind": event_kind, "event_date": event_date}
    p.style = {**p.style,
               "context_format": rng.choice(CONTEXT_FORMATS), "key_style": rng.choice(KEY_STYLES),
               "contractions": rng.random() < 0.5, "topics": rng.sample(sorted(TOPICS), 3),
               # the user's voice: one word choice per synonym set, a few discourse markers and their rate,
               # and the generic openers and closings this user reaches for
               "voice": {"words": {w: rng.choice(alts) for w, alts in SYNONYMS.items()},
                         "markers": rng.sample(MARKERS, 3), "marker_rate": round(rng.uniform(0.1, 0.4), 2),
                         "exclaim": rng.random() < (0.5 if p.style["formality"] == "casual" else 0.1),
                         "openers": rng.sample(GENERIC_OPENERS, 3), "closings": rng.sample(GENERIC_CLOSINGS, 3),
                         "leads": rng.sample(LEADS, 4), "tails": rng.sample(TAILS, 4),
                         "lead_rate": round(rng.uniform(0.05, 0.3), 2), "tail_rate": round(rng.uniform(0.05, 0.3), 2)}}
    p.private_values = dedupe([*p.private_values, birthday, p.extra["habit"], p.extra["pet_name"],
                               p.extra["street"], p.extra["venue"], event_date])
    return p


def rich_slots(profile: UserProfile, rng: random.Random) -> dict[str, str]:
    """The basic slots plus the rich fact kinds and the public slots instructions may use."""
    return {**task_slots(profile, rng), **profile.extra, "recipient_role": rng.choice(RECIPIENT_ROLES),
            "product": rng.choice(PRODUCTS), "place_public": rng.choice(PLACES_PUBLIC)}


def _voice(profile: UserProfile, text: str, protect: tuple[str, ...] = (), rng: random.Random | None = None) -> str:
    """``text`` in the user's voice: their word choices, contractions, discourse markers (with ``rng``) and
    exclamation habit. ``protect``: values (private facts) left exactly as they are."""
    marks: list[str] = []
    for v in sorted((v for v in protect if v), key=len, reverse=True):
        if v in text:
            text = text.replace(v, f"\x00{len(marks)}\x00")
            marks.append(v)
    voice = profile.style.get("voice") or {}
    for word, choice in voice.get("words", {}).items():
        if choice != word:
            text = re.sub(rf"\b{re.escape(word)}\b", choice, text)
    if profile.style.get("contractions"):
        for long, short in CONTRACTIONS:
            text = text.replace(long, short)
    first = text.split(" ", 1)[0]
    lowered = text if first in ("I", "I'm", "I'll") or "\x00" in first else text[:1].lower() + text[1:]
    if rng is not None and voice.get("markers") and rng.random() < voice.get("marker_rate", 0.0):
        text = f"{rng.choice(voice['markers'])} {lowered}"
    elif rng is not None and voice.get("leads") and rng.random() < voice.get("lead_rate", 0.0):
        text = f"{rng.choice(voice['leads'])} {lowered}"
    if rng is not None and voice.get("tails") and text.endswith(".") and rng.random() < voice.get("tail_rate", 0.0):
        text = text[:-1] + rng.choice(voice["tails"]) + "."
    if rng is not None and voice.get("exclaim") and text.endswith(".") and rng.random() < 0.3:
        text = text[:-1] + "!"
    for i, v in enumerate(marks):
        text = text.replace(f"\x00{i}\x00", v)
    return text


def compose_rich(profile: UserProfile, task: RichTask, slots: dict[str, str], absent: set[str],
                 rng: random.Random) -> str:
    """The reference: opener, the task's fact sentences mixed with body sentences, closing, in the user's voice."""
    st = profile.style
    facts = [(ABSENT_SENTENCES if f in absent else FACT_SENTENCES)[f] for f in task.facts]
    n_body = {"short": 1, "medium": 2, "long": 3}[st["length"]] + rng.randint(0, 1)
    middle = [rng.choice(s) for s in facts] + rng.sample(task.bodies, min(n_body, len(task.bodies)))
    rng.shuffle(middle)
    voice = st.get("voice") or {}
    parts = [rng.choice(task.openers + tuple(voice.get("openers", ()))), *middle]
    if rng.random() < 0.5:
        parts.append(rng.choice(st["favourite_phrases"]))
    parts.append(rng.choice(task.closings + tuple(voice.get("closings", ()))))
    protect = tuple(str(v) for v in slots.values())
    # discourse markers only inside the text, never before its opener or closing
    sentences = [_voice(profile, s.format(**slots), protect, rng if 0 < i < len(parts) - 1 else None)
                 for i, s in enumerate(parts)]
    cut = len(sentences) // 2 if st["length"] == "long" and len(sentences) > 4 else len(sentences)
    body = " ".join(sentences[:cut]) + ("\n\n" + " ".join(sentences[cut:]) if cut < len(sentences) else "")
    lines = []
    if task.title:
        lines.append(rng.choice(task.title))
    if task.greeting:
        who = next((slots[f] for f in ("rel_name", "manager") if f in task.facts and f not in absent), None)
        lines.append(st["greeting_template"].format(name=who) if who else st["greeting_anonymous"])
    lines.append(body)
    if task.sign_off:
        lines.append(one_line_sign_off(profile))
    return "\n\n".join(lines)


def _item_value(item: str, slots: dict[str, str], profile: UserProfile, absent: set[str]) -> str:
    """The value an item shows; parts the task lacks (``absent``) are left out."""
    if item == "appointment":
        return f"{slots['appt_what']} with {slots['appt_with']}, {slots['appt_when']}"
    if item == "money":
        return f"{slots['money_item']}, {slots['money_amount']}"
    if item == "event":
        parts = [slots["event_kind"]]
        parts += [] if "venue" in absent else [f"at {slots['venue']}"]
        parts += [] if "event_date" in absent else [f"on {slots['event_date']}"]
        return " ".join(parts)
    if item == "pet":
        return slots["pet_kind"] if "pet_name" in absent else f"{slots['pet_name']} ({slots['pet_kind']})"
    if item == "hobby":
        return slots["hobby"]
    if item == "style":
        st = profile.style
        return (f"{st['formality']}, {st['length']} texts; greets with \"{st['greeting_template']}\"; signs off "
                f"\"{one_line_sign_off(profile)}\"; likes saying {' / '.join(st['favourite_phrases'])}")
    return slots[item]


def _key(label: str, style: str) -> str:
    if style == "title_colon":
        return label.title()
    if style == "snake_equals":
        return re.sub(r"\W+", "_", label).strip("_")
    if style == "upper_dash":
        return label.upper()
    return label


def render_profile(items: list[tuple[str, str, str]], fmt: str, key_style: str, rng: random.Random) -> str:
    """Render (item, key, value) rows as key-value lines (in ``key_style``), prose, JSON or YAML."""
    if fmt == "json":
        obj: dict[str, str] = {}
        for _item, key, value in items:
            k = re.sub(r"\W+", "_", key).strip("_")
            obj[k if k not in obj else f"{k}_2"] = value
        return json.dumps(obj, indent=rng.choice((None, 1, 2)), ensure_ascii=False)
    if fmt == "yaml":
        return "\n".join(f"{re.sub(r'[^a-z0-9]+', '_', key.lower()).strip('_')}: {value}" for _i, key, value in items)
    if fmt == "prose":
        out = []
        for item, _label, value in items:
            tpl = rng.choice(PROSE.get(item, ("{v}.",)))
            out.append(tpl.format(v=value, a=article(value)))
        return " ".join(out)
    sep = {"lower_colon": ": ", "title_colon": ": ", "snake_equals": " = ", "upper_dash": " - ", "bullet": ": ",
           "bracket": " "}[key_style]
    lines = []
    for _item, key, value in items:
        k = _key(key, key_style)
        lines.append(f"- {k.capitalize()}{sep}{value}" if key_style == "bullet" else
                     f"[{k}]{sep}{value}" if key_style == "bracket" else f"{k}{sep}{value}")
    return "\n".join(lines)


def _note(profile: UserProfile, rng: random.Random) -> str:
    topics = profile.style.get("topics") or sorted(TOPICS)
    pool = [s for t in rng.sample(topics, min(2, len(topics))) for s in TOPICS[t]]
    return " ".join([rng.choice(NOTE_OPENERS), *rng.sample(pool, rng.randint(2, min(6, len(pool))))])


def make_rich_history(profile: UserProfile, cfg: FederationConfig, canaries: list[str]) -> tuple[
        list[HistoryText], dict[str, list[str]]]:
    """Past texts: compositions of random rich tasks and free-text notes on the user's topics."""
    rng = user_rng(cfg.seed, profile.user_id, "rich-history")
    texts = []
    for i in range(cfg.history_per_user):
        if rng.random() < 0.4:
            kind, text = "diary", _voice(profile, _note(profile, rng), (), rng)
        else:
            task = rng.choice(TASKS)
            kind, text = task.kind, compose_rich(profile, task, rich_slots(profile, rng), set(), rng)
        texts.append(HistoryText(profile.user_id, f"{profile.user_id}-h{i:03d}", kind, text))
    return texts, plant_canaries(texts, canaries, cfg.canary_repeats, rng)


def _instruction(task: RichTask, slots: dict[str, str], rng: random.Random) -> str:
    text = rng.choice(task.instructions).format(**slots)
    return text + rng.choice(TONE_HINTS).format(tone=rng.choice(TONES)) + rng.choice(LENGTH_HINTS) + rng.choice(
        AUDIENCE_HINTS)


def _absent_values(slots: dict[str, str], absent: set[str]) -> list[str]:
    return [slots[f] for f in absent]


def rich_context(profile: UserProfile, task: RichTask, slots: dict[str, str], absent: set[str],
                 history: list[HistoryText], cfg: FederationConfig, rng: random.Random) -> str:
    """Profile block (name, the task's facts, some facts it does not need, style) + a free-text history."""
    needed = list(dict.fromkeys(ITEM_OF_SLOT.get(f, f) for f in task.facts
                                if not (f in absent and ITEM_OF_SLOT.get(f, f) == f)))
    # an item whose only fact is absent is dropped; items that keep other parts stay (without the value)
    others = [i for i in ITEMS if i not in needed and i not in {ITEM_OF_SLOT.get(f, f) for f in absent}]
    distract = rng.sample(others, rng.randint(0, min(cfg.distractor_facts, len(others))))
    chosen = [i for i in ITEMS if i in needed or i in distract]
    rng.shuffle(chosen)
    rows = [("name", rng.choice(KEYS["name"]), profile.name)]
    rows += [(i, rng.choice(KEYS[i]) if i != "rel_name" else slots["relation"], _item_value(i, slots, profile, absent))
             for i in chosen]
    rows.append(("style", rng.choice(KEYS["style"]), _item_value("style", slots, profile, absent)))
    if cfg.format_variety:
        fmt = profile.style["context_format"] if rng.random() < 0.6 else rng.choice(CONTEXT_FORMATS)
        key_style = profile.style["key_style"] if rng.random() < 0.6 else rng.choice(KEY_STYLES)
    else:
        fmt, key_style = "kv", "lower_colon"
    header = rng.choice(HEADERS) if cfg.format_variety else ""
    block = render_profile(rows, fmt, key_style, rng)
    blocks = [f"{header}\n{block}" if header else block]
    # free-text history: no text that would give away an absent fact
    hidden = [v.casefold() for v in _absent_values(slots, absent)]
    pool = [h for h in history if not any(v in h.text.casefold() for v in hidden)]
    r = rng.random()
    # the history header (up to 5 words) counts against the cap too
    budget = cfg.max_context_words - len(blocks[0].split()) - max(len(h.split()) for h in HISTORY_HEADERS)
    target = min(budget, rng.randint(0, 60) if r < 0.35 else rng.randint(100, 450) if r < 0.75
                 else rng.randint(450, max(451, cfg.max_context_words)))
    picked, words = [], 0
    for h in rng.sample(pool, len(pool)):
        n = len(h.text.split())
        if words + n > target:
            continue
        picked.append(h.text)
        words += n
    if picked:
        blocks.append(rng.choice(HISTORY_HEADERS) + "\n" + "\n\n".join(picked) if rng.random() < 0.7
                      else "\n\n".join(picked))
    return "\n\n".join(blocks)


def make_rich_tasks(profile: UserProfile, cfg: FederationConfig, history: list[HistoryText],
                    planted_ids: set[str]) -> dict[str, list[TaskRecord]]:
    """Tasks of every split: one rich task kind each, a context in one of the formats, a reference that uses
    the facts the task calls for (and says an absent one without its value)."""
    rng = user_rng(cfg.seed, profile.user_id, "rich-tasks")
    clean_history = [h for h in history if h.text_id not in planted_ids]
    seen: set[str] = set()
    out: dict[str, list[TaskRecord]] = {}
    for split, n in cfg.tasks_per_split().items():
        out[split] = []
        for i in range(n):
            for _attempt in range(200):
                task = rng.choice(TASKS)
                slots = rich_slots(profile, rng)
                absent: set[str] = set()
                can_drop = [f for f in task.facts if f in ABSENT_SENTENCES]
                if can_drop and rng.random() * 100 < cfg.absent_fact_percent:
                    absent = {rng.choice(can_drop)}
                reference = compose_rich(profile, task, slots, absent, rng)
                if reference in seen:
                    continue
                context = rich_context(profile, task, slots, absent, clean_history, cfg, rng)
                facts = dedupe(slots[f] for f in task.facts if f not in absent)
                rec = TaskRecord(
                    user_id=profile.user_id, task_id=f"{profile.user_id}-{split}-{i:03d}", task_type=task.kind,
                    scenario=f"rich/{task.kind}" + ("/absent-" + "-".join(sorted(absent)) if absent else ""),
                    instruction=_instruction(task, slots, rng), private_context=context, reference=reference,
                    private_facts=facts, split=split,
                )
                missing = [f for f in facts if f not in rec.reference or f not in rec.private_context]
                if missing:  # an internal invariant: the sentence pools guarantee it, this guards pool edits
                    raise RuntimeError(f"{rec.task_id}: facts {missing} missing from reference or context")
                # an absent value may still sit in another fact's value (rare): draw again rather than teach it
                if not any(v.casefold() in (rec.reference + rec.private_context).casefold()
                           for v in _absent_values(slots, absent)):
                    break
            else:
                raise RuntimeError(f"{profile.user_id}: could not draw {n} distinct {split} tasks")
            seen.add(reference)
            out[split].append(rec)
    return out


def rich_fake_fields(profile: UserProfile) -> list[str]:
    """The rich facts of a profile in a fixed order (for counterfactual swaps); empty for basic profiles."""
    e: dict[str, Any] = profile.extra
    keys = ("birthday", "habit", "pet_name", "street", "venue", "event_date")
    return [e[k] for k in keys] if e else []

