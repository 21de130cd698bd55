"""Writes the foreign-format evaluation task files of ``simulations/evaluation/foreign_sets/``
(``python -c "from fedcogen.simulations.evaluation.foreign_sets_gen import build; build()"``; deterministic,
seed fixed below).

Why a procedure of its own: an adapter trained on ``fedcogen.dataset`` must be measured on users that
generator did not write (issue 26), or a gain may only mean it learned the generator. This module has its
own hand-written vocabulary (names, places, occupations, traits, details, task titles, sentences) and
imports nothing from ``fedcogen.dataset``; ``tests/simulations/evaluation/test_foreign_sets.py`` checks that
no name, place or occupation here occurs in the generator's pools. The files are **evaluation only**:
never train on them, and do not change this procedure to raise a score (rewrite it with new words
instead, and say so).

Sets, each a ``fedcogen eval --dataset`` task file (user_id, instruction, private_context, reference,
private_facts, task_type, task_id):

* ``cogenesis.jsonl``: the CoGenesis way of writing a user: labelled profile items (Name, Location,
  Occupation, Traits, Writing style, Private details) followed by a free-text writing history; the
  instruction is a short task title ("Restoring the old homestead"); contexts of ~600-1,600 words.
* ``threads.jsonl``: no labels at all: a pasted message thread and a few loose notes; the instruction
  is a conversational request ("can you write back to ... for me"). Short contexts (~80-200 words).

``private_facts`` lists the names, places and occupations the reference uses (what fact recall scores).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "foreign_sets"
SEED = 20261206

# --------------------------------------------------------------------------- own vocabulary
FIRST = ("Wilhelmina", "Osric", "Perpetua", "Thaddeus", "Marguerite", "Alistair", "Euphemia", "Barnaby",
         "Cordelia", "Ignatius", "Philippa", "Lysander", "Henrietta", "Ambrose", "Winifred", "Cuthbert",
         "Rosamund", "Evander", "Millicent", "Fitzgerald", "Araminta", "Leopold", "Imogen", "Percival",
         "Clementina", "Horatio", "Beatrix", "Jasper", "Ottilie", "Rupert")
LAST = ("Achebe", "Fairweather", "Penhaligon", "Blackwood", "Quimby", "Ashdown", "Trelawney", "Merriweather",
        "Oduya", "Pemberton-Hale", "Gwynne", "Thistlewood", "Ravensworth", "Haverford", "Calloway", "Dunmore")
PLACES = ("Kendal", "Whitby", "Ballarat", "Dunedin", "Moose Jaw", "Tobermory", "Hay-on-Wye", "Rotorua",
          "Fremantle", "Lunenburg", "Aberystwyth", "Stornoway", "Kalgoorlie", "Nelson", "Cobh", "Portree")
OCCUPATIONS = ("stonemason", "ferry deckhand", "veterinary receptionist", "piano tuner", "beekeeper's apprentice",
               "railway signaller", "cheesemaker", "lighthouse volunteer", "bookbinder", "sheep shearer",
               "radio producer", "glassblower", "ambulance dispatcher", "orchard manager")
TRAITS = ("patient", "stubborn about tools", "dry sense of humour", "early riser", "chronically late",
          "collects old maps", "hates phone calls", "sings while working", "overthinks emails", "generous with time",
          "easily distracted", "loves a checklist")
STYLES = ("plain short sentences, signs off with just an initial", "chatty, long paragraphs, lots of dashes",
          "formal and careful, never uses contractions", "warm, uses exclamation marks, asks questions",
          "dry and to the point, no greetings")
#: (detail template, the fact it names): private details mention a person or a place of the user's own.
DETAILS = (
    ("recovering from a shoulder operation; {rel} drives them to physio", "rel"),
    ("saving for a kiln; {rel} promised to lend the rest", "rel"),
    ("inherited a half-ruined cottage near {place2} from an aunt", "place2"),
    ("still owes {rel} for the roof repairs", "rel"),
    ("quietly applying for a job in {place2}", "place2"),
    ("their dog was rescued by {rel} last winter", "rel"),
    ("planning a surprise trip to {place2} for a sibling", "place2"),
    ("on a waiting list for hearing aids; only {rel} knows", "rel"),
)
TITLES = {
    "Restoring the old homestead": "restore",
    "A letter to the parish council about the footbridge": "council",
    "My first market stall": "stall",
    "Why I stayed in a small town": "stayed",
    "Thank you to the neighbour who helped": "thanks",
    "Notes from a long winter": "winter",
    "Applying for the apprenticeship scheme": "apply",
    "Invitation to the harvest supper": "supper",
}
#: Reference sentences per title: {name} {place} {occ} {fact} are filled from the user.
BODIES = {
    "restore": ("When I took on the old homestead outside {place}, half the roof was open to the sky.",
                "My work as a {occ} taught me to go slowly and measure twice.", "{fact_sentence}",
                "It will take years, but every weekend it looks a little more like a home."),
    "council": ("I am writing as a resident of {place} about the footbridge by the mill.",
                "As a {occ} I cross it twice a day, and the boards are rotten at the far end.", "{fact_sentence}",
                "I would ask the council to put the repair on the agenda for the next meeting."),
    "stall": ("Last Saturday I finally set up my first stall at the {place} market.",
              "After years as a {occ}, selling to strangers felt strange and wonderful.", "{fact_sentence}",
              "I sold out by two o'clock and have already booked a pitch for next month."),
    "stayed": ("People keep asking why I never left {place}.",
               "Being a {occ} here means knowing everyone by name, for better or worse.", "{fact_sentence}",
               "The answer is simple: this is where my people are."),
    "thanks": ("I wanted to say thank you properly, not just in passing on the lane in {place}.",
               "You know how busy it gets for a {occ} this time of year.", "{fact_sentence}",
               "Please let me return the favour soon."),
    "winter": ("This winter in {place} has been the longest I can remember.",
               "Work as a {occ} slowed to almost nothing in the snow.", "{fact_sentence}",
               "Now the days are stretching again and I feel lighter."),
    "apply": ("I would like to apply for the apprenticeship scheme advertised in {place}.",
              "For the last few years I have worked as a {occ}, and I am ready for a new trade.", "{fact_sentence}",
              "I am available for an interview at any time."),
    "supper": ("You are invited to the harvest supper at the church hall in {place}.",
               "I will be cooking, which for a {occ} is a brave thing to promise.", "{fact_sentence}",
               "Bring a dish if you can, and bring an appetite either way."),
}
FACT_SENTENCES = {
    "rel": ("{value} has been a great help through all of it.", "I could not have managed without {value}."),
    "place2": ("Part of me is already thinking about {value}.", "My mind keeps drifting to {value}."),
}
#: Free-text writing history: paragraphs with {place}, {occ}, {rel}, {name} slots (varied lengths).
HISTORY = (
    "Another grey morning in {place}. I walked the long way round the harbour before work, past the boats that "
    "never seem to leave. The gulls were fighting over something unspeakable. By the time I reached the yard my "
    "hands were numb, which is no way to start a day as a {occ}.",
    "Wrote to the bank again. Third letter this month. I keep it polite but I can feel my patience going. {rel} "
    "says I should just ring them, but I would rather write ten letters than sit on hold for an hour listening to "
    "the same four bars of music.",
    "There is a particular quiet after the last customer leaves. I like to sweep up slowly, radio low, and think "
    "about nothing. Today I thought about my grandmother's kitchen, the smell of toast and coal, and the way she "
    "hummed the same hymn every single afternoon. I should write more of those memories down before they go.",
    "Long day. The van broke down on the hill out of {place} and I waited two hours for the recovery lorry. A "
    "farmer stopped and gave me a flask of tea without a word, then drove off. I did not even get his name. People "
    "here are like that, and it is one of the reasons I have stayed.",
    "I have been trying to learn the names of the birds in the garden. So far: blackbird, robin, one I think is a "
    "wren, and a large, rude pigeon. {rel} bought me a little guidebook, which is already full of pencil notes and "
    "question marks.",
    "Notes for the meeting: ask about the budget for the new tools, mention the leak in the store room again, "
    "suggest we rotate the weekend shifts. Keep it short. Do not get drawn into the argument about the car park.",
    "It rained for nine days straight. The river came up over the lower field and the sheep had to be moved twice. "
    "I slept badly and dreamt about floods. This morning the sun came out as if nothing had happened, which felt "
    "almost rude.",
    "Finished the book {rel} lent me, a slow novel about a lighthouse family. Nothing happens for three hundred "
    "pages and I loved every one of them. I will give it back with a note tucked inside, the way we always do.",
    "I keep a list of small jobs on the back of the kitchen door: fix the gate latch, oil the hinges, sort the "
    "seed packets, phone about the chimney. I cross one off and two more appear. It is a kind of hobby, I suppose.",
    "The cold snap burst a pipe under the sink and I spent the evening lying on the kitchen floor with a torch in "
    "my mouth. {rel} talked me through it over the phone, which mostly meant saying 'no, the other valve' in a "
    "very calm voice. The floor is dry now. My pride is not.",
    "Market day. I bought far too many apples because the woman on the end stall remembered my name, and it "
    "felt rude not to. I will have to make a crumble, or three. On the way back I stopped at the quay in {place} "
    "and watched the fishing boats come in, the light going pink over the water, and thought how lucky I am.",
    "Today I sorted the shed. Found: two broken deckchairs, a tin of nails from the seventies, a hat I do not "
    "recognise, and the good secateurs I accused {rel} of borrowing. I will apologise. Eventually. The shed now "
    "has a floor, which I had half forgotten about.",
    "A hard conversation at work today. Someone younger is struggling and I remembered how it felt to be new, "
    "every mistake feeling like the end of the world. I told them what an old {occ} once told me: the job is "
    "learned in the hands, not in the head, and the hands are slow. They laughed, which is a start.",
    "Spent the whole evening on the application form. Every box wants a paragraph and every paragraph wants to "
    "sound confident. I wrote, deleted, rewrote. In the end I described what I actually do on a normal day and "
    "it sounded better than anything clever. Posted it before I could change my mind.",
    "The power went out across {place} at about seven. We lit candles and played cards by the stove, and for "
    "three hours nobody looked at a screen. When the lights came back on there was a small groan of "
    "disappointment from everyone, which says something.",
    "Walked up to the ridge this morning with a flask and a cheese sandwich. The wind nearly took my hat. From the "
    "top you can see the whole bay and, on a clear day, the islands. It was not a clear day. I stayed an hour "
    "anyway and came down with a red nose and a better mood.",
    "Letter from the insurance people, which I have put, unopened, behind the clock. I will open it tomorrow. Or "
    "the day after. {rel} says that is not how letters work. {rel} is right, as usual, and it is very annoying.",
    "Someone asked me today what a {occ} actually does all day. I gave the short answer, then the long answer, "
    "and then realised I had been talking for twenty minutes. I do love the work, even the dull parts.",
)
THREAD_TASKS = (
    ("can you write back for me? say yes to the day they asked about and that I'll bring what I offered",
     "Hi {rel}, yes to {day}! I'll bring {item}. See you at {spot} in {place}.", ("rel", "spot", "place")),
    ("draft a short reply about the repair, I want to sound calm",
     "Hi {rel}, thanks for checking. The repair at {spot} is booked for {day}, so nothing to worry about.",
     ("rel", "spot")),
    ("write a message to the group saying where we're meeting",
     "Hi all, we're meeting at {spot} in {place} on {day}. {rel} has the keys.", ("spot", "place", "rel")),
    ("help me say sorry for missing it",
     "{rel}, I'm so sorry I missed it. Can I make it up to you on {day} at {spot}?", ("rel", "spot")),
)
SPOTS = ("the Crooked Anchor", "Pellow's Bakery", "the Tidewrack Inn", "Gorse Lane allotments", "the Old Drill Hall",
         "Kittiwake Cafe", "the boathouse on Quarry Road", "Saint Brannoc's hall")
ITEMS = ("the trifle", "folding chairs", "a box of candles", "the big teapot", "my ladder", "spare wellies")
DAYS = ("Sunday afternoon", "Thursday evening", "the 14th", "Friday after work", "Saturday lunchtime")
THREAD_LINES = (
    "{rel}: are we still on for {day}?", "{rel}: I've asked at {spot}, they can fit us in",
    "me: sounds good, remind me nearer the time", "{rel}: don't forget the thing for {place}",
    "{rel}: also, the man from the council rang again", "me: ugh. will deal with it tomorrow",
    "{rel}: the roof at {spot} is leaking again, someone should look", "{rel}: can you bring something?",
)
NOTES = ("pay the coal man", "ring about the chimney", "return library book", "ask {rel} about the van",
         "buy bulbs before the frost", "{occ} rota changes next month", "dentist moved to Tuesday")


def _person(rng: random.Random, taken: set[str]) -> tuple[str, str]:
    while True:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        if first not in taken:
            taken.add(first)
            return first, last


def cogenesis_set(n_users: int = 12, tasks_per_user: int = 2, seed: int = SEED) -> list[dict]:
    """Labelled profile + free-text writing history; the instruction is a short task title."""
    rng = random.Random(f"cogenesis:{seed}")
    taken: set[str] = set()
    rows = []
    for u in range(n_users):
        first, last = _person(rng, taken)
        rel = _person(rng, taken)[0]
        place, place2 = rng.sample(PLACES, 2)
        occ = rng.choice(OCCUPATIONS)
        detail, fact_kind = rng.choice(DETAILS)
        fact_value = rel if fact_kind == "rel" else place2
        slots = {"name": f"{first} {last}", "place": place, "occ": occ, "rel": rel, "place2": place2}
        history = rng.sample(HISTORY, rng.randint(6, len(HISTORY)))
        profile = "\n".join([
            f"Name: {first} {last}", f"Location: {place}", f"Occupation: {occ.capitalize()}",
            f"Traits: {', '.join(rng.sample(TRAITS, 3))}", f"Writing style: {rng.choice(STYLES)}",
            f"Private details: {detail.format(**slots)}",
        ])
        context = profile + "\n\nWriting history:\n" + "\n\n".join(h.format(**slots) for h in history)
        for j, title in enumerate(rng.sample(sorted(TITLES), tasks_per_user)):
            body = BODIES[TITLES[title]]
            fact_sentence = rng.choice(FACT_SENTENCES[fact_kind]).format(value=fact_value)
            reference = " ".join(s.format(**slots, fact_sentence=fact_sentence) for s in body)
            rows.append({"user_id": f"cg-{u:02d}", "task_id": f"cg-{u:02d}-{j}", "task_type": TITLES[title],
                         "instruction": title, "private_context": context, "reference": reference,
                         "private_facts": [place, occ, fact_value]})
    return rows


def threads_set(n_users: int = 12, tasks_per_user: int = 2, seed: int = SEED) -> list[dict]:
    """A pasted message thread and loose notes, no labels; a conversational request."""
    rng = random.Random(f"threads:{seed}")
    taken: set[str] = set()
    rows = []
    for u in range(n_users):
        _person(rng, taken)
        rel = _person(rng, taken)[0]
        place, spot, item, day = rng.choice(PLACES), rng.choice(SPOTS), rng.choice(ITEMS), rng.choice(DAYS)
        slots = {"rel": rel, "place": place, "spot": spot, "item": item, "day": day, "occ": rng.choice(OCCUPATIONS)}
        thread = [line.format(**slots) for line in rng.sample(THREAD_LINES, rng.randint(4, 7))]
        # what the references use is always in the thread
        thread[:0] = [f"{rel}: I've asked at {spot}, they can fit us in", f"{rel}: are we still on for {day}?",
                      f"me: I can bring {item}", f"{rel}: see you in {place} then"]
        notes = [n.format(**slots) for n in rng.sample(NOTES, 3)]
        context = "\n".join(dict.fromkeys(thread)) + "\n\n" + "\n".join(f"* {n}" for n in notes)
        for j, (instr, ref, facts) in enumerate(rng.sample(THREAD_TASKS, tasks_per_user)):
            rows.append({"user_id": f"th-{u:02d}", "task_id": f"th-{u:02d}-{j}", "task_type": "reply",
                         "instruction": instr,
                         "private_context": context, "reference": ref.format(**slots),
                         "private_facts": [slots[f] for f in facts]})
    return rows


def build(out: Path = HERE) -> dict[str, int]:
    """Write every set (``NAME.jsonl``); returns name -> tasks."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rows in (("cogenesis", cogenesis_set()), ("threads", threads_set())):
        (out / f"{name}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        counts[name] = len(rows)
    return counts

