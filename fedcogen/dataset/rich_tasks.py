"""Task kinds of the rich federation: open-ended instructions and sentence pools per kind.

A reference is assembled from a kind's opener, its body sentences, one sentence per fact the task
calls for (:data:`FACT_SENTENCES`; :data:`ABSENT_SENTENCES` when the context lacks that fact and the
answer must not invent one) and a closing. Instruction templates may use only :data:`PUBLIC_SLOTS`;
this is checked at import, as for the basic scenarios.
"""

from __future__ import annotations

import string
from dataclasses import dataclass


@dataclass(frozen=True)
class RichTask:
    """One kind of writing task. ``facts`` are the fact slots the reference uses; ``greeting`` /
    ``sign_off`` say whether the user's greeting and sign-off belong in it; ``title``: a title line."""

    kind: str
    label: str
    facts: tuple[str, ...]
    instructions: tuple[str, ...]
    openers: tuple[str, ...]
    bodies: tuple[str, ...]
    closings: tuple[str, ...]
    greeting: bool = False
    sign_off: bool = False
    title: tuple[str, ...] = ()


PUBLIC_SLOTS = frozenset({"relation", "timeframe", "recipient_role", "product", "place_public", "event_kind",
                          "pet_kind"})

#: One sentence per fact slot the reference must contain. Other slots a template may use: public ones.
FACT_SENTENCES: dict[str, tuple[str, ...]] = {
    "rel_name": ("{rel_name} will be there as well.", "I talked it through with {rel_name} last night.",
                 "My {relation} {rel_name} says hello.", "{rel_name} thinks it is a great idea.",
                 "Thanks to {rel_name} for pushing me to do this."),
    "city": ("Here in {city} that is easier said than done.", "It is the best thing about living in {city}.",
             "Everyone in {city} seems to have an opinion on it.", "I have lived in {city} long enough to know."),
    "employer": ("At {employer} we see this every week.", "My years at {employer} taught me that.",
                 "The people at {employer} have been very supportive."),
    "role": ("As {a_role}, I know how much that matters.", "Working as {a_role} keeps me on my toes.",
             "My job as {a_role} gives me a useful angle on this."),
    "manager": ("I have already let {manager} know.", "{manager} agreed it makes sense.",
                "I will keep {manager} in the loop."),
    "appt_with": ("I am due to see {appt_with} for my {appt_what}.", "{appt_with} is expecting me for the {appt_what}."),
    "appt_when": ("The {appt_what} is on {appt_when}.", "It is booked for {appt_when}."),
    "hobby": ("Most of my free time goes into {hobby}.", "Lately {hobby} has been keeping me sane.",
              "I finally got back to {hobby}."),
    "condition": ("Lately {condition} has been acting up again.", "Living with {condition} means planning ahead.",
                  "Because of {condition} I need to pace myself."),
    "medication": ("I have to keep my {medication} with me.", "The {medication} is working better now."),
    "money_item": ("The {money_item} is still outstanding.", "I am still waiting on the {money_item}."),
    "money_amount": ("It comes to {money_amount} in total.", "We are talking about {money_amount}."),
    "birthday": ("My birthday is on {birthday}.", "It all happens on {birthday}, my birthday."),
    "habit": ("I have stuck with {habit} for months now.", "My routine of {habit} helps more than I expected."),
    "pet_name": ("{pet_name} will not leave my side.", "Even {pet_name}, my {pet_kind}, seems to approve.",
                 "{pet_name} the {pet_kind} has opinions about this."),
    "street": ("You will find us at {street}.", "The address is {street}."),
    "venue": ("It takes place at {venue}.", "We have booked {venue} for it."),
    "event_date": ("Save the date: {event_date}.", "It is happening on {event_date}."),
}
#: When a task's context lacks a fact, the reference says it without the value (nothing invented).
ABSENT_SENTENCES: dict[str, tuple[str, ...]] = {
    "rel_name": ("My {relation} will be there as well.", "I talked it through with my {relation} last night."),
    "city": ("Around here that is easier said than done.", "It is the best thing about where I live."),
    "employer": ("At work we see this every week.", "The people at work have been very supportive."),
    "manager": ("I have already let my manager know.", "I will keep my manager in the loop."),
    "venue": ("The venue is still to be confirmed.", "I will share the venue once it is booked."),
    "event_date": ("The exact date will follow soon.", "I will confirm the date shortly."),
    "pet_name": ("Even my {pet_kind} seems to approve.", "My {pet_kind} has opinions about this."),
    "street": ("I will send the address separately.", "Ask me for the address nearer the time."),
}

LETTER_CLOSINGS = ("Thank you for reading this.", "I look forward to hearing from you.",
                   "Please let me know if anything is unclear.", "Thanks in advance for your help.")
SHORT_CLOSINGS = ("Talk soon.", "Let me know!", "Speak later.", "Can't wait.", "See you then.")
POST_CLOSINGS = ("What would you have done?", "More soon.", "Grateful for all of it.", "That's all for today.")
PROSE_CLOSINGS = ("And that, more or less, is the whole story.", "I will end it there.",
                  "It is not perfect, but it is mine.", "More on this another time.")

TASKS: tuple[RichTask, ...] = (
    RichTask("invitation", "invitation", ("venue", "event_date"),
             ("Write an invitation to my {event_kind}.", "Draft a short invitation for friends and family to a "
              "{event_kind} I'm hosting.", "Write a warm invitation card for the {event_kind}."),
             ("You are warmly invited to celebrate with us.", "We would love you to join us for a special day.",
              "Consider this your official invitation."),
             ("There will be food, music and far too many speeches.", "Bring your dancing shoes and your appetite.",
              "Children are very welcome.", "Let us know about any dietary needs.", "Dress code: whatever makes you happy."),
             ("Please reply by the end of the month.", "We really hope you can make it."), greeting=True, sign_off=True),
    RichTask("review", "product review", ("role", "hobby"),
             ("Write an honest online review of the {product} I bought {timeframe}.",
              "Write a product review of my new {product}.", "Draft a balanced review of a {product}."),
             ("I have been using this {product} for a few weeks now.", "Short version: I am mostly happy with it.",
              "I did a lot of research before buying this {product}."),
             ("Setup took about ten minutes.", "The build quality is solid for the price.",
              "The instructions were confusing.", "It is lighter than it looks in the photos.",
              "Customer service answered within a day."),
             ("Four stars from me.", "Would buy again.", "Recommended, with small reservations.")),
    RichTask("place_review", "place review", ("city", "rel_name"),
             ("Write an online review of a {place_public} I visited {timeframe}.",
              "Write a short review of a local {place_public}.", "Draft a friendly review for a {place_public}."),
             ("We stopped by this {place_public} on a rainy afternoon.", "I had walked past this {place_public} for months."),
             ("The staff were friendly and quick.", "Prices are fair for what you get.",
              "It gets busy after six, so go early.", "The place is small but never cramped."),
             ("Five stars, we will be back.", "Worth a visit.", "A little gem.")),
    RichTask("speech", "speech", ("rel_name", "venue"),
             ("Write a short speech for my {relation}'s {event_kind}.", "Write a toast I can give at a family "
              "{event_kind}.", "Draft a few heartfelt words to say at a {event_kind}."),
             ("Good evening, everyone, and thank you all for coming.", "If I could have your attention for a minute.",
              "I promised to keep this short, so here goes."),
             ("Some people make every room warmer, and you are one of them.",
              "I still remember the day we first talked about this moment.", "We have laughed a lot over the years.",
              "Nothing about the road here was easy, and that is what makes tonight special."),
             ("Please raise your glasses.", "To many more years like this one.", "Cheers to you!")),
    RichTask("cover_letter", "cover letter", ("role", "employer", "city"),
             ("Write a cover letter for a job I'm applying to {timeframe}.",
              "Draft a cover letter for a position on a new team.", "Write a concise cover letter for my application."),
             ("I am writing to apply for the open position on your team.",
              "Please accept this letter as my application for the advertised role."),
             ("I enjoy solving problems with other people.", "I learn new tools quickly and document what I learn.",
              "I am looking for a place where I can grow and take on more responsibility.",
              "I work well under pressure and keep calm when plans change."),
             LETTER_CLOSINGS, greeting=True, sign_off=True),
    RichTask("social_post", "social media post", ("hobby", "pet_name"),
             ("Write a social media post about my weekend.", "Write a cheerful post for my followers.",
              "Draft a short social post about a good day."),
             ("What a weekend.", "Little update from my corner of the world.", "Today was one of the good ones."),
             ("Sun out, phone off.", "Spent hours outside and did not regret a minute.",
              "Coffee, good company and no alarm clock.", "Came home tired in the best way."),
             POST_CLOSINGS),
    RichTask("report", "report", ("manager", "employer"),
             ("Write a short weekly progress report for work.", "Draft a brief status report for my team {timeframe}.",
              "Write a one-page summary of what I got done this week."),
             ("Here is a short summary of the week.", "Progress update for the week.", "Weekly report below."),
             ("Two of the three planned tasks are complete.", "The main risk is the delay from our supplier.",
              "Testing found fewer issues than last time.", "Next week I will focus on the documentation.",
              "Budget is on track."), LETTER_CLOSINGS, title=("Weekly report", "Status update", "Progress notes")),
    RichTask("story", "short story", ("pet_name", "street"),
             ("Write a short bedtime story starring my {pet_kind}.", "Write a funny children's story about my "
              "{pet_kind}.", "Write a tiny story about an adventure at home."),
             ("Once upon a time, on a very ordinary evening, something unusual happened.",
              "Nobody expected the adventure to start in the kitchen.", "It began, as most adventures do, with a noise."),
             ("The moon peeked through the curtains.", "A single sock had gone missing, and someone had to find it.",
              "The rain stopped just in time.", "There was a suspicious trail of crumbs across the floor."),
             ("And everyone slept soundly after that.", "The end, for now.", "And that is why the sock is still a mystery."),
             title=("A night to remember", "The missing sock", "The great kitchen adventure")),
    RichTask("email_appointment", "email", ("appt_with", "appt_when"),
             ("Write an email asking to reschedule one of my appointments.", "Email to move an appointment of mine "
              "to another day {timeframe}."),
             ("I hope you are well.", "I am writing about an upcoming booking."),
             ("Something has come up at work that I cannot move.", "Any other day that week would suit me.",
              "I am sorry for the short notice."), LETTER_CLOSINGS, greeting=True, sign_off=True),
    RichTask("email_health", "email", ("manager", "condition"),
             ("Write an email to my manager asking to work from home {timeframe}.",
              "Let my manager know by email that I need a few hours off for health reasons."),
             ("Just a quick note about my availability.", "I wanted to give you a heads-up."),
             ("All urgent work is covered.", "I will be reachable by phone.", "I will make up the hours later in the week."),
             LETTER_CLOSINGS, greeting=True, sign_off=True),
    RichTask("message_lift", "text message", ("rel_name", "appt_when"),
             ("Text my {relation} asking for a lift.", "Send a quick message asking my {relation} for a favour."),
             ("Hey, quick favour to ask.", "Are you around later?"),
             ("It would save me a long bus ride.", "I can pay for fuel.", "No worries if not."), SHORT_CLOSINGS,
             greeting=True, sign_off=True),
    RichTask("thank_you", "thank-you note", ("rel_name", "hobby"),
             ("Write a thank-you note to my {relation}.", "Write a short note thanking someone for their help "
              "{timeframe}.", "Draft a heartfelt thank-you card."),
             ("I just wanted to say thank you.", "This note is long overdue."),
             ("You did not have to help, and you did anyway.", "It made a bigger difference than you know.",
              "I owe you a proper dinner."), SHORT_CLOSINGS, greeting=True, sign_off=True),
    RichTask("complaint", "complaint letter", ("street", "money_amount"),
             ("Write a complaint to my {recipient_role} about a problem that has not been fixed.",
              "Draft a firm but polite complaint letter.", "Write a letter complaining about a repair that keeps "
              "being delayed."),
             ("I am writing to raise a problem that is still not resolved.", "I would like to make a formal complaint."),
             ("I first reported this several weeks ago.", "Nobody has come to look at it since.",
              "I have kept copies of every message.", "I would appreciate a date for the repair."),
             LETTER_CLOSINGS, greeting=True, sign_off=True),
    RichTask("bio", "short bio", ("role", "city", "hobby"),
             ("Write a short bio for a conference programme.", "Write a two-paragraph bio about me for a website.",
              "Draft a short personal bio for a club newsletter."),
             ("A few words about me.", "Hello, and thanks for stopping by."),
             ("I care about doing things properly and explaining them simply.", "I like long walks and short meetings.",
              "Friends describe me as calm, curious and always late for the bus."), PROSE_CLOSINGS),
    RichTask("diary", "diary entry", ("habit", "condition"),
             ("Write a diary entry about my week.", "Write a private journal entry about how I've been feeling.",
              "Write tonight's diary entry."),
             ("Dear diary, it has been a week.", "Writing this late again.", "Quiet evening, so time to write."),
             ("Some days are heavier than others.", "I slept better on Tuesday than I have in ages.",
              "I keep promising myself to slow down."), PROSE_CLOSINGS),
    RichTask("birthday_plans", "group message", ("birthday", "venue"),
             ("Write a group message to friends about my birthday plans.", "Message my friends inviting them to "
              "celebrate with me."),
             ("Hi all, party news!", "Right, everyone, plans are set."),
             ("Drinks first, then whatever happens.", "Bring nothing but yourselves.", "Tell me by the weekend if you can come."),
             SHORT_CLOSINGS, greeting=True, sign_off=True),
    RichTask("club_newsletter", "newsletter", ("hobby", "event_date", "city"),
             ("Write the monthly newsletter for my club.", "Draft a short club update for members {timeframe}.",
              "Write an announcement for a local interest group."),
             ("Welcome to this month's update.", "Hello members, here is what is coming up."),
             ("Membership is up again this season.", "Thank you to everyone who volunteered last month.",
              "New faces are always welcome.", "We still need a few helpers for the stall."),
             POST_CLOSINGS, sign_off=True, title=("Club news", "Members' update", "This month at the club")),
    RichTask("health_update", "text message", ("rel_name", "condition", "medication"),
             ("Send my {relation} an update on how I'm doing health-wise.", "Text my {relation} after a check-up."),
             ("Quick update from me.", "Just back from the doctor."),
             ("Nothing to worry about.", "They want to see me again in a month.", "Feeling better than last week."),
             SHORT_CLOSINGS, greeting=True, sign_off=True),
    RichTask("budget_email", "email", ("money_item", "money_amount"),
             ("Write an email to my bank about a payment I'm waiting on.", "Draft an email following up on a "
              "financial matter {timeframe}."),
             ("I am following up on a pending payment.", "I would like an update on my account."),
             ("I have attached the reference number.", "I need to plan my budget around this.",
              "A short reply would be enough."), LETTER_CLOSINGS, greeting=True, sign_off=True),
    RichTask("habit_blog", "blog post", ("habit", "city"),
             ("Write a short blog post about a habit that changed my life.",
              "Write a reflective blog post about daily routines.", "Draft a blog post with tips for sticking to a routine."),
             ("I used to think routines were boring.", "Six months ago I made one small change."),
             ("Start smaller than you think you need to.", "Missing one day is fine, missing two is a pattern.",
              "Tell a friend, it keeps you honest."), PROSE_CLOSINGS,
             title=("Small habits, big changes", "What a routine gave me", "Notes on showing up")),
)
KINDS: tuple[str, ...] = tuple(dict.fromkeys(t.kind for t in TASKS))
#: Labels of the rich kinds as prompts name them (the basic kinds keep their own).
RICH_KIND_LABELS: dict[str, str] = {t.kind: t.label for t in TASKS}


def _slots_of(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _check_tasks() -> None:
    """Fail at import if an instruction could carry a private slot, or a fact has no sentence."""
    for t in TASKS:
        for tpl in t.instructions:
            bad = _slots_of(tpl) - PUBLIC_SLOTS
            if bad:
                raise RuntimeError(f"rich task {t.kind}: instruction template uses private slots {sorted(bad)}")
        missing = [f for f in t.facts if f not in FACT_SENTENCES]
        if missing:
            raise RuntimeError(f"rich task {t.kind}: no sentence for facts {missing}")


_check_tasks()
