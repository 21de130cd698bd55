"""Word pools the synthetic users are drawn from (names, places, employers, styles)."""

from __future__ import annotations

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
