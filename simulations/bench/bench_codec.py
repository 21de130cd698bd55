"""Benchmark of the sparse update codec: index bits vs log2 C(n, k) and encode/decode speed."""

from __future__ import annotations

import time

import numpy as np

from fedcogen.protocols.codecs.index_coding import coding_sizes
from fedcogen.protocols.codecs.sparse_codec import (
    CodecConfig,
    blob_stats,
    decode_sparse,
    encode_sparse,
    topk_sparsify,
)


def run_benchmark(
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    densities: tuple[float, ...] = (0.001, 0.01, 0.1),
    seed: int = 0,
    repeats: int = 5,
) -> dict:
    """Index-coding efficiency (vs log2 C(n,k)) and encode+decode speed on random supports."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        for dens in densities:
            t = {"w": rng.standard_normal(n).astype(np.float32)}
            cfg = CodecConfig(density=dens, quant="int8", index_coding="auto")
            sparse = topk_sparsify(t, cfg)
            st = blob_stats(encode_sparse(sparse, cfg), {"w": (n,)})
            payload = coding_sizes(sparse["w"].indices, n)
            rows.append(
                {"n": n, "density": dens, "k": st["k"], "chosen": st["tensors"][0]["coding"],
                 "bitmap_bits": 8 * payload["bitmap"], "delta_varint_bits": 8 * payload["delta_varint"],
                 "rice_bits": 8 * payload["rice"], "bound_bits": round(st["bound_bits"], 1),
                 "index_bits_over_bound": round(st["index_bits_over_bound"], 4),
                 "blob_bytes": st["total_bytes"]}
            )
    ratios = [r["index_bits_over_bound"] for r in rows]
    # speed: a LoRA-like dict of 500k entries at 1 % density, int8 + auto
    shapes = {f"layer{i}.lora_{ab}": (8, 3125) if ab == "A" else (3125, 8) for i in range(10) for ab in "AB"}
    upd = {nm: rng.standard_normal(s).astype(np.float32) for nm, s in shapes.items()}
    cfg = CodecConfig(density=0.01)
    sparse = topk_sparsify(upd, cfg)
    enc = dec = sel = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sparse = topk_sparsify(upd, cfg)
        t1 = time.perf_counter()
        blob = encode_sparse(sparse, cfg, shapes)
        t2 = time.perf_counter()
        decode_sparse(blob, shapes)
        t3 = time.perf_counter()
        sel, enc, dec = min(sel, t1 - t0), min(enc, t2 - t1), min(dec, t3 - t2)
    return {
        "repeats": repeats,
        "coding_rows": rows,
        "mean_index_bits_over_bound": round(float(np.mean(ratios)), 4),
        "max_index_bits_over_bound": round(float(np.max(ratios)), 4),
        "speed_500k_1pct": {
            "entries": sum(int(np.prod(s)) for s in shapes.values()),
            "tensors": len(shapes),
            "blob_bytes": len(blob),
            "topk_s": round(sel, 5),
            "encode_s": round(enc, 5),
            "decode_s": round(dec, 5),
            "encode_plus_decode_s": round(enc + dec, 5),
        },
    }


def markdown(result: dict) -> str:
    """The benchmark as a markdown table plus the speed line."""
    lines = [
        "| n | density | k | bitmap bits | delta_varint bits | rice bits | log2 C(n,k) | auto chose | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["coding_rows"]:
        lines.append(
            f"| {r['n']} | {r['density']} | {r['k']} | {r['bitmap_bits']} | {r['delta_varint_bits']} "
            f"| {r['rice_bits']} | {r['bound_bits']} | {r['chosen']} | {r['index_bits_over_bound']} |"
        )
    sp = result["speed_500k_1pct"]
    lines += [
        "",
        f"Index bits / log2 C(n,k) (auto, incl. parameter byte and padding): mean "
        f"{result['mean_index_bits_over_bound']}, max {result['max_index_bits_over_bound']}",
        "",
        f"Speed, {sp['entries']} entries in {sp['tensors']} tensors at 1 % density, int8: top-k {sp['topk_s']} s, "
        f"encode {sp['encode_s']} s, decode {sp['decode_s']} s (best of {result['repeats']}), "
        f"blob {sp['blob_bytes']} bytes",
    ]
    return "\n".join(lines)
