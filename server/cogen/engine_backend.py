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

Engines differ where the OpenAI API leaves room; ``EngineConfig.flavour`` names the two this backend
knows. ``openai`` (vLLM, SGLang): token-id prompts, ``token_id:N`` keys, prompt log-probs with echo.
``llama-cpp-python`` (its ``llama_cpp.server``, measured here on a build of 0.3.36):

* its request schema takes a prompt only as text, so the sequence is decoded (special tokens kept). A
  device's tokens need not be the canonical tokenisation of their text, so the engine may read the text
  as other tokens (seen in the first answers tried: 41 for the cloud's 42). The distribution after the
  text is still the one a step needs, so such a step is answered, counted (``retokenized``, its
  ``usage.prompt_tokens`` differs) and its draft scored per position, never from misaligned echo rows;
* it stops on an end-of-generation token without reporting that position's log-probs, so scoring
  requests bias the tokenizer's special tokens to -100 (its log-probs come from the raw logits, not the
  sampler's biased copy) and the position is always reported;
* its default ``repeat_penalty`` is 1.1, which changes greedy tokens: requests send 1.0;
* its log-prob keys are token texts; control tokens (the end of turn among them) and byte tokens that
  are an incomplete UTF-8 character (the first byte of an emoji) all render as ``""``, and equal texts
  collide in its reply (the lower value survives). Reading ``""`` as the end of turn cut a birthday
  message after "Sister:" (the emoji prefix at -0.89 taken for the end); dropping it hides every end of
  turn. So a row with ``""`` costs one more request that tells the two apart (``_resolve_blank``). A row
  whose keys all collapse into one ``""`` (seen after "Sister:": the top-20 were emoji bytes) carries no
  readable token: it is sent as a flat distribution (``empty_rows``), so the device decides that position;
* with echo it log-softmaxes and fully sorts every prompt position in Python, which costs more than
  one request per draft position with its prefix cache, so echo is off by default for it.
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
from fedcogen.server.cogen.cloud_config import ENGINE_FLAVOURS as FLAVOURS
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
    flavour: str = "openai"  # "openai" (vLLM, SGLang) | "llama-cpp-python" (see the module docstring)
    echo: bool | None = None  # score drafts in one request with echo; None = the flavour's default

    def validate(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ValueError(f"engine flavour must be one of {', '.join(FLAVOURS)}, got {self.flavour!r}")
        if self.max_logprobs < 1:
            raise ValueError(f"engine max_logprobs must be >= 1, got {self.max_logprobs}")



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
        cfg.validate()
        self.cfg, self.tokenizer, self.vocab = cfg, tokenizer, vocab
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self.http = httpx.Client(base_url=cfg.url.rstrip("/"), headers=headers, timeout=cfg.timeout_s,
                                 limits=httpx.Limits(max_connections=cfg.workers))
        self._vocab_map: dict[str, int] | None = None
        self._text_ids: dict[str, int | None] = {}  # token text -> id (llama-cpp-python keys), memoised
        self.llama_cpp = cfg.flavour == "llama-cpp-python"
        # the engine returns prompt log-probs with echo (vLLM, SGLang); llama-cpp-python's are slow (docstring)
        self.echo_ok = cfg.echo if cfg.echo is not None else not self.llama_cpp
        self.requests = 0
        self.unmapped_keys = 0  # top-k entries whose text is not one token of the cloud's tokenizer (dropped)
        self.retokenized = 0  # text prompts the engine read as a different number of tokens (llama-cpp-python)
        self.blank_probes = 0  # extra requests asking what a "" key stands for (llama-cpp-python)
        self.empty_rows = 0  # positions whose whole top-k was unreadable: sent as a flat distribution
        self._stats_lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    def _post(self, seq: list[int], body: dict[str, Any]) -> dict[str, Any]:
        """One completion of ``seq``; returns its first choice (``logprobs`` checked by the callers)."""
        extra: dict[str, Any] = {"return_tokens_as_token_ids": True}
        prompt: list[int] | str = seq
        if self.llama_cpp:  # text prompt, no repeat penalty (its default 1.1 changes greedy tokens)
            prompt = self.tokenizer.decode(seq, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            extra = {"repeat_penalty": 1.0}
        with self._stats_lock:
            self.requests += 1
        try:
            r = self.http.post("/completions", json={"model": self.cfg.model, "temperature": 0.0, "prompt": prompt,
                                                      **extra, **body})
        except httpx.HTTPError as exc:
            raise EngineError(f"engine at {self.cfg.url} unreachable: {exc}") from exc
        if r.status_code != 200:
            hint = (" (an engine that takes prompts only as text: start the cloud with --engine-flavour "
                    "llama-cpp-python)" if r.status_code == 422 and "prompt" in r.text and not self.llama_cpp else "")
            raise EngineError(f"engine answered HTTP {r.status_code}: {r.text[:300]}{hint}")
        try:
            reply = r.json()
            choice = reply["choices"][0]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EngineError(f"engine reply has no choices: {r.text[:300]}") from exc
        got = (reply.get("usage") or {}).get("prompt_tokens")
        choice["fedcogen_aligned"] = not self.llama_cpp or got is None or got == len(seq)
        if not choice["fedcogen_aligned"]:
            # The text holds tokens the engine's tokenizer merges differently (a device draft need not be the
            # canonical tokenisation). The distribution after the text is still the one asked for; only
            # echo rows would no longer line up with the sequence's positions (score() then asks per position).
            with self._stats_lock:
                self.retokenized += 1
                first = self.retokenized == 1
            if first:
                log.warning("engine read a text prompt as %s tokens, not the cloud's %d (another tokenisation of the "
                            "same text); echo rows are not used for such sequences", got, len(seq))
        return choice

    def _logprobs(self, seq: list[int], body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The reply's ``logprobs`` and whether the engine read the prompt as the same tokens."""
        if self.llama_cpp:  # never stop on an end token: that position's log-probs would be missing
            body = {**body, "logit_bias": dict.fromkeys(map(str, self.tokenizer.all_special_ids), -100.0)}
        choice = self._post(seq, body)
        lp = choice.get("logprobs")
        if not isinstance(lp, dict):
            raise EngineError(f"engine reply has no logprobs (got {type(lp).__name__})")
        return lp, bool(choice["fedcogen_aligned"])

    def token_id(self, key: str) -> int | None:
        """The cloud's token id of a log-prob key; None when a text key is not one token of its tokenizer."""
        if key.startswith("token_id:"):
            return int(key[len("token_id:"):])
        if self._vocab_map is None:
            self._vocab_map = dict(self.tokenizer.get_vocab())
        if key in self._vocab_map:
            return self._vocab_map[key]
        if key not in self._text_ids:
            ids = self.tokenizer(key, add_special_tokens=False)["input_ids"]
            self._text_ids[key] = ids[0] if len(ids) == 1 else None
        return self._text_ids[key]

    def _row(self, row: dict[str, float]) -> torch.Tensor:
        top: dict[int, float] = {}
        for key, value in row.items():
            tok = self.token_id(key)
            if tok is None:
                with self._stats_lock:
                    self.unmapped_keys += 1
                    first = self.unmapped_keys == 1
                if first:
                    log.warning("engine token %r is not one token of the cloud's tokenizer: dropped (ask the engine "
                                "for token ids: vLLM/SGLang return_tokens_as_token_ids)", key)
                continue
            top[tok] = float(value)
        if not top and not self.llama_cpp:
            raise EngineError(f"none of the engine's top log-prob keys is a token of the cloud's tokenizer: {row}")
        if not top:  # every key of its top-k rendered as "" (emoji bytes): no information, the device decides
            with self._stats_lock:
                self.empty_rows += 1
            return torch.full((self.vocab,), -math.log(self.vocab), dtype=torch.float32)
        return dense_logprobs(top, self.vocab)

    def _resolve_blank(self, prefix: list[int], row: dict[str, float]) -> dict[str, float]:
        """llama-cpp-python renders control tokens and incomplete UTF-8 bytes alike as ``""``: ask which.

        One more request after the same prefix, the tokens ranked above ``""`` biased away: if greedy decoding
        then stops at once, the best remaining token is an end-of-generation token and ``""`` is read as the
        end of turn; otherwise ``""`` was a byte of a longer character and is dropped."""
        row = dict(row)
        blank = row.pop("")
        above = {tok for key, value in row.items() if value >= blank and (tok := self.token_id(key)) is not None}
        choice = self._post(prefix, {"max_tokens": 1, "logit_bias": {str(t): -100.0 for t in sorted(above)}})
        with self._stats_lock:
            self.blank_probes += 1
        if choice.get("finish_reason") == "stop" and not choice.get("text"):
            row[f"token_id:{int(self.tokenizer.eos_token_id)}"] = blank
        else:
            with self._stats_lock:
                self.unmapped_keys += 1
        return row

    def score(self, seq: list[int], n: int, k: int) -> torch.Tensor:
        """Distributions after each of the last ``n`` tokens of ``seq`` ([n, V] log-probs)."""
        rows: list[Any] = []
        aligned = True
        if n == 1 or self.echo_ok:
            lp, aligned = self._logprobs(seq, {"max_tokens": 1, "logprobs": k, "echo": n > 1})
            rows = (lp.get("top_logprobs") or [])[-n:]  # echo: one per prompt token (the first None), then the new one
        if n > 1 and (not aligned or len(rows) < n or any(not row for row in rows)):
            if aligned and self.echo_ok:
                log.warning("engine returns no prompt log-probs (echo); scoring drafts one position per request")
                self.echo_ok = False  # one request per draft position (the engine's prefix cache keeps each cheap)
            rows = [(self._logprobs(seq[: len(seq) - n + 1 + i], {"max_tokens": 1, "logprobs": k})[0]
                     .get("top_logprobs") or [None])[0] for i in range(n)]
        if len(rows) < n or any(not row for row in rows):
            raise EngineError(f"engine returned log-probs for {len(rows)} of {n} needed positions")
        if self.llama_cpp:  # row i is the distribution after seq[: len(seq) - n + 1 + i]
            rows = [self._resolve_blank(seq[: len(seq) - n + 1 + i], row) if "" in row else row
                    for i, row in enumerate(rows)]
        return torch.stack([self._row(row) for row in rows])

    def generate(self, prompt: list[int], max_new: int, stop: frozenset[int]) -> list[int]:
        if self.llama_cpp:  # it stops on end tokens itself and its token keys are texts: read the text back
            choice = self._post(prompt, {"max_tokens": max_new})  # (no log-probs: each costs it a full sort)
            return list(self.tokenizer(choice.get("text") or "", add_special_tokens=False)["input_ids"])[:max_new]
        choice = self._post(prompt, {"max_tokens": max_new, "logprobs": 1})
        out = []
        for t in (choice.get("logprobs") or {}).get("tokens") or []:
            tok = self.token_id(t)
            if tok is None:
                raise EngineError(f"engine token {t!r} is not one token of the cloud's tokenizer")
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
