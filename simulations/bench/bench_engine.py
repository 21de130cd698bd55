"""The cloud on a real serving engine (llama.cpp's server) beside the built-in scheduler.

``run_engine_bench(cfg)`` starts llama.cpp's OpenAI-compatible server on loopback
(:mod:`~fedcogen.simulations.deploy.llamacpp_engine`, the embedded SmolLM2 GGUF) and two clouds in this
process, both over TLS with a bearer token on loopback: one on the built-in PyTorch scheduler (the
same SmolLM2, dequantised to fp32) and one whose distributions come from the engine
(``--engine-url``, flavour ``llama-cpp-python``). A device then asks both, task by task and variant by
variant in alternating order (so load drift hits them alike):

* ``logit`` per token (``draft_tokens=0``), ``logit`` speculative (the default drafts), ``sketch``;
* per variant and cloud: tokens/s, wire bytes per token both ways, fallbacks, and how many of the engine
  answer's tokens equal the built-in answer's (``token_agreement``: matching positions over the longer
  answer's length; ``identical`` answers);
* ``top1``: teacher-forced on the built-in cloud's answers, the share of positions where the engine's
  top-1 token equals the built-in model's (the Q4_1 weights run in llama.cpp's kernels vs their fp32
  dequantisation in PyTorch);
* ``scoring``: the engine's cost of scoring a draft of ``draft`` tokens in one echo request vs one request
  per position (why the ``llama-cpp-python`` flavour scores per position).

Everything runs on one machine with one thread per side; figures are only comparable within one run.
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceAnswer, DeviceConfig
from fedcogen.models import chat_input_ids, load_model
from fedcogen.prompts import cloud_prompt
from fedcogen.protocols.security import tls
from fedcogen.provenance import provenance
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server
from fedcogen.server.cogen.engine_backend import EngineClient, EngineConfig
from fedcogen.simulations.deploy.llamacpp_engine import LlamaCppConfig, LlamaCppServer

log = logging.getLogger(__name__)

TASKS = [
    ("Write a short email to my manager asking to move our Friday meeting.",
     "Manager: Dana Whitcombe. Friday 10:00 one-to-one. I have a dentist appointment."),
    ("Write a birthday message to my sister.", "Sister: Mira, turning 30 on Saturday, loves hiking and bad puns."),
    ("Write a short note to my landlord about the broken heater.",
     "Landlord: Mr. Osei. Flat 4B, heater broken since Monday."),
    ("Summarise my week in three sentences.", "Mon: dentist. Tue: report due. Fri: dinner with Sam at 7."),
]
VARIANTS = (("logit_per_token", "logit", {"draft_tokens": 0}), ("logit_speculative", "logit", {}),
            ("sketch", "sketch", {}))


@dataclass
class EngineBenchConfig:
    cloud_model: str = "smollm2"
    device_model: str = "smollm2-27l"
    tasks: int = 3
    max_new_tokens: int = 32
    k: int = 20
    draft: int = 4  # draft length of the scoring-cost probe
    threads: int = 1  # torch threads here and llama.cpp threads in the engine

    def validate(self) -> None:
        if not 1 <= self.tasks <= len(TASKS):
            raise ValueError(f"tasks must be in 1..{len(TASKS)}, got {self.tasks}")
        if self.max_new_tokens < 1 or self.k < 1 or self.draft < 2 or self.threads < 1:
            raise ValueError("max_new_tokens, k and threads must be >= 1 and draft >= 2")


def token_agreement(a: list[int], b: list[int]) -> float:
    """Positions where two answers hold the same token, over the longer answer's length (1.0 when both empty)."""
    longest = max(len(a), len(b))
    return sum(x == y for x, y in zip(a, b, strict=False)) / longest if longest else 1.0


def _sums(answers: list[DeviceAnswer]) -> dict[str, float]:
    tokens = sum(a.tokens for a in answers)
    latency = sum(a.latency_s for a in answers)
    return {"tokens": tokens, "latency_s": round(latency, 3), "tokens_per_s": tokens / latency if latency else 0.0,
            "bytes_sent_per_token": sum(a.bytes_sent for a in answers) / max(1, tokens),
            "bytes_received_per_token": sum(a.bytes_received for a in answers) / max(1, tokens),
            "round_trips_per_token": sum(a.cloud_round_trips for a in answers) / max(1, tokens),
            "fell_back": sum(int(a.fell_back) for a in answers)}


@torch.inference_mode()
def top1_agreement(client: EngineClient, cloud_lm: Any, seqs: list[tuple[list[int], int]], k: int) -> dict[str, Any]:
    """Teacher-forced: the engine's top-1 vs the built-in model's at every generated position of ``seqs``."""
    same = total = 0
    for seq, prompt_len in seqs:
        logits = cloud_lm.model(input_ids=torch.tensor([seq])).logits[0]
        for pos in range(prompt_len, len(seq) + 1):
            engine = client.score(seq[:pos], 1, k)[0]
            same += int(int(engine.argmax()) == int(logits[pos - 1].argmax()))
            total += 1
    return {"positions": total, "agree": same, "rate": same / total if total else 0.0}


def scoring_cost(client: EngineClient, seq: list[int], draft: int, k: int) -> dict[str, float]:
    """Seconds to score the last ``draft`` positions of ``seq``: one echo request vs one request per position."""
    out: dict[str, float] = {}
    client.score(seq, 1, k)  # warm the engine's cache with this prefix
    for name, echo in (("echo_one_request_s", True), ("per_position_s", False)):
        client.echo_ok = echo
        t0 = time.perf_counter()
        rows = client.score(seq, draft, k)
        out[name] = time.perf_counter() - t0
        out[f"{name[:-2]}_rows"] = int(rows.shape[0])
    out["max_abs_diff_echo_vs_per_position"] = 0.0
    client.echo_ok = True
    a = client.score(seq, draft, k)
    client.echo_ok = False
    b = client.score(seq, draft, k)
    top = torch.topk(b, 5, dim=-1).indices
    out["max_abs_diff_echo_vs_per_position"] = float((a.gather(1, top) - b.gather(1, top)).abs().max())
    out["prompt_tokens"] = len(seq)
    return out


def run_engine_bench(cfg: EngineBenchConfig) -> dict[str, Any]:
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    cloud_lm, device_lm = load_model(cfg.cloud_model), load_model(cfg.device_model)
    token, engine_key = secrets.token_hex(16), secrets.token_hex(16)
    tasks = TASKS[: cfg.tasks]
    with tempfile.TemporaryDirectory(prefix="fedcogen-engine-bench-") as tmp:
        tls.ensure_dev_certs(tmp)
        t0 = time.perf_counter()
        engine = LlamaCppServer(LlamaCppConfig(api_key=engine_key, n_threads=cfg.threads)).start()
        engine_start_s = time.perf_counter() - t0
        common = dict(model=cfg.cloud_model, tls_dir=tmp, token=token, sketch_max_new_tokens=cfg.max_new_tokens)
        clouds = {
            "builtin": start_cloud_server(CloudConfig(**common), lm=cloud_lm),
            "engine": start_cloud_server(CloudConfig(**common, engine_url=engine.url, engine_model=engine.model_name,
                                                     engine_api_key=engine_key, engine_max_logprobs=cfg.k,
                                                     engine_flavour="llama-cpp-python"), lm=cloud_lm),
        }
        client = EngineClient(EngineConfig(engine.url, engine.model_name, engine_key, flavour="llama-cpp-python"),
                              cloud_lm.tokenizer, cloud_lm.vocab_size)
        answers: dict[tuple[str, str], list[DeviceAnswer]] = {}
        try:
            for i, (instruction, context) in enumerate(tasks):
                order = list(clouds) if i % 2 == 0 else list(clouds)[::-1]
                for name, variant, kw in VARIANTS:
                    for backend in order:
                        dev = CogenDevice(DeviceConfig(device_model=cfg.device_model, cloud=clouds[backend].address,
                                                       tls_dir=tmp, token=token, k=cfg.k,
                                                       max_new_tokens=cfg.max_new_tokens, **kw), device_lm=device_lm)
                        try:
                            answers.setdefault((name, backend), []).append(dev.generate(instruction, context, variant))
                        finally:
                            dev.close()
            variants: dict[str, Any] = {}
            for name, _, _ in VARIANTS:
                row = {backend: _sums(answers[name, backend]) for backend in clouds}
                pairs = list(zip(answers[name, "builtin"], answers[name, "engine"], strict=True))
                row["token_agreement"] = sum(token_agreement(a.token_ids, b.token_ids) for a, b in pairs) / len(pairs)
                row["identical_answers"] = sum(a.token_ids == b.token_ids for a, b in pairs)
                if name == "sketch":
                    row["identical_sketches"] = sum(a.sketch == b.sketch for a, b in pairs)
                row["texts"] = [{"builtin": a.text, "engine": b.text} for a, b in pairs]
                variants[name] = row
            seqs = []
            for (instruction, _), a in zip(tasks, answers["logit_per_token", "builtin"], strict=True):
                prompt = chat_input_ids(cloud_lm.tokenizer, cloud_prompt(instruction))
                seqs.append((prompt + a.token_ids, len(prompt)))
            top1 = top1_agreement(client, cloud_lm, seqs, cfg.k)
            cost = scoring_cost(client, seqs[0][0], cfg.draft, cfg.k)
            served = clouds["engine"].service.batcher.client  # the cloud's own engine client
            stats = {name: {"requests": c.requests, "unmapped_keys": c.unmapped_keys, "blank_probes": c.blank_probes,
                            "empty_rows": c.empty_rows, "retokenized": c.retokenized}
                     for name, c in (("cloud", served), ("measurements", client))}
        finally:
            client.close()
            for srv in clouds.values():
                srv.stop(grace=1)
            engine.stop()
    return {
        "what": "cloud on llama.cpp's server (llama-cpp-python) vs the built-in PyTorch scheduler, TLS + token on "
                "loopback, one machine, one thread per side",
        "config": asdict(cfg),
        "engine": {"package": "llama-cpp-python", "model": "SmolLM2-135M-Instruct.Q4_1.gguf (embedded)",
                   "start_s": round(engine_start_s, 2), "prompt_cache": True},
        "variants": variants,
        "top1": top1,
        "scoring": cost,
        "engine_client": stats,
        "provenance": provenance(settings=asdict(cfg)),
    }
