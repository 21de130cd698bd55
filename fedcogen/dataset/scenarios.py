"""Writing-task scenarios: instruction and body templates per task kind, checked at import so that an
instruction can never carry a private slot."""

from __future__ import annotations

import string
from dataclasses import dataclass

from fedcogen.dataset.schema import TASK_KINDS


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
