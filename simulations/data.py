"""Deterministic synthetic federation of private personalised-writing users (CoGenesis-style).

No public data set pairs a *public* writing instruction with the *private* context a user's own
device holds, so this module generates one, modelled on the personalised writing tasks of
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
and length hints); this is checked when the module is imported, and :func:`find_leaks` checks the
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
:func:`load_federation`, :func:`validate_task_file` (+ :class:`DataValidationError`),
:func:`client_examples`, :func:`to_hf_dataset`, :func:`partition_by_user`, :func:`user_ids`,
:func:`find_leaks`, :func:`canary_records`, :func:`random_canary_like`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fedcogen.client.prompts import device_prompt, history_prompt

FORMAT_VERSION = 1
GENERATOR = "fedcogen.simulations.data"
SPLITS: tuple[str, ...] = ("train", "val", "test")
TASK_KINDS: tuple[str, ...] = ("email", "message", "social_post", "article")
#: How a kind is named inside prompts ("Write a social media post in my usual style.").
KIND_LABELS: dict[str, str] = {
    "email": "email",
    "message": "text message",
    "social_post": "social media post",
    "article": "short article",
}
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

# --------------------------------------------------------------------------- pools
# Private pools are chosen so that no value is a common English word or a substring of the
# instruction templates (find_leaks / the tests check it on the generated data).
GIVEN_NAMES: tuple[str, ...] = (
    "Amara", "Bogdan", "Chiara", "Dario", "Elif", "Farid", "Greta", "Hamza", "Ingrid", "Jovana",
    "Kenji", "Leilani", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rasmus", "Saoirse", "Tariq",
    "Ulrike", "Vesna", "Wojtek", "Ximena", "Yusuf", "Zofia", "Anouk", "Bjorn", "Cosmin", "Dagny",
    "Emeka", "Fenna", "Goran", "Hanne", "Idris", "Janneke", "Kalani", "Lior", "Maren", "Nikolai",
    "Odile", "Pieter", "Radek", "Signe", "Tomasz", "Ugne", "Valeria", "Wiebke", "Yara", "Zoltan",
    "Aiyana", "Benedikt", "Catalina", "Desmond", "Eskil", "Florin", "Gunnhild", "Henrik", "Ilse",
    "Jarek", "Kasimir", "Ludmila", "Mirela", "Nnamdi", "Oriane", "Paavo", "Rosalind", "Sven",
)
SURNAMES: tuple[str, ...] = (
    "Okafor", "Lindqvist", "Moreau", "Kowalczyk", "Haddad", "Nakamura", "Oyelaran", "Brennan",
    "Vasquez", "Petrov", "Achterberg", "Fontaine", "Szabo", "Castellanos", "Mbeki", "Halvorsen",
    "Rinaldi", "Kaminski", "Dubois", "Yilmaz", "Sorensen", "Novak", "Ferreira", "Takahashi",
    "Adeyemi", "Lindgren", "Marchetti", "Horvat", "Kruger", "Oliveira", "Jablonski", "Ekwueme",
    "Vukovic", "Thorsen", "Ibarra", "Quispe", "Abernathy", "Delacroix", "Eriksen", "Gallagher",
)
CITIES: tuple[str, ...] = (
    "Lisbon", "Ghent", "Tampere", "Bratislava", "Ljubljana", "Porto", "Aarhus", "Bergen", "Graz",
    "Utrecht", "Krakow", "Valencia", "Bologna", "Lyon", "Galway", "Tallinn", "Riga", "Vilnius",
    "Cork", "Leipzig", "Malmo", "Zagreb", "Seville", "Basel", "Trondheim", "Salzburg", "Brno",
    "Gdansk", "Turin", "Nantes",
)
EMPLOYER_PREFIXES: tuple[str, ...] = (
    "Kestrel", "Bramblewood", "Juniper", "Obsidian", "Marlowe", "Tessera", "Halcyon", "Quillon",
    "Vantor", "Corvid", "Larkspur", "Nimbus", "Saffron", "Tidewater", "Zephyra", "Ardent", "Bluefin",
    "Cinderby", "Driftwood", "Evergrove",
)
EMPLOYER_SUFFIXES: tuple[str, ...] = (
    "Biotech", "Logistics", "Analytics", "Foods", "Robotics", "Insurance", "Studios", "Architects",
    "Health", "Energy",
)
ROLES: tuple[str, ...] = (
    "data analyst", "paediatric nurse", "site engineer", "primary school teacher", "sous chef",
    "UX designer", "payroll officer", "lab technician", "account executive", "civil engineer",
    "physiotherapist", "software tester", "warehouse supervisor", "graphic designer", "pharmacist",
    "project coordinator", "marine biologist", "translator", "quantity surveyor", "museum curator",
)
RELATIONS: tuple[str, ...] = (
    "sister", "brother", "mother", "father", "daughter", "son", "partner", "grandmother", "cousin",
    "aunt", "uncle", "best friend",
)
#: (what, title of the person seen)
APPOINTMENTS: tuple[tuple[str, str], ...] = (
    ("dentist appointment", "Dr."), ("physio session", "Dr."), ("eye test", "Dr."),
    ("parent-teacher meeting", "Ms."), ("tax advisor meeting", "Mr."), ("mortgage meeting", "Ms."),
    ("driving lesson", "Mr."), ("vet appointment", "Dr."), ("piano lesson", "Ms."),
    ("counselling session", "Dr."), ("dermatology check", "Dr."), ("career coaching call", "Ms."),
)
DAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
TIMES: tuple[str, ...] = (
    "8:30 am", "9 am", "9:45 am", "10:15 am", "11 am", "11:30 am", "1:15 pm", "2 pm", "2:40 pm",
    "3 pm", "3:45 pm", "4:20 pm", "5 pm", "5:30 pm", "6:10 pm",
)
#: (condition, medication): paired so the details are plausible together.
HEALTH: tuple[tuple[str, str], ...] = (
    ("migraines", "sumatriptan"), ("asthma", "salbutamol inhaler"), ("high blood pressure", "amlodipine"),
    ("lower back pain", "naproxen"), ("hay fever", "cetirizine"), ("an underactive thyroid", "levothyroxine"),
    ("eczema", "hydrocortisone cream"), ("iron deficiency", "ferrous sulphate"),
    ("a slow-healing wrist fracture", "calcium supplements"), ("sleep apnoea", "CPAP machine"),
    ("tendonitis", "ibuprofen gel"), ("type 2 diabetes", "metformin"),
)
MONEY_ITEMS: tuple[str, ...] = (
    "tax refund", "car loan instalment", "rent increase", "dental bill", "insurance claim",
    "overdue invoice", "mortgage repayment", "deposit refund", "student loan repayment", "childcare fees",
    "boiler repair bill", "council tax arrears",
)
HOBBIES: tuple[str, ...] = (
    "bouldering", "pottery", "birdwatching", "sourdough baking", "salsa dancing", "chess",
    "sea kayaking", "knitting", "trail running", "watercolour painting", "beekeeping",
    "ukulele practice", "urban sketching", "orienteering", "jazz piano", "community gardening",
    "astrophotography", "fencing", "woodturning", "choir singing", "open-water swimming", "calligraphy",
)

# Public pools (may appear in instructions): nothing private, nothing that overlaps the pools above.
TIMEFRAMES: tuple[str, ...] = (
    "this week", "next week", "later this month", "in the coming days", "before the end of the month",
    "over the next fortnight",
)
TONES: tuple[str, ...] = ("friendly", "polite", "warm", "clear", "upbeat", "concise", "relaxed", "sincere")
TONE_HINTS: tuple[str, ...] = ("", " Keep it {tone}.", " Make it sound {tone}.", " The tone should be {tone}.")
LENGTH_HINTS: tuple[str, ...] = ("", " A few sentences is enough.", " Don't make it too long.", " Keep it brief.")

# Style pools.
FORMALITIES: tuple[str, ...] = ("formal", "neutral", "casual")
LENGTHS: tuple[str, ...] = ("short", "medium", "long")
#: (greeting with a name, greeting without one); the greeting *word* is the part before "{name}".
GREETINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "formal": (("Dear {name},", "Dear team,"), ("Good morning {name},", "Good morning,"),
               ("Good afternoon {name},", "Good afternoon,")),
    "neutral": (("Hi {name},", "Hi,"), ("Hello {name},", "Hello everyone,"), ("Morning {name},", "Morning all,")),
    "casual": (("Hey {name}!", "Hey there!"), ("Hiya {name},", "Hiya,"), ("Yo {name}!", "Yo all!")),
}
SIGN_OFFS: dict[str, tuple[str, ...]] = {
    "formal": ("Kind regards,\n{full}", "Yours sincerely,\n{full}", "Best regards,\n{first}",
               "With best wishes,\n{full}"),
    "neutral": ("Best,\n{first}", "Thanks,\n{first}", "All the best,\n{first}", "Warmly,\n{first}"),
    "casual": ("Cheers,\n{first}", "Talk soon!\n{first}", "Love,\n{first}", "Later!\n{first}"),
}
OPENERS: dict[str, tuple[str, ...]] = {
    "formal": ("I hope this message finds you well.", "I hope you are keeping well.", "Thank you for your time."),
    "neutral": ("Hope you're doing well.", "Hope your week is going well.", "Quick note from me."),
    "casual": ("Hope you're good!", "How's things?", "Hope all's well!"),
}
PHRASES: tuple[str, ...] = (
    "Fingers crossed!", "No rush at all.", "Onwards and upwards!", "Let me know what you think.",
    "Hope all is well on your end.", "Much appreciated.", "Thanks a million!", "All good things take time.",
    "Happy to help as always.", "Here's hoping for the best.", "One step at a time.",
    "It's all coming together.", "Life is good.", "As always, thank you.", "Can't wait!",
    "Every little helps.", "Watch this space.", "So there you have it.", "Small steps, big changes.",
    "Take care of yourself.", "Keep me posted.", "Better late than never.", "Grateful as ever.",
    "Here we go again!",
)
FILLERS: tuple[str, ...] = (
    "It has been a busy few weeks.", "The weather has finally turned.",
    "I've been trying to get more sleep lately.", "Things have been a bit hectic on my end.",
    "I finally finished the book I was reading.", "The house is quieter than usual.",
    "I've been cooking more at home recently.", "My plants are somehow still alive.",
    "I keep meaning to take more walks.", "The evenings are getting longer again.",
    "I've started writing things down more.", "Coffee is doing a lot of work this week.",
    "I've been tidying the flat bit by bit.", "It's been a good month overall.",
    "I'm trying to say yes to fewer things.", "The garden needs some attention.",
)
EMOJIS: tuple[str, ...] = (":)", ":D", "<3", ";)")
HASHTAGS: tuple[str, ...] = (
    "#grateful", "#weekendvibes", "#smallwins", "#goodtimes", "#lifelately", "#keepgoing",
    "#worklife", "#everydaymoments",
)


# --------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Scenario:
    """One kind of personalised writing task.

    ``facts`` are slot names whose values are the task's private facts; every body template uses
    all of them (or the greeting does, via ``recipient``), so references always contain them.
    Instruction templates may use only :data:`PUBLIC_SLOTS`.
    """

    name: str
    kind: str
    facts: tuple[str, ...]
    recipient: str | None
    instructions: tuple[str, ...]
    bodies: tuple[str, ...]
    titles: tuple[str, ...] = ()


PUBLIC_SLOTS = frozenset({"relation", "timeframe"})
FACT_SLOTS = frozenset({
    "rel_name", "appt_with", "appt_when", "hobby", "city", "employer", "role", "manager", "condition",
    "medication", "money_item", "money_amount",
})

SCENARIOS: tuple[Scenario, ...] = (
    # ------------------------------------------------------------------ email
    Scenario(
        "email_reschedule", "email", ("appt_with", "appt_when"), None,
        ("Write an email asking to reschedule one of my upcoming appointments.",
         "Draft an email to move an appointment of mine to another day {timeframe}.",
         "Write an email explaining that I can't make an appointment and asking for a new slot.",
         "Compose an email rearranging an upcoming appointment because of a clash at work."),
        ("I have my {appt_what} with {appt_with} on {appt_when}, but something has come up and I won't "
         "be able to make it. Would it be possible to find another slot {timeframe}?",
         "I'm afraid I need to move my {appt_what} on {appt_when}. If {appt_with} has any other time "
         "{timeframe}, I will gladly take it.",
         "Could we rearrange my {appt_what} with {appt_with}? The current booking is {appt_when} and it "
         "now clashes with work."),
    ),
    Scenario(
        "email_time_off", "email", ("manager", "condition"), "manager",
        ("Write an email to my manager asking for a few hours off for a medical appointment.",
         "Email my manager to say I will work from home {timeframe} for health reasons.",
         "Let my manager know by email that I need to leave early for a treatment {timeframe}."),
        ("I need to step out for a few hours {timeframe} because of my {condition}. I'll make up the time "
         "and keep an eye on email.",
         "Would it be okay if I worked from home {timeframe}? My {condition} has been playing up and it "
         "would really help.",
         "Just a heads-up that I have to leave early {timeframe} for a check-up about my {condition}. "
         "Everything urgent is covered."),
    ),
    Scenario(
        "email_invite", "email", ("rel_name", "city"), "rel_name",
        ("Write an email to my {relation} inviting them to come and stay {timeframe}.",
         "Email my {relation} an invitation to visit me.",
         "Write an email asking my {relation} to come over for a few days."),
        ("It would be lovely to have you here in {city} {timeframe}. The spare room is ready and I'd love "
         "to show you around.",
         "Why don't you come and visit me in {city}? Any time {timeframe} would suit me well, and I have "
         "plenty of ideas for what we could do.",
         "I've been meaning to ask: would you like to come to {city} for a few days? We could take it "
         "easy and catch up properly."),
    ),
    Scenario(
        "email_money", "email", ("money_item", "money_amount"), None,
        ("Write an email to my accountant asking for an update on a payment.",
         "Draft an email following up on a financial matter I'm waiting on.",
         "Write an email asking when a pending payment will go through."),
        ("I'm following up on the {money_item} of {money_amount}. Could you let me know when I should "
         "expect it to be settled?",
         "Could you confirm the status of my {money_item}? The amount is {money_amount} and I'd like to "
         "plan around it {timeframe}.",
         "I wanted to check on the {money_item} ({money_amount}). Is there anything else you need from "
         "me to move it forward?"),
    ),
    Scenario(
        "email_colleague", "email", ("role", "employer"), None,
        ("Write an email introducing myself to a new colleague.",
         "Write a short welcome email to someone joining my team {timeframe}.",
         "Draft an email offering help to a new starter on my team."),
        ("As the {role} here at {employer}, I'll be one of your first points of contact. Feel free to "
         "ask me anything.",
         "Welcome to {employer}! I work as {a_role} on the team and I'm happy to show you how things run "
         "here.",
         "My name is {first} and I'm {a_role} at {employer}. Let me know if you'd like a tour or a "
         "coffee {timeframe}."),
    ),
    # ------------------------------------------------------------------ message
    Scenario(
        "message_late", "message", ("rel_name", "city"), "rel_name",
        ("Text my {relation} to say I'm going to be late.",
         "Send a quick message to my {relation} letting them know I'm delayed.",
         "Write a short text apologising for being late to meet my {relation}."),
        ("I'm going to be about twenty minutes late, the traffic across {city} is terrible today.",
         "Sorry, I'm stuck on the other side of {city}. Start without me and I'll be there as soon as I can.",
         "Running behind, the trams in {city} are a mess today. Save me a seat?"),
    ),
    Scenario(
        "message_plans", "message", ("rel_name", "hobby"), "rel_name",
        ("Send my {relation} a message suggesting we do something fun together {timeframe}.",
         "Text my {relation} to make plans {timeframe}.",
         "Write a quick message inviting my {relation} to join me for an activity."),
        ("Are you up for some {hobby} {timeframe}? I'll bring everything we need.",
         "I'm planning an afternoon of {hobby} {timeframe}, want to join me?",
         "Fancy trying {hobby} with me {timeframe}? It would be great to do it together."),
    ),
    Scenario(
        "message_lift", "message", ("rel_name", "appt_with", "appt_when"), "rel_name",
        ("Text my {relation} asking for a lift to an appointment.",
         "Message my {relation} asking if they can drive me somewhere.",
         "Write a short message asking my {relation} for a small favour."),
        ("Could you give me a lift to my {appt_what} with {appt_with} on {appt_when}? I'd really "
         "appreciate it.",
         "Any chance you could drive me on {appt_when}? I've got my {appt_what} with {appt_with}.",
         "Would you be free on {appt_when}? I need a ride to see {appt_with} for my {appt_what}."),
    ),
    Scenario(
        "message_errand", "message", ("rel_name", "medication"), "rel_name",
        ("Text my {relation} asking them to pick something up for me.",
         "Send a message asking my {relation} for help with an errand {timeframe}.",
         "Write a quick message asking my {relation} to stop by the pharmacy."),
        ("Could you pick up my {medication} from the pharmacy on your way? I've run out.",
         "If you pass the pharmacy {timeframe}, could you grab my {medication}? I'll pay you back.",
         "Small favour: my {medication} is ready at the pharmacy. Could you collect it for me?"),
    ),
    Scenario(
        "message_manager", "message", ("manager", "appt_when"), "manager",
        ("Message my manager that I'll be offline for part of a day.",
         "Send a short message to my manager about an appointment that overlaps with work.",
         "Text my manager a heads-up about my availability {timeframe}."),
        ("I'll be offline on {appt_when} for an appointment, back online right after.",
         "Heads-up: I have an appointment on {appt_when}, so I'll miss the check-in.",
         "Quick note that I'm out on {appt_when}. I'll catch up on anything I miss."),
    ),
    # ------------------------------------------------------------------ social post
    Scenario(
        "post_weekend", "social_post", ("hobby", "city"), None,
        ("Write a social media post about how I spent my weekend.",
         "Write a cheerful post for my followers about a recent free afternoon.",
         "Draft a short social post sharing something I enjoyed recently."),
        ("Spent the whole weekend on {hobby} and I regret nothing. {city} was at its best.",
         "Nothing beats a free afternoon of {hobby} here in {city}.",
         "Another great session of {hobby} today. Thank you {city}, you never disappoint."),
    ),
    Scenario(
        "post_work", "social_post", ("role", "employer"), None,
        ("Write a social media post celebrating a milestone at work.",
         "Write a short post about a proud moment in my career.",
         "Draft a post thanking my team for a great year."),
        ("Three years as {a_role} at {employer} today! Grateful for the people I get to work with.",
         "Proud moment: our team at {employer} just shipped something big, and being {a_role} here has "
         "never felt better.",
         "Huge thanks to everyone at {employer}. Being {a_role} there has taught me so much this year."),
    ),
    Scenario(
        "post_family", "social_post", ("rel_name", "city"), None,
        ("Write a social post about a family visit.",
         "Draft a post about spending time with my {relation}.",
         "Write a happy post about a day out with family."),
        ("So good to have {rel_name} here in {city} this week. We walked for hours and talked even longer.",
         "Showed {rel_name} all my favourite corners of {city} today. Best tour guide ever, if I say so myself.",
         "A lazy weekend in {city} with {rel_name}, exactly what we both needed."),
    ),
    Scenario(
        "post_recovery", "social_post", ("condition", "hobby"), None,
        ("Write a social media post about getting back to something I love after a setback.",
         "Write an encouraging post about my recovery progress.",
         "Draft a short post about staying positive through a health issue."),
        ("Living with {condition} has not been easy, but I was back at {hobby} this week!",
         "Small wins: managing my {condition} better and finally back to {hobby}.",
         "To anyone dealing with {condition}: it gets better. Today I managed a full hour of {hobby}."),
    ),
    # ------------------------------------------------------------------ short article
    Scenario(
        "article_city", "article", ("city", "employer", "hobby"), None,
        ("Write a short blog article about what makes my town a good place to live.",
         "Write a short article about my everyday life where I live.",
         "Draft a brief blog post describing my neighbourhood to newcomers."),
        ("I moved to {city} for a job at {employer}, and somehow it became home. The mornings are quiet, "
         "the food is honest, and on weekends I can lose myself in {hobby}.",
         "People ask what keeps me in {city}. Part of it is the work at {employer}, but mostly it is the "
         "small things: the markets, the light, and a great scene for {hobby}.",
         "Living in {city} means my commute to {employer} is a short walk, which leaves my evenings free "
         "for {hobby}."),
        ("Why I love living in {city}", "A year in {city}", "{city}, up close"),
    ),
    Scenario(
        "article_balance", "article", ("role", "hobby"), None,
        ("Write a short article about balancing a demanding job with a personal passion.",
         "Write a brief blog post on how a pastime helps me at work.",
         "Draft a short reflective article about switching off after work."),
        ("As {a_role}, my days are full and often unpredictable, and {hobby} is what keeps me grounded. "
         "An hour of it resets my head better than any app.",
         "Being {a_role} taught me to plan, but {hobby} taught me to be patient. The two turn out to need "
         "each other.",
         "After a long shift as {a_role}, the last thing I want is a screen. That is where {hobby} comes in."),
        ("Balancing work and play", "What my pastime taught me", "Notes on switching off"),
    ),
    Scenario(
        "article_health", "article", ("condition", "medication"), None,
        ("Write a short article about managing a long-term health condition.",
         "Write a brief personal blog post about a health journey.",
         "Draft a short article with tips for staying well through a health issue."),
        ("When I was first told I had {condition}, I was scared. These days a routine with my "
         "{medication} and plenty of rest keeps things under control.",
         "Managing {condition} is mostly about habits. I take my {medication} at the same time every day "
         "and I listen to my body.",
         "My advice to anyone newly diagnosed with {condition}: be patient. It took months to learn that "
         "{medication} works for me."),
        ("Living well, one day at a time", "My health journey so far", "What I wish I had known earlier"),
    ),
    Scenario(
        "article_budget", "article", ("money_item", "money_amount"), None,
        ("Write a short article about how I handle unexpected expenses.",
         "Write a brief blog post with practical budgeting tips from my own life.",
         "Draft a short article about getting on top of personal finances."),
        ("This month the {money_item} came to {money_amount}, and for once I was ready for it. The trick "
         "was a simple monthly buffer.",
         "When the {money_item} of {money_amount} landed, I sat down and rewrote my budget from scratch.",
         "Planning around the {money_item} ({money_amount}) taught me to track every small expense for a "
         "few weeks."),
        ("Budgeting for the unexpected", "Small steps to a calmer budget", "Money notes from a normal month"),
    ),
)
SCENARIOS_BY_KIND: dict[str, tuple[Scenario, ...]] = {
    k: tuple(s for s in SCENARIOS if s.kind == k) for k in TASK_KINDS
}


def _template_slots(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _check_scenarios() -> None:
    """Fail at import if a template could put a private slot into an instruction (by construction)."""
    for sc in SCENARIOS:
        for t in sc.instructions:
            bad = _template_slots(t) - PUBLIC_SLOTS
            if bad:
                raise RuntimeError(f"scenario {sc.name}: instruction template uses private slots {sorted(bad)}")
        for t in sc.bodies:
            used = _template_slots(t) | ({"role"} if "a_role" in _template_slots(t) else set())
            missing = set(sc.facts) - used - ({sc.recipient} if sc.recipient else set())
            if missing:
                raise RuntimeError(f"scenario {sc.name}: body template misses fact slots {sorted(missing)}")
        if not set(sc.facts) <= FACT_SLOTS:
            raise RuntimeError(f"scenario {sc.name}: unknown fact slots {sorted(set(sc.facts) - FACT_SLOTS)}")


_check_scenarios()


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

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> UserProfile:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in obj]
        if missing:
            raise KeyError(missing[0])
        return cls(**{n: obj[n] for n in names})


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

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"FederationConfig.{f.name} must be an int, got {v!r}")
            if f.name != "seed" and v < 0:
                raise ValueError(f"FederationConfig.{f.name} must be >= 0, got {v}")
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
        return [t for t in _split_tasks(self, split) if t.user_id == user_id]


def user_ids(fed: Federation) -> list[str]:
    """User ids in stable order (``user-00``, ``user-01``, ...; zero padded so they also sort)."""
    return [p.user_id for p in fed.profiles]


def make_user_id(index: int, n_users: int) -> str:
    return f"user-{index:0{max(2, len(str(n_users - 1)))}d}"


def _split_tasks(fed: Federation, split: str) -> list[TaskRecord]:
    if split not in fed.tasks:
        raise ValueError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")
    return fed.tasks[split]


# --------------------------------------------------------------------------- generation
def _rng(seed: int, user_id: str, purpose: str) -> random.Random:
    """An independent generator per user and purpose (string seeds are hashed with SHA-512)."""
    return random.Random(f"{GENERATOR}:{FORMAT_VERSION}:{seed}:{user_id}:{purpose}")


def _article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _amount(rng: random.Random) -> str:
    return f"\u20ac{rng.randrange(80, 4800):,}"


def _dedupe(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        if v and v not in seen:
            seen[v] = None
    return list(seen)


def _make_profile(user_id: str, seed: int, taken_names: set[str]) -> UserProfile:
    rng = _rng(seed, user_id, "profile")
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
    private_values = _dedupe([
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


def _slots(profile: UserProfile, rng: random.Random) -> dict[str, str]:
    rel = rng.choice(profile.relatives)
    appt = rng.choice(profile.schedule)
    return {
        "relation": rel["relation"], "rel_name": rel["name"], "appt_what": appt["what"],
        "appt_with": appt["with"], "appt_when": f"{appt['day']} at {appt['time']}",
        "hobby": rng.choice(profile.hobbies), "city": profile.city, "employer": profile.employer,
        "role": profile.role, "a_role": _article(profile.role), "manager": profile.manager,
        "condition": profile.health["condition"], "medication": profile.health["medication"],
        "money_item": profile.money["item"], "money_amount": profile.money["amount"],
        "timeframe": rng.choice(TIMEFRAMES), "first": profile.first_name,
    }


def _sign(template: str, profile: UserProfile) -> str:
    return template.format(full=profile.name, first=profile.first_name, initial=profile.first_name[0])


def _one_line_sign_off(profile: UserProfile) -> str:
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
        return f"{greeting}\n{text}\n{_one_line_sign_off(profile)}"
    if sc.kind == "social_post":
        tags = " ".join(st["hashtags"])
        text = " ".join([body, *fillers, *phrases])
        return f"{text} {tags}".rstrip()
    # article: title, body paragraph, a closing paragraph, byline
    title = rng.choice(sc.titles).format(**slots)
    closing = " ".join([*fillers, *phrases]) if fillers else " ".join(phrases)
    return f"{title}\n\n{body}\n\n{closing}\n\n{_one_line_sign_off(profile)}"


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
        f"sign-off \"{_one_line_sign_off(profile)}\"; "
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


def _new_canary(rng: random.Random, prefix: str) -> str:
    return f"{prefix} {_random_secret(rng)}"


def _random_secret(rng: random.Random) -> str:
    return "".join(rng.choice(CANARY_ALPHABETS[c]) if c in CANARY_ALPHABETS else c for c in CANARY_PATTERN)


def random_canary_like(canary: str | dict[str, Any], rng: Any) -> str | dict[str, Any]:
    """A different canary of the same format: same prefix, fresh secret drawn from the same alphabets.

    ``canary`` is a canary string (returns a canary string) or a record from :func:`canary_records`
    (returns ``{"text", "prefix", "secret"}`` for the alternative, which is what
    ``attacks.canary_exposure(..., alternatives_fn=random_canary_like)`` reads). ``rng`` is a
    ``random.Random`` or a ``numpy.random.Generator``. Used for secret-sharer exposure: rank the
    true canary among such alternatives (:data:`CANARY_SPACE_SIZE` possible secrets).
    """
    if isinstance(canary, dict):
        alt = random_canary_like(str(canary["text"]), rng)
        new_secret = alt.rpartition(" ")[2]
        return {"text": alt, "prefix": canary.get("prefix", canary_secret(alt)[0]), "secret": new_secret}
    prefix, sep, secret = canary.rpartition(" ")
    if not sep or len(secret) != len(CANARY_PATTERN) or not all(
        (s in CANARY_ALPHABETS[p]) if p in CANARY_ALPHABETS else s == p
        for s, p in zip(secret, CANARY_PATTERN, strict=True)
    ):
        raise ValueError(f"'{canary}' is not a canary of format '<prefix> {CANARY_PATTERN}'")
    numpy_like = hasattr(rng, "integers")
    for _ in range(100):
        chars = []
        for c in CANARY_PATTERN:
            alphabet = CANARY_ALPHABETS.get(c)
            if alphabet is None:
                chars.append(c)
            elif numpy_like:
                chars.append(alphabet[int(rng.integers(len(alphabet)))])
            else:
                chars.append(rng.choice(alphabet))
        new = "".join(chars)
        if new != secret:
            return f"{prefix} {new}"
    raise RuntimeError("could not draw a different secret (random generator is constant?)")


def canary_secret(canary: str) -> tuple[str, str]:
    """Split a canary into (prefix + trailing space, secret), e.g. for ``attacks.CanarySpec``."""
    prefix, _, secret = canary.rpartition(" ")
    return prefix + " ", secret


CANARY_PLANTING = "P.S. Note to self: {canary}."


def canary_records(fed: Federation) -> list[dict[str, Any]]:
    """One dict per canary, ready for ``fedcogen.simulations.attacks.canary_exposure``.

    Keys: ``canary_id``, ``owner``, ``text`` (the canary), ``prefix`` (the words before the secret as
    they appear in training, i.e. including "P.S. Note to self: "), ``secret``, ``prompt`` (the
    history prompt of the first text it was planted in) and ``planted_in`` (text ids).
    """
    kinds = {h.text_id: h.kind for h in fed.history}
    out = []
    for owner in user_ids(fed):
        for j, canary in enumerate(fed.canaries.get(owner, [])):
            prefix, secret = canary_secret(canary)
            where = fed.planted_in.get(owner, {}).get(canary, [])
            prompt = history_prompt(KIND_LABELS[kinds[where[0]]]) if where and where[0] in kinds else None
            out.append({
                "canary_id": f"{owner}-c{j}", "owner": owner, "text": canary,
                "prefix": CANARY_PLANTING.split("{canary}")[0] + prefix, "secret": secret,
                "prompt": prompt, "planted_in": list(where),
            })
    return out


def load_canaries(folder: str | Path) -> dict[str, list[str]]:
    """``{user_id: [canary, ...]}`` from a federation folder's ``private/canaries.json``."""
    path = Path(folder) / CANARIES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"canary manifest not found: {path}")
    return dict(json.loads(path.read_text(encoding="utf-8"))["canaries"])


def _make_history(profile: UserProfile, cfg: FederationConfig, canaries: list[str]) -> tuple[
        list[HistoryText], dict[str, list[str]]]:
    rng = _rng(cfg.seed, profile.user_id, "history")
    texts = []
    for i in range(cfg.history_per_user):
        kind = _pick_kind(profile, rng)
        sc = rng.choice(SCENARIOS_BY_KIND[kind])
        slots = _slots(profile, rng)
        texts.append(HistoryText(profile.user_id, f"{profile.user_id}-h{i:03d}", kind,
                                 _compose(profile, sc, slots, rng)))
    planted: dict[str, list[str]] = {}
    slots_for = rng.sample(range(len(texts)), len(canaries) * cfg.canary_repeats)
    for j, idx in enumerate(slots_for):
        canary = canaries[j % len(canaries)]
        h = texts[idx]
        h.text = f"{h.text}\n{CANARY_PLANTING.format(canary=canary)}"
        planted.setdefault(canary, []).append(h.text_id)
    return texts, planted


def _make_tasks(profile: UserProfile, cfg: FederationConfig, history: list[HistoryText],
                planted_ids: set[str]) -> dict[str, list[TaskRecord]]:
    rng = _rng(cfg.seed, profile.user_id, "tasks")
    clean_history = [h for h in history if h.text_id not in planted_ids]
    seen: set[str] = set()  # references: no target repeats within a user (e.g. train -> test)
    out: dict[str, list[TaskRecord]] = {}
    for split, n in cfg.tasks_per_split().items():
        out[split] = []
        for i in range(n):
            for _attempt in range(200):
                kind = _pick_kind(profile, rng)
                sc = rng.choice(SCENARIOS_BY_KIND[kind])
                slots = _slots(profile, rng)
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


def generate_federation(cfg: FederationConfig | None = None, *, progress: bool = False) -> Federation:
    """Generate the whole federation in memory (well under a second for the default 16 users)."""
    cfg = cfg or FederationConfig()
    ids = [make_user_id(i, cfg.n_users) for i in range(cfg.n_users)]
    iterator: Iterable[str] = ids
    if progress:
        from tqdm import tqdm

        iterator = tqdm(ids, desc="generating users", unit="user")
    profiles, history, canaries, planted_in = [], [], {}, {}
    tasks: dict[str, list[TaskRecord]] = {s: [] for s in SPLITS}
    taken_names: set[str] = set()
    all_canaries: set[str] = set()
    for uid in iterator:
        prof = _make_profile(uid, cfg.seed, taken_names)
        crng = _rng(cfg.seed, uid, "canaries")
        mine: list[str] = []
        for prefix in crng.sample(CANARY_PREFIXES, cfg.canaries_per_user):
            c = _new_canary(crng, prefix)
            while c in all_canaries:  # astronomically rare, but uniqueness is a promise
                c = _new_canary(crng, prefix)
            all_canaries.add(c)
            mine.append(c)
        hist, planted = _make_history(prof, cfg, mine)
        user_tasks = _make_tasks(prof, cfg, hist, {t for ids_ in planted.values() for t in ids_})
        profiles.append(prof)
        history.extend(hist)
        canaries[uid] = mine
        planted_in[uid] = planted
        for s in SPLITS:
            tasks[s].extend(user_tasks[s])
    return Federation(config=cfg, profiles=profiles, history=history, tasks=tasks, canaries=canaries,
                      planted_in=planted_in)


# --------------------------------------------------------------------------- leak checks
def _norm(text: str) -> str:
    """Lower-case, NFKC, punctuation/whitespace runs -> one space (as the evaluation's leak check)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\W_]+", " ", text).strip()


def private_values(fed: Federation, user_id: str, include_canaries: bool = True) -> list[str]:
    """Every private value of a user (profile values, plus canaries unless excluded)."""
    vals = list(fed.profile(user_id).private_values)
    return vals + (list(fed.canaries.get(user_id, [])) if include_canaries else [])


def find_leaks(fed: Federation) -> list[str]:
    """Privacy invariants of the generated data; returns one line per violation (empty = clean).

    * no private value of *any* user occurs in *any* instruction (normalised substring match, the
      strictest reading: the evaluation's wire leak check uses the same normalisation);
    * every canary occurs in its owner's history and in no other text (other users' history, any
      task field of any split).
    """
    problems = []
    values = sorted({_norm(v) for uid in user_ids(fed) for v in private_values(fed, uid)} - {""}, key=len,
                    reverse=True)
    pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None
    for split in SPLITS:
        for t in fed.tasks[split]:
            m = pattern.search(_norm(t.instruction)) if pattern else None
            if m:
                problems.append(f"{t.task_id}: instruction contains private value '{m.group(0)}'")
    for owner, cans in fed.canaries.items():
        for c in cans:
            if not any(c in h.text for h in fed.history if h.user_id == owner):
                problems.append(f"canary of {owner} '{c}' is not in its owner's history")
            for h in fed.history:
                if h.user_id != owner and c in h.text:
                    problems.append(f"canary of {owner} appears in {h.text_id} of another user")
            for split in SPLITS:
                for t in fed.tasks[split]:
                    if any(c in s for s in (t.instruction, t.private_context, t.reference, *t.private_facts)):
                        problems.append(f"canary of {owner} appears in task {t.task_id}")
    return problems


# --------------------------------------------------------------------------- writing / loading
def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _counts(fed: Federation) -> dict[str, Any]:
    def by_kind(items: Iterable[str]) -> dict[str, int]:
        out = dict.fromkeys(TASK_KINDS, 0)
        for k in items:
            out[k] = out.get(k, 0) + 1
        out["total"] = sum(out.values())
        return out

    return {
        "users": len(fed.profiles),
        "history": by_kind(h.kind for h in fed.history),
        "tasks": {s: by_kind(t.task_type for t in fed.tasks[s]) for s in SPLITS},
        "canaries": sum(len(v) for v in fed.canaries.values()),
    }


def _canary_doc(fed: Federation) -> dict[str, Any]:
    return {
        "canaries": fed.canaries,
        "planted_in": fed.planted_in,
        "repeats": fed.config.canary_repeats,
        "format": {
            "shape": f"<prefix> <secret>, secret pattern {CANARY_PATTERN}",
            "pattern": CANARY_PATTERN,
            "alphabets": CANARY_ALPHABETS,
            "prefixes": list(CANARY_PREFIXES),
            "space_size": CANARY_SPACE_SIZE,
            "planted_as": CANARY_PLANTING.replace("{canary}", "<canary>"),
            "alternatives": "fedcogen.simulations.data.random_canary_like(canary, rng)",
        },
    }


def federation_files(fed: Federation) -> dict[str, bytes]:
    """The bytes of every data file (manifest excluded), keyed by relative path."""
    files = {
        PROFILES_FILE: _jsonl(asdict(p) for p in fed.profiles),
        HISTORY_FILE: _jsonl(asdict(h) for h in fed.history),
        **{TASK_FILES[s]: _jsonl(t.to_json() for t in fed.tasks[s]) for s in SPLITS},
        CANARIES_FILE: (json.dumps(_canary_doc(fed), sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode(),
    }
    return files


def write_federation(fed: Federation, out_dir: str | Path) -> Path:
    """Write all files plus ``manifest.json`` (sha256 of each) into ``out_dir``; returns the folder.

    Existing files of the same names are replaced; other files in the folder are left alone (the
    CLI refuses non-empty folders unless ``--force``). The manifest is written last, so a folder with
    a manifest is complete.
    """
    out = Path(out_dir)
    (out / "private").mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_FILE
    if manifest_path.exists():
        manifest_path.unlink()
    files = federation_files(fed)
    meta = {}
    for rel, data in files.items():
        (out / rel).write_bytes(data)
        records = data.count(b"\n") if rel.endswith(".jsonl") else None
        meta[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "records": records}
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": GENERATOR,
        "seed": fed.config.seed,
        "n_users": fed.config.n_users,
        "config": asdict(fed.config),
        "user_ids": user_ids(fed),
        "counts": _counts(fed),
        "files": meta,
        "task_kinds": {k: KIND_LABELS[k] for k in TASK_KINDS},
    }
    manifest_path.write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    return out


_REQUIRED_STR = ("user_id", "instruction", "private_context", "reference")
_OPTIONAL_STR = ("task_id", "task_type", "split", "scenario")


def _check_task(obj: Any, known_users: Collection[str] | None) -> list[tuple[str, str]]:
    if not isinstance(obj, dict):
        return [("-", f"expected a JSON object, got {type(obj).__name__}")]
    problems = []
    for name in _REQUIRED_STR:
        if name not in obj:
            problems.append((name, "missing"))
        elif not isinstance(obj[name], str):
            problems.append((name, f"expected a string, got {type(obj[name]).__name__}"))
        elif not obj[name].strip():
            problems.append((name, "empty"))
    for name in _OPTIONAL_STR:
        if name in obj and not isinstance(obj[name], str):
            problems.append((name, f"expected a string, got {type(obj[name]).__name__}"))
    if "private_facts" in obj:
        pf = obj["private_facts"]
        if not isinstance(pf, list):
            problems.append(("private_facts", f"expected a list of strings, got {type(pf).__name__}"))
        else:
            for i, x in enumerate(pf):
                if not isinstance(x, str):
                    problems.append(("private_facts", f"expected a list of strings; item {i} is {type(x).__name__}"))
                    break
                if not x.strip():
                    problems.append(("private_facts", f"expected a list of strings; item {i} is empty"))
                    break
    if known_users is not None and isinstance(obj.get("user_id"), str) and obj["user_id"].strip():
        if obj["user_id"] not in known_users:
            problems.append(("user_id", f"unknown user '{obj['user_id']}' (not in the profiles)"))
    return problems


def _users_next_to(path: Path) -> set[str] | None:
    prof = path.parent / PROFILES_FILE
    if not prof.is_file() or path.name == PROFILES_FILE:
        return None
    users = set()
    for line in prof.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                users.add(str(json.loads(line)["user_id"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                return None
    return users


def validate_task_file(path: str | Path, strict: bool = True, known_users: Collection[str] | None = None,
                       ) -> list[TaskRecord] | tuple[list[TaskRecord], list[tuple[int, str, str]]]:
    """Parse and check a task JSONL file (generated splits or a hand-written ``fedcogen eval`` file).

    Checks every line: valid JSON object; ``user_id``, ``instruction``, ``private_context``,
    ``reference`` present, strings, non-empty; optional ``task_id``/``task_type``/``split`` strings;
    ``private_facts`` a list of strings; ``task_id`` unique; ``user_id`` known when a profile set is
    known (``known_users``, or a ``profiles.jsonl`` next to the file). Blank lines are ignored.

    ``strict=True``: returns the records or raises :class:`DataValidationError` naming file, line and
    field of the first problem (all problems in ``.problems``). ``strict=False``: returns
    ``(valid_records, [(line, field, reason), ...])``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"task file not found: {p}")
    if known_users is None:
        known_users = _users_next_to(p)
    records: list[TaskRecord] = []
    problems: list[tuple[int, str, str]] = []
    seen_ids: dict[str, int] = {}
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(p, [(0, "-", f"not UTF-8 text ({exc.reason})")]) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((lineno, "-", f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        bad = _check_task(obj, known_users)
        if bad:
            problems.extend((lineno, f, r) for f, r in bad)
            continue
        tid = obj.get("task_id") or f"{p.stem}-{lineno}"
        if tid in seen_ids:
            problems.append((lineno, "task_id", f"duplicate '{tid}' (first on line {seen_ids[tid]})"))
            continue
        seen_ids[tid] = lineno
        records.append(TaskRecord(
            user_id=obj["user_id"], instruction=obj["instruction"], private_context=obj["private_context"],
            reference=obj["reference"], task_id=tid, task_type=obj.get("task_type", ""),
            private_facts=list(obj.get("private_facts", [])), split=obj.get("split", ""),
            scenario=obj.get("scenario", ""),
        ))
    if not records and not problems:
        problems.append((0, "-", "file has no task records"))
    if strict:
        if problems:
            raise DataValidationError(p, problems)
        return records
    return records, problems


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    problems: list[tuple[int, str, str]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((lineno, "-", f"invalid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append((lineno, "-", "expected a JSON object"))
            continue
        for name in required:
            if name not in obj:
                problems.append((lineno, name, "missing"))
        rows.append(obj)
    if problems:
        raise DataValidationError(path, problems)
    return rows


def load_federation(folder: str | Path) -> Federation:
    """Load a folder written by :func:`write_federation`, validating every file.

    Checks the manifest's format version, every file's sha256 (a changed file is reported by name),
    each record's fields and types, that user ids match the profiles, and the manifest counts.
    """
    root = Path(folder)
    mpath = root / MANIFEST_FILE
    if not mpath.is_file():
        raise FileNotFoundError(f"{root} has no {MANIFEST_FILE}: not a federation folder (run `fedcogen data generate`)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataValidationError(mpath, [(exc.lineno, "-", f"invalid JSON ({exc.msg})")]) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataValidationError(mpath, [(0, "format_version",
                                           f"{manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")])
    for rel, meta in manifest.get("files", {}).items():
        fpath = root / rel
        if not fpath.is_file():
            raise FileNotFoundError(f"{fpath} listed in {MANIFEST_FILE} is missing")
        digest = hashlib.sha256(fpath.read_bytes()).hexdigest()
        if digest != meta.get("sha256"):
            raise DataValidationError(fpath, [(0, "sha256", "content differs from the manifest (file changed after generation)")])
    try:
        cfg = FederationConfig(**manifest["config"])
    except (KeyError, TypeError) as exc:
        raise DataValidationError(mpath, [(0, "config", f"invalid ({exc})")]) from None

    profiles = []
    ppath = root / PROFILES_FILE
    for i, obj in enumerate(_read_jsonl(ppath, tuple(f.name for f in fields(UserProfile))), start=1):
        if not isinstance(obj.get("private_values"), list):
            raise DataValidationError(ppath, [(i, "private_values", "expected a list of strings")])
        profiles.append(UserProfile.from_json(obj))
    known = {p.user_id for p in profiles}
    if len(known) != len(profiles):
        raise DataValidationError(ppath, [(0, "user_id", "duplicate user ids")])

    hpath = root / HISTORY_FILE
    history = []
    for i, obj in enumerate(_read_jsonl(hpath, ("user_id", "text_id", "kind", "text")), start=1):
        if obj["user_id"] not in known:
            raise DataValidationError(hpath, [(i, "user_id", f"unknown user '{obj['user_id']}'")])
        if obj["kind"] not in TASK_KINDS:
            raise DataValidationError(hpath, [(i, "kind", f"unknown kind '{obj['kind']}'")])
        if not isinstance(obj["text"], str) or not obj["text"].strip():
            raise DataValidationError(hpath, [(i, "text", "expected a non-empty string")])
        history.append(HistoryText(obj["user_id"], obj["text_id"], obj["kind"], obj["text"]))

    tasks: dict[str, list[TaskRecord]] = {}
    for split in SPLITS:
        tpath = root / TASK_FILES[split]
        recs = validate_task_file(tpath, strict=True, known_users=known) if tpath.stat().st_size else []
        tasks[split] = list(recs)  # type: ignore[arg-type]

    cpath = root / CANARIES_FILE
    try:
        cdoc = json.loads(cpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataValidationError(cpath, [(exc.lineno, "-", f"invalid JSON ({exc.msg})")]) from None
    canaries = cdoc.get("canaries")
    if not isinstance(canaries, dict) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in canaries.values()):
        raise DataValidationError(cpath, [(0, "canaries", "expected {user_id: [canary, ...]}")])
    unknown = sorted(set(canaries) - known)
    if unknown:
        raise DataValidationError(cpath, [(0, "canaries", f"unknown user '{unknown[0]}'")])

    fed = Federation(config=cfg, profiles=profiles, history=history, tasks=tasks, canaries=canaries,
                     planted_in=cdoc.get("planted_in", {}))
    counts = manifest.get("counts")
    if counts != _counts(fed):
        raise DataValidationError(mpath, [(0, "counts", "record counts differ from the files")])
    return fed


# --------------------------------------------------------------------------- training / HF views
def client_examples(fed: Federation, user_id: str, split: str = "train",
                    history: bool = True, fact_swaps: int = 0) -> list[tuple[str, str]]:
    """(prompt, target) pairs for causal-LM training on one user's private data.

    ``split="train"``: the train tasks (prompt = ``device_prompt(instruction, private_context)``,
    target = reference), preceded, if ``history``, by the user's history texts (prompt =
    ``history_prompt(kind label)``, target = the text, canaries included), followed by ``fact_swaps``
    counterfactual copies of each task (:func:`swap_private_values`). Other splits: only that split's
    tasks (no history, no copies).
    """
    profile = fed.profile(user_id)  # raises a clear error for unknown users
    pairs: list[tuple[str, str]] = []
    if split == "train" and history:
        pairs += [(history_prompt(KIND_LABELS[h.kind]), h.text) for h in fed.history_of(user_id)]
    tasks = fed.tasks_of(user_id, split)
    pairs += [(device_prompt(t.instruction, t.private_context), t.reference) for t in tasks]
    if split == "train":
        for copy in range(fact_swaps):
            for i, t in enumerate(tasks):
                context, reference = swap_private_values(t, profile, fed.config.seed * 1000 + copy * 997 + i)
                pairs.append((device_prompt(t.instruction, context), reference))
    return pairs


def _fields(p: UserProfile, n_rel: int, n_sched: int, n_hobbies: int) -> list[str]:
    """A profile's private values in a fixed field order (list fields padded by cycling)."""
    def cyc(items: list, i: int) -> Any:
        return items[i % len(items)]

    out = [p.name, p.first_name, p.last_name, p.city, p.employer, _article(p.role), p.role, p.manager,
           p.health["condition"], p.health["medication"], p.money["item"], p.money["amount"]]
    out += [cyc(p.relatives, i)["name"] for i in range(n_rel)]
    for i in range(n_sched):
        a = cyc(p.schedule, i)
        out += [a["with"], f"{a['day']} at {a['time']}"]
    return out + [cyc(p.hobbies, i) for i in range(n_hobbies)]


def swap_private_values(task: TaskRecord, profile: UserProfile, seed: int) -> tuple[str, str]:
    """A counterfactual copy of a task: every private value of its user replaced, the same way in the
    context and in the reference, by the matching value of a freshly drawn (fake) profile.

    Why: a user's tasks repeat the same facts, so local training can lower the loss by memorising
    them ("this user lives in Malmo") instead of reading them from the context, and that does not
    carry over to users the model never saw (measured: docs/personalisation.md). In a counterfactual
    copy the memorised value is wrong and only the context has the right one, so copying is what
    training rewards. Runs on the device, on the device's own data; nothing leaves it.
    """
    shape = (len(profile.relatives), len(profile.schedule), len(profile.hobbies))
    real = _fields(profile, *shape)
    # several fake profiles, so that each value can get a replacement different from itself
    fakes = [_fields(_make_profile(f"swap-{seed}-{k}", seed, {profile.name}), *shape) for k in range(4)]
    pairs, used = [], set(real)
    for j, old in enumerate(real):
        new = next((f[j] for f in fakes if f[j] not in used), None)
        if old and new is not None:
            pairs.append((old, new))
            used.add(new)
    context, reference = task.private_context, task.reference
    # longest values first, through placeholders, so "Dr Okafor" is not half-replaced via "Okafor"
    pairs.sort(key=lambda p: -len(p[0]))
    for i, (old, _new) in enumerate(pairs):
        context, reference = context.replace(old, f"\x00{i}\x00"), reference.replace(old, f"\x00{i}\x00")
    for i, (_old, new) in enumerate(pairs):
        context, reference = context.replace(f"\x00{i}\x00", new), reference.replace(f"\x00{i}\x00", new)
    return context, reference


def to_hf_dataset(fed: Federation, split: str):
    """A ``datasets.Dataset`` of one split's task records (or ``"history"`` for the past texts)."""
    import datasets

    if split == "history":
        rows = [asdict(h) for h in fed.history]
        cols = [f.name for f in fields(HistoryText)]
    else:
        rows = [t.to_json() for t in _split_tasks(fed, split)]
        cols = [f.name for f in fields(TaskRecord)]
    data = {c: [r[c] for r in rows] for c in cols}
    features = {c: datasets.Value("string") for c in cols}
    if "private_facts" in features:
        features["private_facts"] = datasets.Sequence(datasets.Value("string"))
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def partition_by_user(fed: Federation, split: str):
    """A flwr-datasets ``NaturalIdPartitioner`` over ``user_id`` with the split's dataset attached.

    Partition ids follow the sorted user ids, which equals :func:`user_ids` order (ids are zero
    padded), so ``partitioner.load_partition(i)`` is the data of ``user_ids(fed)[i]``. Users without
    rows in the split get no partition.
    """
    from flwr_datasets.partitioner import NaturalIdPartitioner

    part = NaturalIdPartitioner(partition_by="user_id")
    part.dataset = to_hf_dataset(fed, split)
    return part
