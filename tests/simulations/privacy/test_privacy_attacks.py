"""Attacks must separate a leaky model (tiny LoRA overfit on canaries/members) from the untouched base."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedcogen.simulations.privacy import attack_metrics as attacks

PROMPT = "Write a note in my usual style."
WORDS = "alpha river stone garden window paper music yellow quiet market bridge coffee winter letter".split()


def test_roc_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    pos = rng.normal(1, 1, 40).round(1)  # rounding creates ties
    neg = rng.normal(0, 1, 30).round(1)
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
    assert attacks.roc_auc(pos, neg) == pytest.approx(brute)
    assert attacks.roc_auc([2, 3], [0, 1]) == 1.0
    assert attacks.roc_auc([0, 1], [2, 3]) == 0.0
    with pytest.raises(ValueError):
        attacks.roc_auc([], [1.0])


def test_tpr_at_fpr():
    neg = np.arange(100, dtype=float)  # 0..99
    pos = np.array([99.0, 150, 200, 50, 10])
    assert attacks.tpr_at_fpr(pos, neg, 0.0) == pytest.approx(0.4)  # only above all negatives
    assert attacks.tpr_at_fpr(pos, neg, 0.01) == pytest.approx(0.6)  # threshold 99 lets the 99 in
    assert attacks.tpr_at_fpr(pos, neg, 0.5) == pytest.approx(0.8)


def test_exposure_from_rank_and_random_like():
    assert attacks.exposure_from_rank(1, 1024) == pytest.approx(10.0)
    assert attacks.exposure_from_rank(1024, 1024) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    alt = attacks.random_like("AB-12x 9", rng)
    assert len(alt) == 8 and alt[2] == "-" and alt[6] == " "
    assert alt[:2].isupper() and alt[3:5].isdigit() and alt[5].islower()


def test_as_canary_accepts_text_form():
    c = attacks.as_canary({"text": "my pin is 4821 ok", "secret": "4821", "id": "x"})
    assert c.prefix == "my pin is " and c.secret == "4821" and c.canary_id == "x"
    with pytest.raises(ValueError, match="secret"):
        attacks.as_canary({"text": "nothing"})


@pytest.fixture(scope="module")
def overfit():
    """Tiny llama + LoRA trained hard on members and canaries; base results taken before training."""
    from fedcogen.client.fl.lora_training import encode_examples, train_local
    from fedcogen.lora_adapter import LoraSpec, lora_model

    spec = LoraSpec(r=16, alpha=32, dropout=0.0,
                    targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    lm = lora_model("tiny", 0, spec)
    rng = np.random.default_rng(0)

    def sent() -> str:
        return " ".join(rng.choice(WORDS, 8)) + "."

    members = [(PROMPT, sent()) for _ in range(24)]
    non_members = [(PROMPT, sent()) for _ in range(24)]
    canaries = [
        {"prefix": "My locker code is ", "secret": attacks.random_like("1234-5678", rng), "prompt": PROMPT,
         "id": f"c{i}"}
        for i in range(3)
    ]
    with attacks.adapter_disabled(lm.model) as base:
        base_exp = attacks.canary_exposure(base, lm.tokenizer, canaries, n_alternatives=127, seed=1)
    base_mia = attacks.membership_inference(lm.model, lm.tokenizer, members, non_members)  # B=0: adapter is a no-op
    data = encode_examples(lm.tokenizer, members + [(c["prompt"], c["prefix"] + c["secret"]) for c in canaries] * 4)
    train_local(lm, data, steps=50, batch_size=8, lr=5e-3, seed=0)
    leaky_exp = attacks.canary_exposure(lm.model, lm.tokenizer, canaries, n_alternatives=127, seed=1)
    leaky_mia = attacks.membership_inference(lm.model, lm.tokenizer, members, non_members)
    return base_exp, leaky_exp, base_mia, leaky_mia


def test_canary_exposure_separates(overfit):
    base_exp, leaky_exp, _, _ = overfit
    assert leaky_exp["per_canary"][0]["max_exposure"] == pytest.approx(7.0)
    assert leaky_exp["mean"] > 5.0, leaky_exp
    assert base_exp["mean"] < 3.5, base_exp
    assert leaky_exp["mean"] - base_exp["mean"] > 2.5


def test_membership_inference_separates(overfit):
    _, _, base_mia, leaky_mia = overfit
    assert leaky_mia["loss"]["auc"] > 0.85, leaky_mia
    assert leaky_mia["reference"]["auc"] > 0.8, leaky_mia
    assert leaky_mia["tpr_at_1pct_fpr"] > 0.2
    # untouched adapter = base model: reference scores all equal -> exactly chance
    assert base_mia["reference"]["auc"] == pytest.approx(0.5)
    assert 0.25 < base_mia["loss"]["auc"] < 0.75
