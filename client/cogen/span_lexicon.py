"""Word lists the private-span detector needs and no installable library ships without a model.

Why hand-written: the libraries that find people, places and sensitive facts in free text
(spaCy's ``en_core_web_*``, presidio's NER and medical recognisers, GLiNER, flair) all need model
weights that are not installable from the package registry (spaCy's English models are not
published there by their authors) or downloaded at run time, which this project cannot do. What is
left is lexical: a list of sensitive terms (health, family, job, finances, legal status, identity),
matched by word root so that inflections count ("diabetic", "diabetes"), and the words that start
sentences without being names. Both lists are deliberately generic (written from the categories,
not from any corpus); docs/privacy-spans.md reports the recall they reach on text they were not
written from.
"""

from __future__ import annotations

#: roots of sensitive lowercase terms; a word is sensitive when it starts with one of them
#: (roots of 3 letters or fewer, and acronyms, must match the whole word)
SENSITIVE_ROOTS: dict[str, tuple[str, ...]] = {
    "health": (
        "diabet", "insulin", "metformin", "asthma", "inhaler", "cancer", "chemo", "tumor", "tumour", "oncolog",
        "depress", "antidepress", "anxiety", "anxious", "panic attack", "adhd", "autis", "bipolar", "schizo",
        "ptsd", "trauma", "insomnia", "migraine", "epilep", "seizure", "arthrit", "lupus", "celiac", "coeliac",
        "allerg", "eczema", "psoria", "hiv", "hepatit", "pregnan", "miscarri", "ivf", "infertil", "endometrios",
        "surgery", "surgical", "therapy", "therapist", "counsel", "psychiatr", "psycholog", "rehab",
        "sober", "sobriety", "alcoholi", "addict", "overdose", "relapse", "medication", "prescri", "diagnos",
        "disabilit", "disabled", "wheelchair", "dementia", "alzheimer", "parkinson", "stroke", "heart attack",
        "cholesterol", "blood pressure", "hypertens", "obes", "anorex", "bulimi", "eating disorder", "suicid",
        "self-harm", "self harm", "ocd", "dyslex", "chronic", "injur", "fractur", "concussion", "physio",
        "dialysis", "kidney", "liver", "thyroid", "biopsy", "mri", "a1c", "blood sugar", "glucose", "hospital",
        "clinic", "symptom", "illness", "disease", "infection", "covid", "flu", "vaccin", "steroid", "cardiac",
        "arrhythm", "asthmatic", "hearing aid", "deaf", "blind", "tinnitus", "sciatica", "hernia", "ulcer",
        "gout", "anemi", "anaemi", "menopaus", "postpartum", "sleep apnea", "sleep apnoea", "crohn", "colitis",
    ),
    "family": (
        "divorc", "separated", "separation", "widow", "custody", "alimony", "child support", "affair", "fianc",
        "engaged", "adopt", "foster", "estranged", "stepson", "stepdaughter", "stepfather", "stepmother",
        "single mother", "single mom", "single father", "single dad", "orphan", "bereave", "funeral", "grief",
        "grieving", "passed away", "died", "miscarriage", "newborn", "twins", "in-laws", "ex-husband",
        "ex-wife", "boyfriend", "girlfriend", "husband", "wife", "spouse", "remarried", "breakup", "break-up",
    ),
    "job": (
        "nurse", "teacher", "lawyer", "attorney", "paralegal", "accountant", "bookkeeper", "engineer",
        "physician", "pharmacist", "paramedic", "firefighter", "police officer", "detective", "cashier",
        "barista", "electrician", "plumber", "mechanic", "carpenter", "architect", "programmer", "librarian",
        "dentist", "surgeon", "social worker", "janitor", "receptionist", "waiter", "waitress", "chef",
        "trucker", "driver", "farmer", "soldier", "veteran", "sergeant", "professor", "lecturer",
        "intern", "unemploy", "laid off", "fired", "redundan", "retired", "retiree", "freelanc", "contractor",
        "caregiver", "carer", "midwife", "veterinar", "dental hygienist", "welder", "machinist", "courier",
        "security guard", "warehouse", "night shift", "hairdresser", "stylist", "realtor", "estate agent",
        "banker", "analyst", "consultant", "journalist", "translator", "pilot", "flight attendant",
        "tradesman", "laborer", "labourer", "clerk", "secretary", "nanny", "babysitter", "tutor",
    ),
    "finances": (
        "debt", "loan", "mortgag", "bankrupt", "foreclos", "evict", "overdra", "arrears", "salary", "income",
        "payday", "credit score", "credit card", "collection agency", "debt collector", "repossess", "welfare",
        "food stamp", "unemployment benefit", "pension", "savings", "paycheck", "payslip", "bonus",
        "owe", "owed", "owing", "behind on rent", "rent arrears", "tax bill", "back taxes", "inheritance",
        "bailiff", "pawn", "gambling",
    ),
    "legal_identity": (
        "arrest", "convict", "probation", "parole", "lawsuit", "sued", "court date", "restraining order",
        "immigra", "visa", "undocumented", "deport", "asylum", "refugee", "green card", "citizenship",
        "muslim", "christian", "jewish", "hindu", "buddhist", "sikh", "atheist", "catholic", "mormon",
        "gay", "lesbian", "bisexual", "transgender", "queer", "coming out", "nonbinary", "non-binary",
    ),
}

#: capitalised words that begin sentences, greet or sign off without naming anyone (with spaCy's
#: English stop words: :func:`sentence_words`): a capitalised word at a sentence start is a name only when it is not one of
#: these and not written in lowercase elsewhere in the same text
BASE_SENTENCE_WORDS = frozenset("""
thanks thank dear hi hello hey yes no ok okay sorry please cheers best regards love yours sincerely
today tomorrow yesterday tonight morning evening afternoon night week weekend month year
monday tuesday wednesday thursday friday saturday sunday
january february march april may june july august september october november december
just still anyway also hope glad happy sad good great quick update note reminder looking feeling
went got had did was were will would could should might must can let lets let's we'll i'll i'm i've i'd
im ive after before when while since because although though so but and or if then now here there
this that these those what which who why how where my our your his her their its the a an
subject re fwd fw ps pps p.s. attached following per regarding about remember reminder finally first
second third last next new old big small short long little lots lot much many more most some any
every each all both few several other another such same own only very really quite well
back home work school family friends friend everyone everybody someone somebody nothing something
agenda minutes summary notes todo to-do done plan plans goal goals call meeting meetings lunch dinner
breakfast coffee tea drinks party trip travel holiday holidays vacation birthday anniversary
diary journal log dearest darling honey hun
mom mum dad mother father brother sister son daughter grandma grandpa aunt uncle cousin kids baby
""".split())

#: contextual cues of free text: the noun phrase after one of these is private whatever its words
#: ("works as a court reporter", "diagnosed with glaucoma", "owes the bank"); regular expressions,
#: case-insensitive. Written from how people state a job, a condition, a debt or a legal matter, not
#: from a corpus
CUES_AFTER = (
    r"as an?", r"(?:i'm|i am|being|became|become|retired|trained|qualified) as an?", r"(?:i'm|i am|being) an?",
    r"job as an?", r"diagnosed with", r"diagnosis of", r"suffer(?:s|ed|ing)? (?:from|with)", r"treated for",
    r"treatment for", r"(?:medication|meds|pills|surgery|therapy) for", r"living with", r"struggl(?:e|es|ed|ing) with",
    r"battl(?:e|es|ed|ing)", r"recover(?:s|ed|ing)? from", r"dealing with", r"coping with", r"prescribed",
    r"allergic to", r"tested positive for", r"owes?", r"owed", r"owing", r"behind on", r"in debt to",
    r"filed for", r"arrested for", r"charged with", r"convicted of", r"sued for", r"fired from",
    r"laid off from", r"works? (?:at|for)", r"worked (?:at|for)", r"employed (?:at|by)",
)
#: words after which the noun phrase before them is a private matter ("the foreclosure letter",
#: "my shingles flared up"): documents and events that file a matter, and what a condition does
CUES_BEFORE = (
    r"letter", r"letters", r"paperwork", r"papers", r"notice", r"bill", r"bills", r"hearing", r"case",
    r"claim", r"diagnosis", r"appointment", r"treatment", r"meds", r"medication", r"payments?", r"forms",
    r"flared", r"flares", r"flare-up", r"is acting up", r"got worse", r"came back", r"again today",
    r"is back", r"is under control", r"explains",
)

#: titles before a name ("Dr. Patel"): the next capitalised word is a name wherever it stands
TITLES = frozenset(("dr", "mr", "mrs", "ms", "miss", "mx", "prof", "professor", "sir", "dame", "rev", "fr",
                    "sr", "sra", "aunt", "auntie", "uncle", "nurse", "coach", "judge", "officer", "captain"))

#: capitalised words that are never private on their own (the pronoun I, units, meridiem)
NEVER_PRIVATE = frozenset(("i", "am", "pm", "ok", "tv", "uk", "us", "usa", "eu", "faq", "id", "pdf", "asap",
                           "fyi", "btw", "lol", "omg"))


def sentence_words() -> frozenset[str]:
    """:data:`BASE_SENTENCE_WORDS` plus spaCy's English stop words (a word list spaCy ships, no model;
    imported here, not at module import, because spaCy's package import takes ~1.5 s and the CLI
    imports this module for its flags)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    return BASE_SENTENCE_WORDS | frozenset(STOP_WORDS)


def stop_words() -> frozenset[str]:
    """spaCy's English stop words (the fact audit's list of words that only ever match exactly)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(STOP_WORDS)


def sensitive_terms() -> list[tuple[str, str]]:
    """``(category, root)`` for every sensitive root, longest first (multi-word roots before their words)."""
    items = [(cat, root) for cat, roots in SENSITIVE_ROOTS.items() for root in roots]
    return sorted(items, key=lambda cr: -len(cr[1]))
