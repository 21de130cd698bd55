"""`fedcogen bench adapters`: how much each trainable adapter form learns per local step, on one client.

Why: ``fedcogen bench comm`` found the Fed-SB-style core (``lora_mode = core``) sends ~650x fewer bytes per
round than dense LoRA yet never reaches dense's loss. Whether that comes from the *subspace* its frozen
factors span (derived from public data) or from the *form* itself (256 trained values per module) decides
what could close the gap, and a federation cannot tell the two apart. This measures it without one: the
same client, the same batches (same seed), ``steps`` AdamW steps from the same version 0, then the
validation loss over every client of the benchmark's federation. Forms:

* ``lora``: A and B (what dense FedAvg trains); ``freeze_a``: B only (FFA-LoRA), at the recipe's learning rate
  and twice it;
* ``core``: r x r core between factors from the gradient on public synthetic data (what federations use),
  at the benchmark's learning rate and at a higher one (is the core just stepping too short?);
* ``core-own``: the same core between factors from the gradient on this client's *own* training batch, an
  oracle no federation may use (the factors would have to be sent to everyone): the best a subspace could do.

The recipe (model, rank, targets, sequence length, batch size, learning rate) is the comm benchmark's
full-size one (:func:`fedcogen.simulations.bench.bench_comm.base_config`), so the figures read against it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from fedcogen.client.fl.lora_training import collate, eval_loss, train_local
from fedcogen.client.fl.node_data import client_id_for, encoded_split
from fedcogen.lora_adapter import lora_model, lora_spec, set_adapter
from fedcogen.lora_exact import core_factors, set_core_factors
from fedcogen.models import pad_id
from fedcogen.simulations.bench.bench_comm import base_config
from fedcogen.simulations.federation.federation import SimulationConfig

# (name, lora_mode, learning-rate multiple of the recipe's, factors from the client's own data)
FORMS: tuple[tuple[str, str, float, bool], ...] = (
    ("lora", "lora", 1.0, False),
    ("lora-lr2", "lora", 2.0, False),  # is the dense baseline's learning rate holding it back too?
    ("freeze_a", "freeze_a", 1.0, False),
    ("freeze_a-lr2", "freeze_a", 2.0, False),  # FFA-LoRA trains half the values: does it want longer steps?
    ("core", "core", 2.0, False),  # the comm benchmark's core-int4 learning rate
    ("core-lr5", "core", 5.0, False),
    ("core-own", "core", 2.0, True),
)
OWN_FACTOR_EXAMPLES = 16


def run_probe(out_dir: str = "runs/bench_adapters", steps: int = 6, quick: bool = False,
              forms: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train each form on client 0 for ``steps`` steps; validation loss over all clients before and after."""
    base = base_config(quick, Path(out_dir), "loopback")
    rows = []
    for name, mode, lr_mult, own in FORMS:
        if forms and name not in forms:
            continue
        s = SimulationConfig.from_dict({**base, "out_dir": str(Path(out_dir) / name)}).settings()
        s = dataclasses.replace(s, lora_mode=mode)
        started = time.perf_counter()
        lm = lora_model(s.model, s.seed, lora_spec(s), s.device)
        train = encoded_split(s, client_id_for(s, 0), "train", lm.tokenizer)
        val = [e for p in range(s.num_clients) for e in encoded_split(s, client_id_for(s, p), "val", lm.tokenizer)]
        public = None
        if own:  # changes the cached model's factors: put back below so a later form starts from the public ones
            own_batch = collate(train[:OWN_FACTOR_EXAMPLES], pad_id(lm.tokenizer))
            public = set_core_factors(lm.model, core_factors(lm.model, lm.tokenizer, s.seed, own_batch))
        set_adapter(lm, lm.initial)
        before = eval_loss(lm, val)[0]
        res = train_local(lm, train, steps=steps, batch_size=s.batch_size, lr=s.lr * lr_mult, seed=s.seed + 1)
        after = eval_loss(lm, val)[0]
        if public is not None:
            set_core_factors(lm.model, public)
        set_adapter(lm, lm.initial)
        rows.append({"form": name, "lora_mode": mode, "lr": s.lr * lr_mult, "trained_values": lm.num_adapter_params(),
                     "val_loss_before": before, "val_loss_after": after, "train_losses": res.losses,
                     "seconds": time.perf_counter() - started})
        print(f"[bench adapters] {name:<9} {lm.num_adapter_params():>9,} values  lr {s.lr * lr_mult:.4f}  "
              f"val loss {before:.4f} -> {after:.4f}", flush=True)
    return {"model": base["model"], "steps": steps, "batch_size": base["batch_size"], "client": 0,
            "val_clients": base["num_clients"], "rows": rows}


def report(r: dict[str, Any]) -> str:
    """Markdown table of a probe result."""
    lines = [f"# Per-step learning of each adapter form ({r['model']}, client {r['client']}, {r['steps']} steps of "
             f"batch {r['batch_size']}; validation over {r['val_clients']} clients)", "",
             "| form | trained values | lr | val loss before | after | drop |", "|---|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        lines.append(f"| {x['form']} | {x['trained_values']:,} | {x['lr']:.4f} | {x['val_loss_before']:.4f} | "
                     f"{x['val_loss_after']:.4f} | {x['val_loss_before'] - x['val_loss_after']:.4f} |")
    return "\n".join(lines) + "\n"
