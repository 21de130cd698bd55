"""Start llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) on loopback, and stop it cleanly.

Why here (simulations/deploy) and not in server/cogen: the cloud never starts its engine. In production the
engine (vLLM, SGLang, llama.cpp) is run by whoever runs the GPU host and the cloud is only given its URL
(``--engine-url``). Starting one next to the cloud is what a local deployment, a test or a benchmark does,
like the SuperLink and SuperNodes that :mod:`~fedcogen.simulations.deploy.deployment` starts.

``llama-cpp-python`` is an optional third-party engine: it ships as an sdist that compiles llama.cpp
(``make engine`` builds it with flags that run on this kind of virtual machine; docs/serving-engine.md).
The launcher runs ``python -m llama_cpp.server`` in its own process group (``ManagedProcess``: log file,
whole-tree stop), passes its settings, API key included, in a private JSON config file (never on the
command line, where ``ps`` shows it), waits a bounded time for ``GET /v1/models`` to answer 200 and
fails early with the log tail when the process dies. It serves the embedded SmolLM2 GGUF by default.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fedcogen.models import embedded_gguf_path
from fedcogen.simulations.federation.supervisor import DeploymentError, ManagedProcess, free_port

ENGINE_MODULE = "llama_cpp"
# The flags `make engine` builds it with: llama.cpp's native build emits AMX instructions that fault in
# this virtual machine (general protection fault in libggml-cpu on the first completion), so the build is
# portable AVX2 with AMX off.
BUILD_CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                    "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")


def engine_missing_reason() -> str | None:
    """Why the llama.cpp server cannot run here (None when ``llama_cpp`` and its server extras import)."""
    for module, what in ((ENGINE_MODULE, "llama-cpp-python"), ("uvicorn", "llama-cpp-python[server]"),
                         ("sse_starlette", "llama-cpp-python[server]"),
                         ("starlette_context", "llama-cpp-python[server]"),
                         ("pydantic_settings", "llama-cpp-python[server]")):
        if importlib.util.find_spec(module) is None:
            return (f"{what} is not installed (module {module!r} missing): it is an optional engine that compiles "
                    "llama.cpp; build and install it with `make engine` (docs/serving-engine.md)")
    return None


@dataclass
class LlamaCppConfig:
    """How to run the server; defaults serve the embedded SmolLM2 on a free loopback port."""

    model_path: str | None = None  # a GGUF file; None = the embedded SmolLM2-135M-Instruct
    model_alias: str = "smollm2"  # the name the server answers to (``--engine-model``)
    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port
    api_key: str | None = None
    n_ctx: int = 2048
    n_threads: int = 1  # one machine plays cloud, engine and device in tests and benchmarks
    prompt_cache: bool = True  # llama-cpp-python's RAM cache of evaluated prefixes (one entry per session state)
    cache_size_bytes: int = 1 << 30
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    log_dir: str | None = None  # where the server's log goes; None = a private temporary folder
    extra: dict[str, Any] = field(default_factory=dict)  # further llama-cpp-python model settings

    def validate(self) -> None:
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the llama.cpp server is started on loopback only, not {self.host!r}: expose an "
                             "engine on a network yourself, behind its API key (docs/serving-engine.md)")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.n_ctx < 64 or self.n_threads < 1:
            raise ValueError(f"n_ctx must be >= 64 and n_threads >= 1, got {self.n_ctx} and {self.n_threads}")
        if not self.start_timeout_s > 0:
            raise ValueError(f"start_timeout_s must be > 0, got {self.start_timeout_s}")
        if self.model_path is not None and not Path(self.model_path).is_file():
            raise FileNotFoundError(f"GGUF model file not found: {self.model_path}")


class LlamaCppServer:
    """``with LlamaCppServer(LlamaCppConfig(api_key=...)) as eng: eng.url`` -> ``http://127.0.0.1:<port>/v1``."""

    def __init__(self, cfg: LlamaCppConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.port = cfg.port or free_port(cfg.host)
        self._tmp = tempfile.TemporaryDirectory(prefix="fedcogen-llamacpp-")
        self.folder = Path(cfg.log_dir) if cfg.log_dir else Path(self._tmp.name)
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/v1"

    @property
    def model_name(self) -> str:
        return self.cfg.model_alias

    def settings(self) -> dict[str, Any]:
        """llama-cpp-python's ``ConfigFileSettings``: server settings plus one model."""
        model = {
            "model": str(self.cfg.model_path or embedded_gguf_path()),
            "model_alias": self.cfg.model_alias,
            "n_ctx": self.cfg.n_ctx,
            "n_threads": self.cfg.n_threads,
            "n_threads_batch": self.cfg.n_threads,
            "logits_all": True,  # top-k log-probs need every position's logits kept
            "cache": self.cfg.prompt_cache,
            "cache_type": "ram",
            "cache_size": self.cfg.cache_size_bytes,
            "verbose": False,
            **self.cfg.extra,
        }
        server: dict[str, Any] = {"host": self.cfg.host, "port": self.port}
        if self.cfg.api_key:
            server["api_key"] = self.cfg.api_key
        return {**server, "models": [model]}

    def start(self) -> LlamaCppServer:
        reason = engine_missing_reason()
        if reason:
            raise DeploymentError(reason)
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "llamacpp-config.json"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the API key
        with os.fdopen(fd, "w") as fh:
            json.dump(self.settings(), fh)
        self.process = ManagedProcess(
            name="llama.cpp server", argv=[sys.executable, "-m", "llama_cpp.server", "--config_file", str(conf)],
            log_path=self.folder / "llamacpp-server.log", ready_host=self.cfg.host, ready_port=self.port,
            fail_patterns=(r"Traceback \(most recent call last\)", r"error loading model"),
        )
        self.process.start()
        try:
            self.process.wait_for(self._answers, self.cfg.start_timeout_s, f"GET {self.url}/models answering 200")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        headers = {"Authorization": f"Bearer {self.cfg.api_key}"} if self.cfg.api_key else {}
        try:
            return httpx.get(f"{self.url}/models", headers=headers, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 25) -> str:
        return self.process.log_tail(lines) if self.process else ""

    def stop(self) -> int | None:
        """SIGTERM the server's process tree, SIGKILL what is left after ``stop_timeout_s``; idempotent."""
        rc = self.process.stop(timeout=self.cfg.stop_timeout_s) if self.process else None
        self._tmp.cleanup()
        return rc

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
