"""The cloud's public corpus: disjoint from the federation, no private facts in instruction-only targets."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fedcogen.dataset import FederationConfig, generate_federation
from fedcogen.simulations.cloud.public_corpus import (
    DEFAULT_RECIPE,
    CloudRecipe,
    federation_names,
    mask_private,
    public_examples,
    public_federation,
)

SMALL = CloudRecipe(public_users=24, tasks_per_user=4, exclude_users=16)


def test_the_committed_recipe_is_disjoint_from_the_demo_federation_by_seed_and_names():
    recipe = CloudRecipe.load(DEFAULT_RECIPE)
    assert recipe.public_seed != 0 and recipe.exclude_seed == 0  # the demo draws its federation with seed 0
    assert recipe.exclude_users >= 12  # the demo's 8 training + 4 held-out users
    fed, kept = public_federation(recipe)
    demo = generate_federation(FederationConfig(n_users=recipe.exclude_users, seed=0))
    demo_names = {p.name for p in demo.profiles}
    kept_names = {fed.profile(u).name for u in kept}
    assert kept_names and not kept_names & demo_names
    # the name filter is not vacuous: the public draw does meet some federation names, and drops them
    dropped = {p.name for p in fed.profiles} - kept_names
    assert dropped <= demo_names


def test_no_federation_user_name_appears_in_any_training_example():
    examples = public_examples(SMALL)
    names = federation_names(SMALL.exclude_seed, SMALL.exclude_users)
    text = "\n".join(e["prompt"] + "\n" + e["target"] for e in examples)
    assert [n for n in names if n in text] == []


def test_instruction_only_targets_carry_no_private_value_and_context_views_are_mixed():
    fed, _ = public_federation(SMALL)
    examples = public_examples(SMALL)
    views = {e["view"] for e in examples}
    assert views == {"context", "instruction"}
    for e in examples:
        if e["view"] != "instruction":
            continue
        profile = fed.profile(e["user_id"])
        assert "Private context" not in e["prompt"]
        leaked = [v for v in profile.private_values if len(v) > 3 and v in e["target"]]
        assert leaked == [], (e["task_id"], leaked)
        assert "[" in e["target"]  # every reference uses at least one private value, now a placeholder


def test_mask_private_replaces_the_longest_value_first():
    fed, kept = public_federation(SMALL)
    p = fed.profile(kept[0])
    appt = p.schedule[0]
    text = f"See {appt['with']} on {appt['day']} at {appt['time']}. {p.name} in {p.city}."
    masked = mask_private(text, p)
    assert masked == f"See [{appt['what']} with] on [day and time]. [my name] in [city]."


def test_recipe_digest_follows_every_field_and_unknown_keys_are_refused(tmp_path):
    base = CloudRecipe()
    assert base.digest() == CloudRecipe().digest()
    assert dataclasses.replace(base, steps=base.steps + 1).digest() != base.digest()
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({**dataclasses.asdict(base), "stpes": 3}))
    with pytest.raises(ValueError, match="stpes"):
        CloudRecipe.load(bad)
    with pytest.raises(ValueError, match="disjoint"):
        CloudRecipe(public_seed=0, exclude_seed=0)
