"""`fedcogen models`: list known models, warm the cache, show size and vocabulary."""

from __future__ import annotations

import argparse
import json
import time

from fedcogen.cli.common import add_command, add_group


def register(sub: argparse._SubParsersAction) -> None:
    p, msub = add_group(
        sub, "models", "list known models, warm the model cache, show size and vocabulary", dest="models_command",
        description="List the models fedcogen can load, dequantise the embedded SmolLM2 into the cache "
        "(FEDCOGEN_CACHE, default ~/.cache/fedcogen), or inspect one model.",
    )
    add_command(msub, "list", "list model names accepted by --model", func=_list)
    add_command(msub, "warm", "dequantise the embedded GGUF once into the cache", func=_warm)
    ip = add_command(msub, "info", "load a model and show its size, layers and vocabulary", func=_info)
    ip.add_argument("model", nargs="?", default="smollm2", help="model name or local HF directory")
    ip.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    from fedcogen.models import cache_dir, known_models

    for row in known_models():
        print(f"{row['name']:<14} {row['description']}")
    print(f"\ncache folder: {cache_dir()}")
    return 0


def _warm(args: argparse.Namespace) -> int:
    from fedcogen.models import ensure_embedded_cache

    t = time.perf_counter()
    folder = ensure_embedded_cache(need_model=True)
    print(f"embedded model cached at {folder} ({time.perf_counter() - t:.1f} s)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from fedcogen.models import load_model

    t = time.perf_counter()
    lm = load_model(args.model)
    info = {
        "name": lm.name,
        "source": lm.source,
        "architecture": lm.model.config.model_type,
        "parameters": lm.num_parameters(),
        "layers": lm.model.config.num_hidden_layers,
        "hidden_size": lm.model.config.hidden_size,
        "vocab_size": lm.vocab_size,
        "load_seconds": round(time.perf_counter() - t, 2),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:<14} {v}")
    return 0
