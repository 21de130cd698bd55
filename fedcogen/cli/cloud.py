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


def _engine_key(args: argparse.Namespace) -> str | None:
    if args.engine_api_key_file:
        path = Path(args.engine_api_key_file)
        if not path.is_file():
            raise FileNotFoundError(f"engine API key file not found: {path}")
        return path.read_text().strip() or None
    return os.environ.get("FEDCOGEN_ENGINE_API_KEY") or None
