"""Deterministic generation of the synthetic federation (profiles, history, tasks, canaries)."""

from __future__ import annotations

import random
from collections.abc import Iterable

from fedcogen.dataset.canaries import CANARY_PLANTING
from fedcogen.dataset.pools import (
    APPOINTMENTS,
    CITIES,
    DAYS,
    EMOJIS,
    EMPLOYER_PREFIXES,
    EMPLOYER_SUFFIXES,
    FILLERS,
    FORMALITIES,
    GIVEN_NAMES,
    GREETINGS,
    HASHTAGS,
    HEALTH,
    HOBBIES,
    LENGTH_HINTS,
    LENGTHS,
    MONEY_ITEMS,
    OPENERS,
    PHRASES,
    RELATIONS,
    ROLES,
    SIGN_OFFS,
    SURNAMES,
    TIMEFRAMES,
    TIMES,
    TONE_HINTS,
    TONES,
)
from fedcogen.dataset.scenarios import SCENARIOS_BY_KIND, Scenario
from fedcogen.dataset.schema import (
    FORMAT_VERSION,
    KIND_LABELS,
    SEED_NAMESPACE,
    TASK_KINDS,
    FederationConfig,
    HistoryText,
    TaskRecord,
    UserProfile,
)


# --------------------------------------------------------------------------- generation
def user_rng(seed: int, user_id: str, purpose: str) -> random.Random:
    """An independent generator per user and purpose (string seeds are hashed with SHA-512)."""
    return random.Random(f"{SEED_NAMESPACE}:{FORMAT_VERSION}:{seed}:{user_id}:{purpose}")


def article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _amount(rng: random.Random) -> str:
    return f"\u20ac{rng.randrange(80, 4800):,}"


def dedupe(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        if v and v not in seen:
            seen[v] = None
    return list(seen)


def make_profile(user_id: str, seed: int, taken_names: set[str]) -> UserProfile:
    rng = user_rng(seed, user_id, "profile")
    while True:
        first, last = rng.choice(GIVEN_NAMES), rng.choice(SURNAMES)
        if f"{first} {last}" not in taken_names:
            break
    taken_names.add(f"{first} {last}")
    others = [n for n in GIVEN_NAMES if n != first]
    picked = rng.sample(others, 5)
    manager, rel_names = picked[0], picked[1:1 + rng.randint(2, 4)]
    relations = rng.sample(RELATIONS, len(rel_names))
    relatives = [{"relation": r, "name": n} for r, n in zip(relations, rel_names, strict=True)]
    surnames = [s for s in SURNAMES if s != last]
    schedule = []
    for (what, title), day, who in zip(rng.sample(APPOINTMENTS, 3), rng.sample(DAYS, 3),
                                       rng.sample(surnames, 3), strict=True):
        schedule.append({"what": what, "with": f"{title} {who}", "day": day, "time": rng.choice(TIMES)})
    condition, medication = rng.choice(HEALTH)
    money = {"item": rng.choice(MONEY_ITEMS), "amount": _amount(rng)}
    hobbies = rng.sample(HOBBIES, rng.randint(2, 3))
    formality = rng.choice(FORMALITIES)
    greeting_tpl, greeting_anon = rng.choice(GREETINGS[formality])
    sign_off_tpl = rng.choice(SIGN_OFFS[formality])
    style = {
        "formality": formality,
        "length": rng.choice(LENGTHS),
        "greeting": greeting_tpl.split("{name}")[0].strip(),
        "greeting_template": greeting_tpl,
        "greeting_anonymous": greeting_anon,
        "opener": rng.choice(OPENERS[formality]),
        "sign_off": sign_off_tpl.split("\n")[0].split("{")[0].strip(" ,!") or sign_off_tpl,
        "sign_off_template": sign_off_tpl,
        # Where the markers appear: evaluation can score greeting / sign-off only where they belong.
        "greeting_in": ["email", "message"],
        "sign_off_in": ["email", "message", "article"],
        "favourite_phrases": rng.sample(PHRASES, rng.randint(2, 3)),
        "emoji": rng.choice(EMOJIS) if formality == "casual" else "",
        "hashtags": rng.sample(HASHTAGS, 2) if formality != "formal" else [],
    }
    # Non-IID task mix: gamma draws (Dirichlet(0.8)) with a floor so every kind stays possible.
    raw = [rng.gammavariate(0.8, 1.0) + 0.05 for _ in TASK_KINDS]
    kind_mix = {k: round(v / sum(raw), 4) for k, v in zip(TASK_KINDS, raw, strict=True)}
    full = f"{first} {last}"
    city = rng.choice(CITIES)
    employer = f"{rng.choice(EMPLOYER_PREFIXES)} {rng.choice(EMPLOYER_SUFFIXES)}"
    role = rng.choice(ROLES)
    private_values = dedupe([
        full, first, last, city, employer, role, manager,
        *[r["name"] for r in relatives],
        *[s["with"] for s in schedule], *[f"{s['day']} at {s['time']}" for s in schedule],
        condition, medication, money["item"], money["amount"], *hobbies,
    ])
    return UserProfile(
        user_id=user_id, name=full, first_name=first, last_name=last, city=city, employer=employer,
        role=role, manager=manager, relatives=relatives, schedule=schedule,
        health={"condition": condition, "medication": medication}, money=money, hobbies=hobbies,
        style=style, kind_mix=kind_mix, private_values=private_values,
    )


def task_slots(profile: UserProfile, rng: random.Random) -> dict[str, str]:
    rel = rng.choice(profile.relatives)
    appt = rng.choice(profile.schedule)
    return {
        "relation": rel["relation"], "rel_name": rel["name"], "appt_what": appt["what"],
        "appt_with": appt["with"], "appt_when": f"{appt['day']} at {appt['time']}",
        "hobby": rng.choice(profile.hobbies), "city": profile.city, "employer": profile.employer,
        "role": profile.role, "a_role": article(profile.role), "manager": profile.manager,
        "condition": profile.health["condition"], "medication": profile.health["medication"],
        "money_item": profile.money["item"], "money_amount": profile.money["amount"],
        "timeframe": rng.choice(TIMEFRAMES), "first": profile.first_name,
    }


def _sign(template: str, profile: UserProfile) -> str:
    return template.format(full=profile.name, first=profile.first_name, initial=profile.first_name[0])


def one_line_sign_off(profile: UserProfile) -> str:
    return _sign(profile.style["sign_off_template"], profile).replace("\n", " ")


def _compose(profile: UserProfile, sc: Scenario, slots: dict[str, str], rng: random.Random) -> str:
    """Write the text for a scenario in the user's style (greeting, opener, phrases, sign-off, length)."""
    st = profile.style
    body = rng.choice(sc.bodies).format(**slots)
    n_fill = rng.choice({"short": (0, 0, 1), "medium": (1, 1, 2), "long": (2, 3)}[st["length"]])
    fillers = rng.sample(FILLERS, n_fill)
    phrases = rng.sample(st["favourite_phrases"], 2 if st["length"] == "long" else 1)
    if sc.kind == "email":
        who = slots[sc.recipient] if sc.recipient else None
        greeting = st["greeting_template"].format(name=who) if who else st["greeting_anonymous"]
        middle = " ".join([st["opener"], *fillers[:1], body, *fillers[1:], *phrases])
        return f"{greeting}\n\n{middle}\n\n{_sign(st['sign_off_template'], profile)}"
    if sc.kind == "message":
        who = slots[sc.recipient] if sc.recipient else None
        greeting = st["greeting_template"].format(name=who) if who else st["greeting_anonymous"]
        tail = f" {st['emoji']}" if st["emoji"] else ""
        text = " ".join([body, *fillers[:1], phrases[0]]) + tail
        return f"{greeting}\n{text}\n{one_line_sign_off(profile)}"
    if sc.kind == "social_post":
        tags = " ".join(st["hashtags"])
        text = " ".join([body, *fillers, *phrases])
        return f"{text} {tags}".rstrip()
    # article: title, body paragraph, a closing paragraph, byline
    title = rng.choice(sc.titles).format(**slots)
    closing = " ".join([*fillers, *phrases]) if fillers else " ".join(phrases)
    return f"{title}\n\n{body}\n\n{closing}\n\n{one_line_sign_off(profile)}"


def _fact_lines(facts: tuple[str, ...], slots: dict[str, str]) -> list[str]:
    lines = []
    for f in facts:
        if f == "rel_name":
            lines.append(f"my {slots['relation']}: {slots['rel_name']}")
        elif f == "appt_with":
            lines.append(f"appointment: {slots['appt_what']} with {slots['appt_with']}")
        elif f == "appt_when":
            lines.append(f"appointment time: {slots['appt_when']}")
        elif f in ("money_item", "money_amount"):
            if "money_item" in facts and f == "money_amount":
                continue
            lines.append(f"money: {slots['money_item']}, {slots['money_amount']}")
        else:
            label = {"city": "home city", "employer": "employer", "role": "job", "manager": "manager",
                     "condition": "health", "medication": "medication", "hobby": "hobby"}[f]
            lines.append(f"{label}: {slots[f]}")
    return lines


def _context(profile: UserProfile, sc: Scenario, slots: dict[str, str], snippet: HistoryText | None) -> str:
    """Compact private context: identity, style, the scenario's facts, maybe a past text snippet."""
    st = profile.style
    lines = [
        f"me: {profile.name}",
        f"style: {st['formality']}, {st['length']} texts; greeting \"{st['greeting_template']}\"; "
        f"sign-off \"{one_line_sign_off(profile)}\"; "
        f"phrases: {'; '.join(st['favourite_phrases'])}",
        *_fact_lines(sc.facts, slots),
    ]
    if snippet is not None:
        text = " ".join(snippet.text.split())
        if len(text) > 180:
            text = text[:180].rsplit(" ", 1)[0] + " ..."
        lines.append(f"a recent {KIND_LABELS[snippet.kind]} of mine: \"{text}\"")
    return "\n".join(lines)


def _instruction(sc: Scenario, slots: dict[str, str], rng: random.Random) -> str:
    text = rng.choice(sc.instructions).format(relation=slots["relation"], timeframe=slots["timeframe"])
    text += rng.choice(TONE_HINTS).format(tone=rng.choice(TONES))
    return text + rng.choice(LENGTH_HINTS)


def _pick_kind(profile: UserProfile, rng: random.Random) -> str:
    return rng.choices(TASK_KINDS, weights=[profile.kind_mix[k] for k in TASK_KINDS])[0]


def make_history(profile: UserProfile, cfg: FederationConfig, canaries: list[str]) -> tuple[
        list[HistoryText], dict[str, list[str]]]:
    rng = user_rng(cfg.seed, profile.user_id, "history")
    texts = []
    for i in range(cfg.history_per_user):
        kind = _pick_kind(profile, rng)
        sc = rng.choice(SCENARIOS_BY_KIND[kind])
        slots = task_slots(profile, rng)
        texts.append(HistoryText(profile.user_id, f"{profile.user_id}-h{i:03d}", kind,
                                 _compose(profile, sc, slots, rng)))
    return texts, plant_canaries(texts, canaries, cfg.canary_repeats, rng)


def plant_canaries(texts: list[HistoryText], canaries: list[str], repeats: int,
                   rng: random.Random) -> dict[str, list[str]]:
    """Append each canary to ``repeats`` randomly chosen texts (in place); canary -> text ids."""
    planted: dict[str, list[str]] = {}
    slots_for = rng.sample(range(len(texts)), len(canaries) * repeats)
    for j, idx in enumerate(slots_for):
        canary = canaries[j % len(canaries)]
        h = texts[idx]
        h.text = f"{h.text}\n{CANARY_PLANTING.format(canary=canary)}"
        planted.setdefault(canary, []).append(h.text_id)
    return planted


def make_tasks(profile: UserProfile, cfg: FederationConfig, history: list[HistoryText],
                planted_ids: set[str]) -> dict[str, list[TaskRecord]]:
    rng = user_rng(cfg.seed, profile.user_id, "tasks")
    clean_history = [h for h in history if h.text_id not in planted_ids]
    seen: set[str] = set()  # references: no target repeats within a user (e.g. train -> test)
    out: dict[str, list[TaskRecord]] = {}
    for split, n in cfg.tasks_per_split().items():
        out[split] = []
        for i in range(n):
            for _attempt in range(200):
                kind = _pick_kind(profile, rng)
                sc = rng.choice(SCENARIOS_BY_KIND[kind])
                slots = task_slots(profile, rng)
                instruction = _instruction(sc, slots, rng)
                reference = _compose(profile, sc, slots, rng)
                if reference not in seen:
                    break
            else:
                raise RuntimeError(f"{profile.user_id}: could not draw {n} distinct {split} tasks")
            seen.add(reference)
            same_kind = [h for h in clean_history if h.kind == kind]
            snippet = rng.choice(same_kind) if same_kind and rng.random() < 0.5 else None
            facts = [slots[f] for f in sc.facts]
            rec = TaskRecord(
                user_id=profile.user_id, task_id=f"{profile.user_id}-{split}-{i:03d}", task_type=kind,
                scenario=sc.name, instruction=instruction, private_context=_context(profile, sc, slots, snippet),
                reference=reference, private_facts=facts, split=split,
            )
            missing = [f for f in facts if f not in rec.reference or f not in rec.private_context]
            if missing:  # an internal invariant: templates guarantee it, this guards template edits
                raise RuntimeError(f"{rec.task_id}: facts {missing} missing from reference or context")
            out[split].append(rec)
    return out
