"""Train the cloud's public LoRA (``fedcogen cloud train-public``) and export it as a small fp16 artifact.

Why a separate, cached step: the demo's budget (15 minutes on 2 CPU cores) has no room for the
cloud provider's own training, which in reality happens once, long before any user shows up. The run
is a pure function of :class:`CloudRecipe` (seeded data, seeded LoRA init, seeded batch order), the
artifact folder is named by the recipe's digest, and ``manifest.json`` records the recipe, its digest,
the sha256 of the weights file and how long training took; :mod:`.artifact` checks them on load.

Loss: causal-LM loss on target tokens only; prompts are formatted with the cloud's system prompt
(``CLOUD_SYSTEM``), exactly as the cloud service formats what it is asked.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fedcogen.client.fl.lora_training import batch_plan, collate, encode_examples, target_loss
from fedcogen.models import load_model, pad_id
from fedcogen.prompts import CLOUD_SYSTEM
from fedcogen.simulations.cloud.public_corpus import CloudRecipe, public_examples

WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "manifest.json"


def artifact_dir(root: str | Path, recipe: CloudRecipe) -> Path:
    return Path(root) / f"cloud-lora-{recipe.digest()[:12]}"


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _save(model: Any, recipe: CloudRecipe, out_root: Path, losses: list[float], seconds: float, examples: int) -> Path:
    """Write the artifact of ``recipe`` (fp16 weights + manifest) atomically into its digest-named folder."""
    import torch
    from safetensors.torch import load_file, save_file

    out = artifact_dir(out_root, recipe)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp))  # adapter_config.json + fp32 weights (+ a model-card README we drop)
    (tmp / "README.md").unlink(missing_ok=True)
    config = json.loads((tmp / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = recipe.base_model  # the preset name, not this machine's cache path
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(tmp / WEIGHTS_FILE)).items()}
    save_file(state, str(tmp / WEIGHTS_FILE))  # fp16: half the bytes of fp32
    manifest = {"recipe": asdict(recipe), "recipe_digest": recipe.digest(),
                "weights_sha256": sha256_file(tmp / WEIGHTS_FILE), "weights_bytes": (tmp / WEIGHTS_FILE).stat().st_size,
                "train_seconds": round(seconds, 1), "examples": examples,
                "last10_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4), "losses": [round(x, 4) for x in losses]}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def train_public(recipe: CloudRecipe, out_root: str | Path, *, device: str = "cpu", checkpoint_every: int = 20,
                 log: Callable[[str], None] = print) -> Path:
    """Train the recipe's LoRA on the public corpus and write its artifact; an existing artifact of the
    same recipe is reused (returned at once).

    The learning rate is constant, so the adapter after ``k`` steps IS the artifact of the same recipe
    with ``steps=k``: every ``checkpoint_every`` steps that artifact is written too, and a run cut short
    by its time limit still leaves exact, reproducible artifacts behind.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    out_root = Path(out_root)
    out = artifact_dir(out_root, recipe)
    if (out / MANIFEST_FILE).is_file():
        log(f"cached: {out} (recipe {recipe.digest()[:12]})")
        return out
    examples = public_examples(recipe)
    lm = load_model(recipe.base_model, device=device)
    data = encode_examples(lm.tokenizer, [(ex["prompt"], ex["target"]) for ex in examples], recipe.max_seq_len,
                           system=CLOUD_SYSTEM)  # the cloud is asked with its own system prompt
    n_layers = int(lm.model.config.num_hidden_layers)
    if recipe.lora_first_layer >= n_layers:
        raise ValueError(f"lora_first_layer {recipe.lora_first_layer} is past the model's {n_layers} layers")
    cfg = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=[t.strip() for t in recipe.lora_targets.split(",") if t.strip()],
                     layers_to_transform=list(range(recipe.lora_first_layer, n_layers)))
    torch.manual_seed(recipe.seed)
    model = get_peft_model(lm.model, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=0.0)
    plan = batch_plan(len(data), recipe.steps, recipe.batch_size, recipe.seed)
    pad = pad_id(lm.tokenizer)
    log(f"public corpus: {len(examples)} examples ({sum(e['view'] == 'context' for e in examples)} with context) "
        f"of {len({e['user_id'] for e in examples})} public users; {recipe.steps} steps x {recipe.batch_size}, "
        f"recipe {recipe.digest()[:12]}")
    started, losses = time.perf_counter(), []
    model.train()
    for step, idx in enumerate(plan, 1):
        loss, _ = target_loss(model, collate([data[i] for i in idx], pad))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 5 == 0 or step == len(plan):
            recent = losses[-5:]
            log(f"  step {step}/{len(plan)} loss {sum(recent) / len(recent):.3f} ({time.perf_counter() - started:.0f} s)")
        if step < len(plan) and step % checkpoint_every == 0:
            model.eval()
            ck = _save(model, replace(recipe, steps=step), out_root, losses, time.perf_counter() - started, len(examples))
            model.train()
            log(f"  checkpoint {ck}")
    model.eval()
    out = _save(model, recipe, out_root, losses, time.perf_counter() - started, len(examples))
    log(f"trained in {time.perf_counter() - started:.0f} s; artifact {out}")
    return out
