"""Word and sentence pools of the *rich* federation (``FederationConfig.variety = "rich"``).

Why a second set of pools: the basic generator writes every user with the same 18 scenarios and one
context layout, so an adapter trained on it learns the generator (its sentences, its names) instead of
the skill of writing a new kind of text from a new kind of context (issue 26). These pools add task
kinds, sentence alternatives per kind, extra fact kinds (dates, habits, events, pets, streets) and
free-text topics. Private pools follow the rule of :mod:`fedcogen.dataset.pools`: no value is a common
English word or a substring of an instruction template (``find_leaks`` checks the generated data).
"""

from __future__ import annotations

# --------------------------------------------------------------------------- extra private facts
MONTHS: tuple[str, ...] = ("January", "February", "March", "April", "May", "June", "July", "August",
                           "September", "October", "November", "December")
HABITS: tuple[str, ...] = (
    "a cold shower every morning", "a 5 km run before breakfast", "journaling every night at eleven",
    "no screens after nine in the evening", "a weekly phone call with an old school friend",
    "walking to work along the canal", "meal prepping every Sunday afternoon",
    "twenty minutes of Duolingo Portuguese a day", "a standing Thursday swim at the municipal pool",
    "reading one poem aloud each morning", "a tea ceremony before starting work",
    "batch cooking lentil soup on Mondays", "stretching for ten minutes at every coffee break",
)
PET_KINDS: tuple[str, ...] = ("dog", "cat", "rabbit", "parrot", "tortoise", "ferret")
PET_NAMES: tuple[str, ...] = (
    "Pumpernickel", "Ziggy", "Taffeta", "Mochi", "Bartholomew", "Clementine", "Figaro", "Noodlebug",
    "Persimmon", "Waffleton", "Kiwikins", "Sprocket", "Dumpling", "Tiramisu",
)
STREETS: tuple[str, ...] = (
    "Kastanjelaan 14", "Rua do Almada 22", "Hollerweg 7", "Via Saragozza 41", "Ulica Lipowa 9",
    "Kirkegata 33", "Carrer de Blesa 5", "Rue Mouffetard 18", "Aleja Roz 3", "Linnankatu 27",
    "Korzo 12", "Vesterbrogade 61",
)
EVENT_KINDS: tuple[str, ...] = (
    "wedding", "graduation", "retirement party", "housewarming", "50th birthday", "charity 10k",
    "book launch", "christening", "silver anniversary", "farewell dinner",
)
VENUES: tuple[str, ...] = (
    "the Marlowe Boathouse", "Quayside Pavilion", "the Old Tannery Hall", "Villa Serenella",
    "the Larkfield Orangery", "Brasserie Valmont", "the Copperhill Barn", "Hotel Alderwick",
    "the Ferncliff Lodge", "Casa Miravalle", "the Glasshouse at Tormead", "the Ravensholt Rooms",
)

# --------------------------------------------------------------------------- public slots
#: Public words an instruction may carry (no private value): a recipient role, a product, an occasion.
RECIPIENT_ROLES: tuple[str, ...] = ("neighbour", "landlord", "team lead", "old classmate", "book club",
                                    "hiring manager", "local council", "gym owner")
PRODUCTS: tuple[str, ...] = ("coffee grinder", "rain jacket", "standing desk", "e-reader", "hiking boots",
                             "air fryer", "noise-cancelling headphones", "secondhand bicycle")
PLACES_PUBLIC: tuple[str, ...] = ("bakery", "ramen bar", "climbing gym", "bookshop", "dentist's practice",
                                  "hardware store", "guesthouse", "repair café")

# --------------------------------------------------------------------------- style
#: Per-user key style of "key: value" contexts: how a label is written and joined to its value.
KEY_STYLES: tuple[str, ...] = ("lower_colon", "title_colon", "snake_equals", "upper_dash", "bullet",
                               "bracket")
CONTEXT_FORMATS: tuple[str, ...] = ("kv", "prose", "json", "yaml")
CONTRACTIONS: tuple[tuple[str, str], ...] = (
    ("I am ", "I'm "), ("I will ", "I'll "), ("do not ", "don't "),
    ("it is ", "it's "), ("cannot ", "can't "), ("would not ", "wouldn't "), ("that is ", "that's "),
)

# --------------------------------------------------------------------------- free-text topics (history)
#: Topic -> sentences for private notes and diary entries; no private value (facts are added apart).
TOPICS: dict[str, tuple[str, ...]] = {
    "cooking": ("Tried a new recipe tonight with far too much garlic.", "The bread rose properly for once.",
                "I burned the onions again but the stew survived.", "Found a spice shop that sells real saffron.",
                "Leftovers for three days, which suits me fine."),
    "weather": ("It rained sideways the whole afternoon.", "First warm evening of the year, windows open.",
                "Fog so thick the street lights stayed on until noon.", "Hail on the way home, of course.",
                "The sky did that orange thing again at sunset."),
    "work": ("The quarterly review dragged on for two hours.", "Finally cleared the backlog before Friday.",
             "A new printer arrived and nobody can make it work.", "Lunch at my desk three days running.",
             "We moved desks and I lost my window seat."),
    "reading": ("Halfway through a thick novel about lighthouse keepers.", "Gave up on the thriller at chapter ten.",
                "Reread an old favourite and cried at the same page.", "The library fine was bigger than the book.",
                "Started a biography of a mountaineer."),
    "garden": ("The tomatoes are finally turning red.", "Slugs ate every single lettuce.",
               "Planted bulbs that I will have forgotten by spring.", "The apple tree needs pruning badly.",
               "Spent the evening pulling weeds, oddly relaxing."),
    "travel": ("The night train was late but the bunk was comfortable.", "Lost my sunglasses at the ferry terminal.",
               "Booked a cheap flight for the autumn, no regrets yet.", "Packing light is a skill I do not have.",
               "The hostel breakfast was better than expected."),
    "money": ("Cancelled two subscriptions I forgot I had.", "Sat down with the bank statements, not fun.",
              "Saving a little each week for a proper holiday.", "Prices at the market keep creeping up.",
              "Sold the old sofa online in under an hour."),
    "sport": ("Legs still sore from the weekend.", "Our team lost on penalties, again.",
              "Signed up for a beginners' class on a whim.", "Made it to the gym three times this week.",
              "Watched the final with the neighbours, loud evening."),
    "home": ("The boiler made a noise like a goose.", "Painted the hallway a colour called 'oat'.",
             "The neighbours are renovating and the drilling starts at eight.", "Finally hung the pictures.",
             "Found a leak under the sink, bucket for now."),
    "friends": ("Long dinner with old friends, we talked until midnight.", "A friend is moving abroad next month.",
                "Board game night got very competitive.", "Caught up on a voice message that was twelve minutes long.",
                "Helped someone move flat, my back disagrees."),
}
NOTE_OPENERS: tuple[str, ...] = ("Note to self:", "Diary,", "Quick thought:", "Today:", "Journal -", "Reminder:",
                                 "Evening notes.", "Random thing:")

# --------------------------------------------------------------------------- voice (per user)
#: Word -> alternatives; each user keeps one choice per word (their voice), so two users rarely share a
#: sentence word for word even when they draw the same sentence pattern.
SYNONYMS: dict[str, tuple[str, ...]] = {
    # only words whose alternatives fit every sentence of the pools (no verbs, nouns in set phrases, or
    # quantifiers: "long enough" -> "long plenty" would teach bad English)
    "great": ("great", "brilliant", "fantastic", "terrific", "superb"),
    "really": ("really", "truly", "genuinely", "honestly"),
    "very": ("very", "pretty", "rather", "incredibly", "quite"),
    "happy": ("happy", "glad", "pleased", "delighted"),
    "finally": ("finally", "at last", "at long last"),
    "busy": ("busy", "hectic", "full-on", "packed"),
    "friends": ("friends", "mates", "pals"),
    "nice": ("nice", "lovely", "charming"),
    "maybe": ("maybe", "perhaps", "possibly"),
    "today": ("today", "this morning", "earlier today"),
    "evening": ("evening", "night"),
    "proper": ("proper", "real", "decent"),
    "lovely": ("lovely", "wonderful", "delightful"),
    "wonderful": ("wonderful", "marvellous", "lovely"),
}
#: Discourse markers a user puts before some sentences (each user keeps a few).
MARKERS: tuple[str, ...] = (
    "Honestly,", "To be fair,", "As it happens,", "Funnily enough,", "Truth be told,", "Anyway,", "Right,",
    "So,", "Well,", "Of course,", "Luckily,", "Admittedly,", "In any case,", "Mind you,", "Frankly,",
    "Oddly,", "Happily,", "Between us,", "For what it's worth,", "Naturally,",
)
#: Generic openers and closings every kind can also use (each user keeps a subset).
GENERIC_OPENERS: tuple[str, ...] = (
    "Right, here goes.", "Let me get straight to it.", "I have been meaning to write this for a while.",
    "This one is a bit overdue.", "Short and sweet, I promise.", "Bear with me for a moment.",
    "I will try to keep this brief.", "A few words from me.", "Here is where things stand.",
    "I wanted to put this in writing.", "Where to begin?", "Better to say it properly.",
)
GENERIC_CLOSINGS: tuple[str, ...] = (
    "That is about it from me.", "More another time.", "Thanks for bearing with me.", "Over and out.",
    "I will leave it there for now.", "Speak soon, I hope.", "Until next time.", "Let us see how it goes.",
    "Fingers crossed it all works out.", "Shout if you have questions.",
)
#: Time lead-ins and tails a user attaches to some sentences (each user keeps a few of each).
LEADS: tuple[str, ...] = (
    "Last week,", "These days,", "Since the spring,", "Lately,", "This year,", "Over the summer,", "Right now,",
    "After a long month,", "For once,", "Once again,", "As of this week,", "By now,", "More and more,",
    "Every so often,", "At the moment,", "Looking back,",
)
TAILS: tuple[str, ...] = (
    ", at least for now", ", as usual", ", which helped a lot", ", believe it or not", ", to my surprise",
    ", more or less", ", if I'm honest", ", for what it is worth", ", touch wood", ", all things considered",
    ", give or take", ", as far as I can tell", ", which says a lot", ", thankfully",
)
