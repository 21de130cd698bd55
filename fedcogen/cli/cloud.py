"""``fedcogen cloud serve``: run the CoGenesis cloud LM as a gRPC service."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from fedcogen.cli.common import add_command, add_group, add_token_args, token_of
from fedcogen.cli.flags import add_device_flag

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    _, csub = add_group(sub, "cloud", "the CoGenesis cloud LM service (gRPC)", dest="cloud_command")
    p = add_command(
        csub, "serve", "serve the cloud model over gRPC (Sketch + streaming Decode)", func=_serve,
        description=(
            "Host the large model for CoGenesis. Devices send only the bare instruction (and, for the "
            "logit variant, the tokens they generate); the API has no field for private context. "
            "Concurrent Decode sessions are batched dynamically; each session keeps its own KV cache. "
            "Production needs --tls-dir and a bearer token, read from --token-file (mode 0600) or the "
            "FEDCOGEN_CLOUD_TOKEN environment variable; --insecure (plaintext) is for loopback tests."
        ),
        formatter=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="smollm2", help="cloud model: smollm2, tiny-large, ... or a local HF folder")
    add_device_flag(p, "the cloud model (weights, KV buffers, forwards)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces)")
    p.add_argument("--port", type=int, default=50071, help="port (0 = pick a free one)")
    p.add_argument("--tls-dir", help="folder with server.crt/server.key (and ca.crt); see `fedcogen certs`")
    add_token_args(p, "file (mode 0600) holding the bearer token callers must send as "
                   "'authorization: Bearer <token>'; default: the FEDCOGEN_CLOUD_TOKEN environment variable")
    p.add_argument("--insecure", action="store_true", help="plaintext without TLS (explicit opt-in, testing only)")
    p.add_argument("--mtls", action="store_true", help="also require client certificates signed by ca.crt")
    p.add_argument("--max-sessions", type=int, default=64, help="concurrent Decode sessions")
    p.add_argument("--max-tokens-per-session", type=int, default=512, help="generated tokens per session")
    p.add_argument("--max-prompt-tokens", type=int, default=4096,
                   help="prompt length limit (with --max-tokens-per-session it must fit the model window)")
    p.add_argument("--max-message-bytes", type=int, default=1 << 20, help="largest accepted request")
    p.add_argument("--idle-timeout", type=float, default=60.0, help="seconds before an idle session is reaped")
    p.add_argument(
        "--step-timeout", type=float, default=120.0,
        help="longest a Decode step may wait on the cloud, even when the client set no deadline",
    )
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="how long the batcher waits to fill a batch")
    p.add_argument("--max-batch", type=int, default=16, help="largest decode batch")
    p.add_argument("--prefill-chunk", type=int, default=64,
                   help="a long prompt is read in chunks of this many tokens between other sessions' steps")
    p.add_argument("--engine-url", help="serve the model from a serving engine's OpenAI-compatible API instead of "
                   "in-process (vLLM / SGLang / llama.cpp server), e.g. http://gpu-host:8000/v1; "
                   "see docs/serving-engine.md")
    p.add_argument("--engine-model", default="", help="with --engine-url: the model name the engine serves")
    p.add_argument("--engine-api-key-file", help="with --engine-url: file holding the engine's API key "
                   "(or $FEDCOGEN_ENGINE_API_KEY)")
    p.add_argument("--engine-max-logprobs", type=int, default=20,
                   help="with --engine-url: the engine's top-logprobs limit (vLLM --max-logprobs); caps k")
    p.add_argument("--engine-flavour", default="openai", choices=["openai", "llama-cpp-python"],
                   help="with --engine-url: openai = vLLM / SGLang (token-id prompts and keys, echo); "
                   "llama-cpp-python = its llama_cpp.server (text prompts and keys; docs/serving-engine.md)")
    p.add_argument("--engine-echo", action=argparse.BooleanOptionalAction, default=None,
                   help="with --engine-url: score a speculative draft in one request with echo (prompt log-probs) "
                   "or one request per position (default: echo for openai, per position for llama-cpp-python)")
    p.add_argument("--sketch-max-new-tokens", type=int, default=96, help="sketch length cap")
    p.add_argument(
        "--allow-eval-only-context",
        action="store_true",
        help="enable EvalOnlyGenerate, which ACCEPTS PRIVATE CONTEXT (privacy-violating evaluation upper bound)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for the model (0 = torch default)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds open sessions get to finish on shutdown")
    p.add_argument("--adapter", help="a LoRA adapter folder (PEFT save_pretrained, e.g. the artifact of "
                   "`fedcogen cloud train-public`) merged into the cloud model's weights at start")

    t = add_command(
        csub, "train-public", "train the cloud's LoRA on the public corpus (cached by the recipe's digest)",
        func=_train_public,
        description=(
            "The cloud provider's own training, on public data only: a synthetic corpus of writing tasks "
            "from generated users disjoint from the federation (simulations/cloud/public_corpus.py). The "
            "artifact (fp16 LoRA + manifest with digests) goes to OUT/cloud-lora-<recipe digest>; a "
            "finished artifact of the same recipe is reused."
        ),
    )
    t.add_argument("--recipe", help="recipe JSON (default: simulations/cloud/recipe.json)")
    t.add_argument("--out", required=True, help="folder the artifact folder is written into")
    t.add_argument("--checkpoint-every", type=int, default=20,
                   help="also write the artifact of the same recipe with steps=k every k steps")
    add_device_flag(t, "training")

    g = add_command(
        csub, "gap", "measure the CoGenesis gap: cloud alone vs cloud with context vs the base device",
        func=_gap,
        description=(
            "Reference losses (cloud and base device from the instruction, cloud with the private context) "
            "with and without --adapter, and, unless --no-generate, generations of the variants cloud, "
            "device and cloud_with_context through a spawned `fedcogen cloud serve --adapter` with ROUGE-L "
            "and fact recall per user (95 %% intervals), on test tasks of the demo's federation."
        ),
    )
    g.add_argument("--adapter", help="the cloud's LoRA folder (default: the committed, digest-checked artifact)")
    g.add_argument("--base-only", action="store_true", help="measure the cloud without any adapter")
    g.add_argument("--users", type=int, default=12, help="users of the federation (seed 0)")
    g.add_argument("--first-user", type=int, default=8, help="evaluate users from this index on")
    g.add_argument("--tasks-per-user", type=int, default=3, help="test tasks per evaluated user")
    g.add_argument("--device-model", default="smollm2-27l", help="the device model")
    g.add_argument("--no-generate", action="store_true", help="losses only (minutes instead of tens of minutes)")
    g.add_argument("--json", required=True, help="write the figures (and every answer) to this JSON file")


def _serve(args: argparse.Namespace) -> int:
    from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server

    if args.insecure and args.tls_dir:
        raise ValueError("choose either --tls-dir (TLS) or --insecure (plaintext), not both")
    config = CloudConfig(
        model=args.model,
        device=args.device,
        host=args.host,
        port=args.port,
        tls_dir=args.tls_dir,
        token=token_of(args),
        insecure=args.insecure,
        require_client_cert=args.mtls,
        max_sessions=args.max_sessions,
        max_tokens_per_session=args.max_tokens_per_session,
        max_prompt_tokens=args.max_prompt_tokens,
        max_message_bytes=args.max_message_bytes,
        idle_timeout_s=args.idle_timeout,
        step_timeout_s=args.step_timeout,
        batch_window_ms=args.batch_window_ms,
        max_batch=args.max_batch,
        sketch_max_new_tokens=args.sketch_max_new_tokens,
        allow_eval_only_context=args.allow_eval_only_context,
        prefill_chunk=args.prefill_chunk,
        engine_url=args.engine_url,
        engine_model=args.engine_model,
        engine_api_key=_engine_key(args),
        engine_max_logprobs=args.engine_max_logprobs,
        engine_flavour=args.engine_flavour,
        engine_echo=args.engine_echo,
        adapter=args.adapter,
    )
    config.validate()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.insecure:
        log.warning("serving PLAINTEXT (--insecure): use only on loopback or for tests")
    if args.allow_eval_only_context:
        log.warning("EvalOnlyGenerate is ENABLED: this cloud accepts private context (evaluation only)")
    server = start_cloud_server(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"cloud listening on {server.address}", flush=True)
    while not stop.wait(0.5):  # short waits so signal handlers run promptly
        pass
    server.stop(grace=args.grace)
    return 0


def _train_public(args: argparse.Namespace) -> int:
    from fedcogen.simulations.cloud.public_corpus import DEFAULT_RECIPE, CloudRecipe
    from fedcogen.simulations.cloud.train_public import train_public

    recipe = CloudRecipe.load(args.recipe or DEFAULT_RECIPE)
    print(train_public(recipe, args.out, device=args.device, checkpoint_every=args.checkpoint_every), flush=True)
    return 0


def _gap(args: argparse.Namespace) -> int:
    from fedcogen import results_json
    from fedcogen.simulations.cloud.artifact import committed_artifact
    from fedcogen.simulations.cloud.cloud_gap import GapConfig, measure_gap

    adapter = None if args.base_only else (args.adapter or str(committed_artifact()))
    cfg = GapConfig(adapter=adapter, device_model=args.device_model, users=args.users, first_user=args.first_user,
                    tasks_per_user=args.tasks_per_user, generate=not args.no_generate)
    print(f"cloud gap on {cfg.users - cfg.first_user} users x {cfg.tasks_per_user} tasks, adapter {adapter}", flush=True)
    results_json.write(Path(args.json), measure_gap(cfg), indent=2, default=str)
    print(f"figures in {args.json}")
    return 0


def _engine_key(args: argparse.Namespace) -> str | None:
    if args.engine_api_key_file:
        path = Path(args.engine_api_key_file)
        if not path.is_file():
            raise FileNotFoundError(f"engine API key file not found: {path}")
        return path.read_text().strip() or None
    return os.environ.get("FEDCOGEN_ENGINE_API_KEY") or None
