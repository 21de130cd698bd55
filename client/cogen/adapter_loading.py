"""Layering a personalised LoRA adapter (a PEFT folder or a weights file) over the device model."""

from __future__ import annotations

from pathlib import Path

import torch

from fedcogen.models import LoadedModel


def load_adapter(lm: LoadedModel, adapter: str) -> LoadedModel:
    """Layer a personalised LoRA adapter over the device model.

    Accepts a PEFT ``save_pretrained`` folder (``adapter_config.json`` + weights) or a single weights
    file (``.safetensors`` / ``.pt``) that sits next to an ``adapter_config.json``.
    """
    from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict

    path = Path(adapter).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter folder {path} has no adapter_config.json (expected PEFT save_pretrained)")
        model = PeftModel.from_pretrained(lm.model, str(path))
    elif path.is_file():
        cfg_file = path.parent / "adapter_config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"adapter file {path} needs an adapter_config.json next to it")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        model = get_peft_model(lm.model, PeftConfig.from_pretrained(str(path.parent)))
        result = set_peft_model_state_dict(model, state)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"adapter {path} has weights this model lacks: {list(unexpected)[:3]}")
    else:
        raise FileNotFoundError(f"adapter not found: {path}")
    model.eval()
    return LoadedModel(model=model, tokenizer=lm.tokenizer, name=f"{lm.name}+{path.name}", source=lm.source)
