"""Writes the private-span corpora of ``simulations/privacy/span_corpora/``
(``python -c "from fedcogen.simulations.privacy.span_corpora_gen import build; build()"``; deterministic).

Why a procedure of its own: the detector must be measured on text it was not written from, in the
formats users actually have, with the facts labelled in a separate answer key that only the audit
reads. This script has its own vocabulary and sentence templates (nothing from fedcogen/dataset, the
project's training-data generator) and writes each corpus three times over: a ``dev`` split the
detector was tuned on, a ``test`` split that was held out until the first detector was reported on
it (its misses then guided the second detector, so it is tuning data too), and ``heldout2``, whose
vocabulary and templates were written after that detector was frozen and which was run once. The
splits share no name, place, job, condition or employer; dev and test draw from disjoint halves of
the sentence templates, heldout2 from templates of its own, so a ``heldout2`` score is a score on
words and sentences the detector was never adjusted to.

Corpora (one ``NAME.jsonl`` of contexts + one ``NAME.facts.jsonl`` answer key each):

* ``cogenesis``: the CoGenesis data set's way of writing a user: ``Name: ...; Location: ...;
  Occupation: ...; Privacy_info: ...; ...`` then a free-text writing history;
* ``structured``: the profile as a JSON object, a YAML mapping, or ``- Key = value`` / ``**Key**:
  value`` lines, plus free-text notes;
* ``freetext``: messages and diary entries with no structure at all.

Facts are atomic (a name, a place, one condition) and each carries the form a device might write
instead (``variant``: "diabetes" for "diabetic"), which the wire audit tests too.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "span_corpora"

POOLS = {
    "dev": {
        "first": ["Maria", "Tomasz", "Aisha", "Deshawn", "Ingrid", "Kenji", "Lucia", "Oluwaseun", "Priya", "Rafael",
                  "Siobhan", "Viktor", "Amara", "Bjorn"],
        "last": ["Lopez", "Kowalski", "Rahman", "Whitfield", "Lindqvist", "Tanaka", "Moretti", "Adeyemi", "Iyer",
                 "Quintero", "Gallagher", "Petrov", "Okonkwo", "Halvorsen"],
        "place": [("Austin", "TX"), ("Dayton", "OH"), ("Spokane", "WA"), ("Tucson", "AZ"), ("Albany", "NY"),
                  ("Boise", "ID"), ("Savannah", "GA"), ("Omaha", "NE")],
        "job": ["nurse", "electrician", "pharmacist", "school librarian", "paramedic", "accountant", "welder",
                "bus driver"],
        "health": [("diabetic", "diabetes"), ("asthma", "asthmatic"), ("migraines", "migraine"),
                   ("depression", "depressed"), ("epilepsy", "epileptic"), ("arthritis", "arthritic")],
        "family": [("divorced", "divorce"), ("widowed", "widow"), ("pregnant", "pregnancy"),
                   ("separated", "separation")],
        "money": [("bankruptcy", "bankrupt"), ("mortgage arrears", "mortgage"), ("payday loans", "payday loan"),
                  ("overdraft", "overdrawn")],
        "employer": ["Brightwater Foods", "Kestrel Logistics", "Harmon Dental", "Northgate Mills"],
        "street": ["Lamar Blvd", "Elm Street", "Cedar Avenue", "Birch Lane"],
        "doctor": ["Patel", "Nguyen", "Brennan", "Osei"],
        "relative": ["Carlos", "Wiktor", "Fatima", "Marcus"],
    },
    "test": {
        "first": ["Esperanza", "Grzegorz", "Nadia", "Tyrone", "Astrid", "Hiroshi", "Giulia", "Chidi", "Ananya",
                  "Mateo", "Niamh", "Dmitri", "Zainab", "Leif"],
        "last": ["Castellanos", "Wozniak", "Haddad", "Pemberton", "Sundberg", "Matsuda", "Ferraro", "Eze",
                 "Raghavan", "Valdivia", "Donnelly", "Volkov", "Mensah", "Aasen"],
        "place": [("Fresno", "CA"), ("Akron", "OH"), ("Tacoma", "WA"), ("Flagstaff", "AZ"), ("Syracuse", "NY"),
                  ("Billings", "MT"), ("Macon", "GA"), ("Lincoln", "NE")],
        "job": ["dental hygienist", "plumber", "veterinary nurse", "court reporter", "forklift operator",
                "payroll clerk", "crane operator", "home health aide"],
        "health": [("glaucoma", "glaucoma"), ("anxiety", "anxious"), ("shingles", "shingles"),
                   ("bipolar", "bipolar disorder"), ("anemic", "anemia"), ("insomnia", "insomniac")],
        "family": [("estranged", "estrangement"), ("remarried", "remarriage"), ("miscarriage", "miscarried"),
                   ("custody", "custodial")],
        "money": [("foreclosure", "foreclosed"), ("gambling debts", "gambling debt"), ("eviction", "evicted"),
                  ("wage garnishment", "garnished wages")],
        "employer": ["Copperline Freight", "Sable Ridge Clinic", "Ostrander Paper", "Vantage Pools"],
        "street": ["Juniper Road", "Maple Drive", "Harbor Way", "Willow Court"],
        "doctor": ["Kaplan", "Oyelaran", "Duarte", "Fairbanks"],
        "relative": ["Rosalind", "Teodor", "Yusuf", "Imani"],
    },
    # written after the detector was frozen (issue 23), before anything was run on it: new names,
    # places, jobs, conditions, family and money matters, employers, streets and sentence templates
    "heldout2": {
        "first": ["Beatriz", "Wojciech", "Leila", "Jamal", "Freya", "Takeshi", "Chiara", "Emeka", "Kavya",
                  "Santiago", "Orla", "Yuri", "Halima", "Sven"],
        "last": ["Echeverria", "Nowak", "Khoury", "Ashworth", "Bergstrom", "Yamamoto", "Esposito", "Nwosu",
                 "Krishnan", "Ibarra", "Kavanagh", "Sokolov", "Boateng", "Solberg"],
        "place": [("Pueblo", "CO"), ("Duluth", "MN"), ("Bangor", "ME"), ("Provo", "UT"), ("Eugene", "OR"),
                  ("Wichita", "KS"), ("Mobile", "AL"), ("Erie", "PA")],
        "job": ["locksmith", "phlebotomist", "line cook", "claims adjuster", "roofer", "substitute teacher",
                "night auditor", "dog groomer"],
        "health": [("psoriasis", "psoriatic"), ("kidney stones", "kidney stone"), ("tinnitus", "tinnitus"),
                   ("hypothyroid", "hypothyroidism"), ("vertigo", "vertiginous"), ("gallstones", "gallstone")],
        "family": [("annulled", "annulment"), ("bereaved", "bereavement"), ("adopted", "adoption"),
                   ("eloped", "elopement")],
        "money": [("repossession", "repossessed"), ("tax lien", "tax liens"), ("student loans", "student loan"),
                  ("medical debt", "medical debts")],
        "employer": ["Bluefin Marine Supply", "Tallgrass Bakery", "Ironwood Security", "Marlowe Print Works"],
        "street": ["Quarry Road", "Hawthorne Avenue", "Orchard Lane", "Chestnut Boulevard"],
        "doctor": ["Lindgren", "Abernathy", "Moreau", "Achebe"],
        "relative": ["Benedikt", "Marisol", "Tobias", "Ayodele"],
    },
}

# sentences with slots; dev items use the even ones, test items the odd ones
HISTORY = [
    "{Rel} finally picked up the kids on Sunday, and since I got {family} things are calmer.",
    "Quick note to the team: {first} here, covering the late shift at {employer} this week.",
    "Dr. {doc} says the {health} is under control if I keep up with the new routine.",
    "My {health} flared up again, so I skipped the {employer} picnic.",
    "Honestly, the {money} is what keeps me up at night.",
    "After the {money} letter came I called {Rel} and cried for an hour.",
    "Working as a {job} in {city} is tiring but I like the people.",
    "{city} in spring is lovely; {Rel} and I walked along {street} every evening.",
    "You can reach me at {phone} or {email} if anything changes.",
    "Send the forms to {num} {street}, {city}, {state} {zip} before the {date} deadline.",
    "Being {family} at forty was not in the plan, but here we are.",
    "{first} {last} again: thanks for the flowers after the hospital stay.",
]
FREETEXT = [
    "Hi {Rel}, it's {first}. The {money} paperwork came through and I need to talk.",
    "Dear {Rel},\nThanks for visiting. Dr. {doc} wants me back on {date} to check the {health}.",
    "Diary, {date}: shift at {employer} ran long. {Rel} says I should quit being a {job}.",
    "Hey! {first} {last} from {city} here. Can you call {phone}? It's about the {money}.",
    "Note to self: {family} papers signed. Pay the lawyer {amount} by Friday.",
    "Ugh, {health} again today. Missed the bus on {street} and got to {employer} late.",
    "{Rel} keeps asking whether I'm {family}; I haven't told mum about it yet.",
    "Reminder for {first}: new address is {num} {street}, {city}. Email {email} for the keys.",
    "My doctor, Dr. {doc}, said the {health} explains the tiredness.",
    "Since I started as a {job} I've hardly seen {Rel}; the {money} doesn't help.",
]
# the heldout2 split's own templates (written with its vocabulary, after the detector was frozen)
HISTORY2 = [
    "These days I'm a {job} on the early rota at {employer}, which pays the bills.",
    "The {health} makes mornings slow; {Rel} helps with the school run.",
    "We got the {money} sorted out with help from a counsellor in {city}.",
    "Since becoming {family} I have leaned on {Rel} a lot.",
    "Mail for {first} {last} goes to {num} {street}, {city}, {state} {zip}.",
    "Text {phone} or write to {email}; I check both after my shift at {employer}.",
    "Dr. {doc} changed my prescription for the {health} on {date}.",
    "Nobody at {employer} knows about the {money}, and I want to keep it that way.",
]
FREETEXT2 = [
    "{Rel}!! Guess who got hired as a {job} at {employer}? Me, {first}!",
    "Journal, {date}. The {health} kept me up. Appointment with Dr. {doc} is moved.",
    "To whoever reads this: I'm {first} {last}, I live on {street} in {city}, and the {money} is crushing me.",
    "ok so {Rel} found out I'm {family}. didn't go well. call me at {phone}",
    "Reminder - {amount} due for the {money}. Also ask {Rel} about the {city} trip.",
    "Can't believe I've been a {job} for ten years. Back pain aside, {health} is the hard part.",
]
SPLITS = ("dev", "test", "heldout2")
KEY_STYLES = ["json", "yaml", "dash_eq", "bold"]


def _slots(pool: dict, rng: random.Random) -> dict:
    city, state = rng.choice(pool["place"])
    first, last = rng.choice(pool["first"]), rng.choice(pool["last"])
    s = {"first": first, "last": last, "city": city, "state": state, "job": rng.choice(pool["job"]),
         "health": rng.choice(pool["health"]), "family": rng.choice(pool["family"]),
         "money": rng.choice(pool["money"]), "employer": rng.choice(pool["employer"]),
         "street": rng.choice(pool["street"]), "doc": rng.choice(pool["doctor"]), "Rel": rng.choice(pool["relative"]),
         "phone": f"({rng.randint(201, 989)}) 555-{rng.randint(1000, 9999)}",
         "email": f"{first.lower()}.{last.lower()[:3]}{rng.randint(10, 99)}@example.org",
         "num": str(rng.randint(12, 980)), "zip": str(rng.randint(10000, 99999)),
         "date": rng.choice(["March 14", "June 3rd", "11 October", "August 22, 2025", "2 February"]),
         "amount": f"${rng.randint(2, 40)},{rng.randint(100, 999)}"}
    return s


def _fill(template: str, s: dict, facts: dict) -> str:
    """Fill a template; record every slot used as an atomic fact (with its variant)."""
    kinds = {"first": "name", "last": "name", "Rel": "name", "doc": "name", "city": "place", "state": "place",
             "street": "address", "employer": "employer", "job": "job", "health": "health", "family": "family",
             "money": "finance", "phone": "phone", "email": "email", "num": "address", "zip": "address",
             "date": "date", "amount": "finance"}
    out = template
    for key, kind in kinds.items():
        if "{" + key + "}" not in out:
            continue
        value = s[key]
        text, variant = (value if isinstance(value, tuple) else (value, value))
        out = out.replace("{" + key + "}", text)
        facts.setdefault(text, {"text": text, "kind": kind, "variant": variant})
    return out


def _profile_items(s: dict, facts: dict) -> list[tuple[str, str]]:
    items = [("Name", f"{s['first']} {s['last']}"), ("Location", f"{s['city']}, {s['state']}"),
             ("Occupation", s["job"])]
    for key, kind in (("first", "name"), ("last", "name"), ("city", "place"), ("state", "place"), ("job", "job")):
        facts.setdefault(s[key], {"text": s[key], "kind": kind, "variant": s[key]})
    return items


def cogenesis(s: dict, rng: random.Random, sentences: list[str]) -> tuple[str, dict]:
    facts: dict = {}
    items = _profile_items(s, facts)
    priv = [s["health"], s["family"], s["money"]]
    for text, variant in priv:
        facts.setdefault(text, {"text": text, "kind": "private_info", "variant": variant})
    head = "; ".join(f"{k}: {v}" for k, v in items) + "; Privacy_info: " + "; ".join(t for t, _ in priv)
    history = " ".join(_fill(t, s, facts) for t in rng.sample(sentences, 4))
    return f"{head}\nWriting history:\n{history}", facts


def structured(s: dict, rng: random.Random, sentences: list[str], style: str) -> tuple[str, dict]:
    facts: dict = {}
    _profile_items(s, facts)
    for key, kind in (("employer", "employer"), ("health", "health"), ("family", "family")):
        t, v = s[key] if isinstance(s[key], tuple) else (s[key], s[key])
        facts.setdefault(t, {"text": t, "kind": kind, "variant": v})
    prof = {"full_name": f"{s['first']} {s['last']}", "home_city": f"{s['city']}, {s['state']}",
            "job_title": s["job"], "employer": s["employer"], "medical": s["health"][0], "relationship": s["family"][0]}
    notes = " ".join(_fill(t, s, facts) for t in rng.sample(sentences, 3))
    if style == "json":
        body = json.dumps({"user": prof, "notes": notes}, indent=2)
    elif style == "yaml":
        body = "\n".join(f"{k}: {v}" for k, v in prof.items()) + f"\nnotes: |\n  {notes}"
    elif style == "dash_eq":
        body = "\n".join(f"- {k.replace('_', ' ').title().replace(' ', '_')} = {v}" for k, v in prof.items())
        body += f"\n\n{notes}"
    else:
        body = "\n".join(f"**{k.replace('_', ' ').capitalize()}**: {v}" for k, v in prof.items()) + f"\n\n{notes}"
    return body, facts


def freetext(s: dict, rng: random.Random, sentences: list[str]) -> tuple[str, dict]:
    facts: dict = {}
    return "\n\n".join(_fill(t, s, facts) for t in rng.sample(sentences, 3)), facts


def _templates(split: str) -> tuple[list[str], list[str]]:
    if split == "heldout2":
        return HISTORY2, FREETEXT2
    parity = SPLITS.index(split)
    return HISTORY[parity::2], FREETEXT[parity::2]


def build(n_per_split: int = 12, seed: int = 2311) -> None:
    rng = random.Random(seed)
    # heldout2 draws from a generator of its own, so dev and test stay byte-identical to before it existed
    rng2 = random.Random(f"{seed}-heldout2")
    for name in ("cogenesis", "structured", "freetext"):
        contexts, keys = [], []
        for split in SPLITS:
            hist, free = _templates(split)
            r = rng2 if split == "heldout2" else rng
            for i in range(n_per_split):
                s = _slots(POOLS[split], r)
                if name == "cogenesis":
                    ctx, facts = cogenesis(s, r, hist)
                    fmt = "cogenesis"
                elif name == "structured":
                    fmt = KEY_STYLES[i % len(KEY_STYLES)]
                    ctx, facts = structured(s, r, hist, fmt)
                else:
                    ctx, facts = freetext(s, r, free)
                    fmt = "freetext"
                uid = f"{name}-{split}-{i:02d}"
                contexts.append({"id": uid, "split": split, "format": fmt, "context": ctx})
                keys.append({"id": uid, "facts": list(facts.values())})
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in contexts)
        with open(HERE / f"{name}.facts.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(k, ensure_ascii=False) + "\n" for k in keys)
