"""Settings of the CoGenesis cloud (``fedcogen cloud serve``) and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from fedcogen.accelerator import check_setting

# how server/cogen/engine_backend.py can talk to an engine (its docstring says what each means)
ENGINE_FLAVOURS = ("openai", "llama-cpp-python")


@dataclass
class CloudConfig:
    """Everything ``fedcogen cloud serve`` can set; defaults suit a laptop-sized deployment."""

    model: str = "smollm2"
    # a LoRA adapter folder merged into the model's weights at start (the provider's public training,
    # `fedcogen cloud train-public`); merged, so the batched KV-cache forward runs a plain model
    adapter: str | None = None
    seed: int = 0
    # where the in-process scheduler runs the model: auto | cpu | cuda | cuda:N | mps (fedcogen.accelerator);
    # weights, KV buffers and forwards live there, log-probs come back to the CPU for the codec
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 0
    tls_dir: str | None = None
    token: str | None = None
    insecure: bool = False
    require_client_cert: bool = False
    max_sessions: int = 64
    max_tokens_per_session: int = 512
    max_prompt_tokens: int = 4096  # + max_tokens_per_session stays inside SmolLM2's 8192-token window
    max_message_bytes: int = 1 << 20
    max_k: int = 0  # 0 = the whole vocabulary
    idle_timeout_s: float = 60.0
    # Upper bound on how long an RPC handler waits for one Decode step, even when the client set no
    # deadline: a handler must never wait forever (it would pin a worker thread and block exit).
    step_timeout_s: float = 120.0
    batch_window_ms: float = 2.0
    max_batch: int = 16
    prefill_chunk: int = 64  # a long prompt is run in chunks of this many tokens between other sessions' steps
    sketch_max_new_tokens: int = 96
    eval_max_new_tokens: int = 256
    allow_eval_only_context: bool = False
    workers: int = 32
    # Production serving engine (server/cogen/engine_backend.py): the model runs there, this process keeps the
    # gRPC contract, auth and limits. None = the in-process PyTorch scheduler.
    engine_url: str | None = None
    engine_model: str = ""
    engine_api_key: str | None = None
    engine_max_logprobs: int = 20
    engine_timeout_s: float = 60.0
    # how the engine reads prompts and names tokens: openai (vLLM, SGLang) | llama-cpp-python (engine_backend)
    engine_flavour: str = "openai"
    # score a draft in one request with echo (prompt log-probs); None = the flavour's default (openai: yes)
    engine_echo: bool | None = None

    def validate(self) -> None:
        self.device = check_setting(self.device)  # a malformed setting fails before the model loads
        if not self.insecure and not self.tls_dir:
            raise ValueError("the cloud needs --tls-dir DIR (with --token-file) or an explicit --insecure")
        if not self.insecure and not self.token:
            raise ValueError(
                "a TLS cloud needs a bearer token (--token-file FILE or $FEDCOGEN_CLOUD_TOKEN) so that callers "
                "can be authenticated"
            )
        if not self.step_timeout_s > 0:
            raise ValueError(f"step_timeout_s must be > 0, got {self.step_timeout_s}")
        if self.max_sessions < 1 or self.max_tokens_per_session < 1 or self.max_batch < 1 or self.prefill_chunk < 1:
            raise ValueError("max_sessions, max_tokens_per_session, max_batch and prefill_chunk must be >= 1")
        if self.engine_url and self.adapter:
            raise ValueError("--adapter is merged into the in-process model; with --engine-url the serving engine "
                             "loads the LoRA itself (e.g. vLLM --lora-modules)")
        if self.engine_url and not self.engine_model:
            raise ValueError("--engine-url needs --engine-model (the model name the engine serves)")
        if self.engine_url and self.engine_flavour not in ENGINE_FLAVOURS:
            raise ValueError(f"--engine-flavour must be one of {', '.join(ENGINE_FLAVOURS)}, got {self.engine_flavour!r}")
        if self.engine_url and (not self.max_k or self.max_k > self.engine_max_logprobs):
            self.max_k = self.engine_max_logprobs  # the engine cannot return more top log-probs
        if self.workers < self.max_sessions + 4:
            # Each open Decode stream occupies one gRPC worker thread for its lifetime.
            self.workers = self.max_sessions + 4
