"""A cloud backend that leaves the model to a production serving engine (vLLM, SGLang, llama.cpp server).

Why: one Python process with a PyTorch model serves a laptop-sized deployment. Users who outgrow it
run the cloud model in an engine built for serving (paged KV cache, prefix caching, continuous
batching on a GPU). The engine speaks the OpenAI-compatible ``/v1/completions`` API; this backend
keeps the gRPC contract towards devices unchanged (same ``CloudLM`` service, TLS, bearer tokens,
limits, packets) and only replaces where the distributions come from.

Per Decode step the backend sends the session's whole token sequence (the engine's prefix cache makes
that cost only the new tokens) with ``max_tokens=1``, ``temperature=0`` and ``logprobs=k``; a scored
speculative draft adds ``echo=true`` so the prompt positions' top-k come back too. Token ids are read
from ``"token_id:N"`` keys (vLLM / SGLang ``return_tokens_as_token_ids``); a key that is a token string
is mapped through the cloud's tokenizer. The packet is rebuilt from the top-k log-probs with the rest
of the mass spread over the other tokens, so the device receives the same kind of packet as from the
in-process backend (k is capped at the engine's ``max_logprobs``: vLLM's default is 20, start it with
``--max-logprobs 64`` for larger k). docs/serving-engine.md has the set-up on a GPU host.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from fedcogen.server.cogen.cloud_batcher import BatcherStopped, SessionClosed, Work
from fedcogen.server.cogen.daemon_pool import DaemonThreadPool

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine answered with an error or with something this backend cannot read."""


@dataclass
class EngineConfig:
    url: str  # base URL of the OpenAI-compatible API, e.g. http://gpu-host:8000/v1
    model: str  # the engine's model name (``/v1/models``)
    api_key: str | None = None
    timeout_s: float = 60.0
    max_logprobs: int = 20
    workers: int = 16


def dense_logprobs(top: dict[int, float], vocab: int) -> torch.Tensor:
    """A vocabulary-long log-prob vector with the engine's top-k and the rest of the mass spread evenly."""
    out = torch.empty(vocab, dtype=torch.float32)
    ids = torch.tensor(list(top), dtype=torch.long)
    vals = torch.tensor(list(top.values()), dtype=torch.float64)
    mass = float(vals.exp().sum())
    rest = vocab - len(top)
    lowest = float(vals.min())
    fill = math.log(max(1e-12, 1.0 - mass) / rest) if rest > 0 else lowest - 30.0
    out.fill_(min(fill, lowest - 1e-3))  # never above a top-k value (a flat distribution's mass is then kept)
    out[ids] = vals.float()
    return out


class EngineClient:
    """Thin client of one engine's ``/v1/completions`` (pooled keep-alive connections, bounded waits)."""

    def __init__(self, cfg: EngineConfig, tokenizer: Any, vocab: int) -> None:
        self.cfg, self.tokenizer, self.vocab = cfg, tokenizer, vocab
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.http = httpx.Client(base_url=cfg.url.rstrip("/"), headers=headers, timeout=cfg.timeout_s,
                                 limits=httpx.Limits(max_connections=cfg.workers))
        self._vocab_map: dict[str, int] | None = None
        self.echo_ok = True  # the engine returns prompt log-probs with echo (vLLM, SGLang)

    def close(self) -> None:
        self.http.close()

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self.http.post("/completions", json={"model": self.cfg.model, "temperature": 0.0,
                                                      "return_tokens_as_token_ids": True, **body})
        except httpx.HTTPError as exc:
            raise EngineError(f"engine at {self.cfg.url} unreachable: {exc}") from exc
        if r.status_code != 200:
            raise EngineError(f"engine answered HTTP {r.status_code}: {r.text[:300]}")
        try:
            return r.json()["choices"][0]["logprobs"]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineError(f"engine reply has no logprobs: {r.text[:300]}") from exc

    def token_id(self, key: str) -> int:
        if key.startswith("token_id:"):
            return int(key[len("token_id:"):])
        if self._vocab_map is None:
            self._vocab_map = dict(self.tokenizer.get_vocab())
        if key in self._vocab_map:
            return self._vocab_map[key]
        ids = self.tokenizer(key, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise EngineError(f"engine token {key!r} is not one token of the cloud's tokenizer (ask the engine "
                              "for token ids: vLLM/SGLang return_tokens_as_token_ids)")
        return ids[0]

    def score(self, seq: list[int], n: int, k: int) -> torch.Tensor:
        """Distributions after each of the last ``n`` tokens of ``seq`` ([n, V] log-probs)."""
        rows: list[Any] = []
        if n == 1 or self.echo_ok:
            lp = self._post({"prompt": seq, "max_tokens": 1, "logprobs": k, "echo": n > 1})
            rows = (lp.get("top_logprobs") or [])[-n:]  # echo: one per prompt token (the first None), then the new one
        if n > 1 and (len(rows) < n or any(not row for row in rows)):
            if self.echo_ok:
                log.warning("engine returns no prompt log-probs (echo); scoring drafts one position per request")
            self.echo_ok = False  # e.g. llama.cpp server: one request per draft position
            rows = [(self._post({"prompt": seq[: len(seq) - n + 1 + i], "max_tokens": 1, "logprobs": k})
                     .get("top_logprobs") or [None])[0] for i in range(n)]
        if len(rows) < n or any(not row for row in rows):
            raise EngineError(f"engine returned log-probs for {len(rows)} of {n} needed positions")
        return torch.stack([dense_logprobs({self.token_id(t): float(v) for t, v in row.items()}, self.vocab)
                            for row in rows])

    def generate(self, prompt: list[int], max_new: int, stop: frozenset[int]) -> list[int]:
        lp = self._post({"prompt": prompt, "max_tokens": max_new, "logprobs": 1})
        out = []
        for t in lp.get("tokens") or []:
            tok = self.token_id(t)
            if tok in stop:
                break
            out.append(tok)
        return out[:max_new]


class EngineBackend:
    """Runs the servicer's work items against the engine (the same interface as the in-process scheduler)."""

    def __init__(self, client: EngineClient, workers: int = 16) -> None:
        self.client = client
        self._pool = DaemonThreadPool(max_workers=workers, thread_name_prefix="cogen-engine")
        self._lock = threading.Lock()
        self._stopped = False
        self.batches = self.batched_rows = self.ticks = 0

    @property
    def stopped(self) -> bool:
        return self._stopped

    def submit(self, work: Work) -> None:
        with self._lock:
            if not self._stopped:
                self._pool.submit(self._run, work)
                return
        work.fail(BatcherStopped("cloud is shutting down; the step was not run"))

    def _run(self, w: Work) -> None:
        s = w.session
        try:
            if w.caller_gone():
                raise TimeoutError("caller went away before the step ran")
            if s.closed:
                raise SessionClosed("session was closed before the step ran")
            if w.generate is not None:
                w.tokens = self.client.generate(list(w.ids), w.generate[0], w.generate[1])
                w.done.set()
                return
            seq = s.seq  # the session's token sequence (prompt + committed + draft)
            if w.rewind:
                if w.rewind > len(seq):
                    raise ValueError(f"cannot rewind {w.rewind} tokens of a {len(seq)}-token sequence")
                del seq[len(seq) - w.rewind:]
            seq += w.ids
            logits = self.client.score(seq, w.score, s.k)
            self.ticks += 1
            w.logits = logits[0] if w.score == 1 else logits
            w.done.set()
        except Exception as exc:  # noqa: BLE001 - every outcome reaches the waiting handler
            if not isinstance(exc, TimeoutError | SessionClosed):
                log.warning("engine step failed: %s", exc)
            w.fail(exc)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopped = True
        self._pool.shutdown(wait=True, timeout=timeout)
        self.client.close()
