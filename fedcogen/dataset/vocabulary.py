"""The names and places the generator can write, for counting "foreign facts" in answers.

Why: an adapter that learned the generator rather than the skill writes its training users' names and
cities into answers for anyone (issue 26). The evaluation counts those terms when an answer contains one
its own context does not (``fedcogen.simulations.evaluation.metrics.foreign_facts``); this is the
generator's side of that vocabulary, basic and rich pools together.
"""

from __future__ import annotations

from fedcogen.dataset.pools import CITIES, EMPLOYER_PREFIXES, GIVEN_NAMES, SURNAMES
from fedcogen.dataset.rich_pools import PET_NAMES, STREETS, VENUES


def names_and_places() -> tuple[str, ...]:
    """Every given name, surname, city, employer name, pet name, street and venue of the generator's pools,
    sorted (venues without a leading "the")."""
    venues = [v.removeprefix("the ") for v in VENUES]
    return tuple(sorted({*GIVEN_NAMES, *SURNAMES, *CITIES, *EMPLOYER_PREFIXES, *PET_NAMES, *STREETS, *venues}))
