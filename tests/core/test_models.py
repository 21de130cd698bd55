"""The one model loader both sides use: embedded GGUF (real), local dirs, tiny random models, errors."""

from __future__ import annotations

import json

import pytest
import torch

from fedcogen import models
from fedcogen.models import ModelError, chat_input_ids, check_tokenizers_match, load_model, load_tokenizer


def _greedy(lm, text: str, n: int = 8) -> str:
    ids = torch.tensor([chat_input_ids(lm.tokenizer, text)])
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    return lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_embedded_smollm2_loads_and_generates_real_text():
    lm = load_model("smollm2")
    assert lm.model.config.num_hidden_layers == 30
    assert lm.vocab_size == 49152
    text = _greedy(lm, "What is the capital of France? Answer in one word.", n=6)
    assert "Paris" in text  # a real model, not random weights


@pytest.mark.slow
def test_second_load_reads_the_cache_not_the_gguf(monkeypatch):
    folder = models.ensure_embedded_cache(need_model=True)
    assert (folder / "model.safetensors").is_file()
    info = json.loads((folder / "fedcogen-cache.json").read_text())
    assert info["model"] is True

    def no_gguf():  # any attempt to re-dequantise would need the GGUF path
        raise AssertionError("GGUF was read again although the cache is complete")

    monkeypatch.setattr(models, "embedded_gguf_path", no_gguf)
    lm = load_model("smollm2")
    assert lm.model.config.num_hidden_layers == 30


@pytest.mark.slow
def test_half_model_is_a_genuinely_smaller_copy_that_still_runs():
    full = models.shared_model("smollm2")
    half = load_model("smollm2-half")
    assert half.model.config.num_hidden_layers == 15
    assert half.num_parameters() < 0.7 * full.num_parameters()
    # kept layers are the even ones of the full model, weights identical
    w_full = full.model.model.layers[2].self_attn.q_proj.weight
    w_half = half.model.model.layers[1].self_attn.q_proj.weight
    assert torch.equal(w_full, w_half)
    assert [layer.self_attn.layer_idx for layer in half.model.model.layers] == list(range(15))
    assert len(_greedy(half, "Say hello.", n=4)) > 0


def test_tiny_model_is_seeded_and_shares_the_tokenizer():
    a = load_model("tiny", seed=1)
    b = load_model("tiny", seed=1)
    c = load_model("tiny", seed=2)
    pa, pb, pc = (next(m.model.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)
    assert a.vocab_size == len(load_tokenizer("smollm2"))
    check_tokenizers_match(a.tokenizer, load_tokenizer("smollm2"))
    ids = torch.tensor([chat_input_ids(a.tokenizer, "hi")])
    assert a.model(ids).logits.shape == (1, ids.shape[1], 49152)


def test_local_hf_directory_loads(tmp_path):
    tiny = load_model("tiny", seed=3)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    local = load_model(str(tmp_path))
    assert local.source.startswith("local directory")
    x = torch.tensor([[1, 2, 3]])
    assert torch.allclose(local.model(x).logits, tiny.model(x).logits, atol=1e-6)


def test_missing_path_gives_clear_error(tmp_path):
    with pytest.raises(ModelError, match="neither a known name"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_unsupported_architecture_gives_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    with pytest.raises(ModelError, match="unsupported architecture 'vit'"):
        load_model(str(tmp_path))


def test_tokenizer_mismatch_is_detected(tmp_path):
    tok = load_tokenizer("tiny")
    other = load_tokenizer("tiny")
    other.add_tokens(["<fedcogen-extra-token>"])
    with pytest.raises(ModelError, match="tokenizer mismatch"):
        check_tokenizers_match(tok, other)


def test_models_cli_lists_and_describes(capsys):
    from fedcogen.cli import main

    assert main(["models", "list"]) == 0
    assert "smollm2-half" in capsys.readouterr().out
    assert main(["models", "info", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] == 49152 and info["layers"] == 2
    assert main(["models", "info", "/definitely/not/here"]) == 2


def test_directory_without_weights_gives_clear_error(tmp_path):
    tiny = load_model("tiny", seed=3)
    tiny.model.config.save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="could not load model weights"):
        load_model(str(tmp_path))


@pytest.mark.slow
def test_24_layer_device_model_keeps_the_named_layers():
    full = models.shared_model("smollm2")
    lm = load_model("smollm2-24l")
    assert lm.model.config.num_hidden_layers == 24
    # layer 15 of the pruned model is layer 21 of the full one
    assert torch.equal(lm.model.model.layers[15].mlp.up_proj.weight, full.model.model.layers[21].mlp.up_proj.weight)
