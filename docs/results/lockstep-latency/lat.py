"""Per-variant cost of one lockstep batch (the demo's shape): an in-process ``smollm2`` cloud over loopback gRPC
and a ``smollm2-27l`` device. Prints wall seconds AND the process's CPU seconds (cloud + device threads; torch on
``THREADS`` threads, default 1, so that no OpenMP thread spins while a shared machine deschedules its twin).

usage (from the source tree):
    fedcogen data generate --out /tmp/fed --users 8 --test-tasks 4 --train-tasks 1 --val-tasks 1
    DATA=/tmp/fed python docs/results/lockstep-latency/lat.py N_TASKS MAX_NEW_TOKENS RUN[,RUN...]
where RUN = variant[@setting=value...] with DeviceConfig settings, e.g. device,logit,logit@draft_tokens=0,gated
"""

import json
import os
import sys
import time

import torch

from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.models import load_model
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server


def main() -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    n, toks, runs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    data = os.environ["DATA"]
    tasks = [json.loads(line) for line in open(f"{data}/test.jsonl")][:n]
    profiles = {p["user_id"]: p for p in (json.loads(line) for line in open(f"{data}/profiles.jsonl"))}
    print("threads:", torch.get_num_threads(), flush=True)
    srv = start_cloud_server(CloudConfig(model="smollm2", insecure=True, max_batch=max(n, 2), batch_window_ms=10))
    device_lm = load_model("smollm2-27l")
    items = [(t["instruction"], t["private_context"]) for t in tasks]
    values = [profiles.get(t["user_id"], {}).get("private_values", []) for t in tasks]
    out = {}
    try:
        warm = CogenDevice(DeviceConfig(device_model="smollm2-27l", cloud=srv.address, insecure=True,
                                        max_new_tokens=4), device_lm=device_lm)
        warm.generate_batch(items[:1], "device")  # imports and first forwards stay out of the figures
        warm.generate_batch(items[:1], "gated", values[:1])
        warm.close()
        for run in runs:
            variant, *settings = run.split("@")
            extra = {k: type(getattr(DeviceConfig, k))(v) for k, v in (x.split("=") for x in settings)}
            dev = CogenDevice(DeviceConfig(device_model="smollm2-27l", cloud=srv.address, insecure=True,
                                           max_new_tokens=toks, sketch_max_new_tokens=48, **extra), device_lm=device_lm)
            w0, c0 = time.perf_counter(), time.process_time()
            ans = dev.generate_batch(items, variant, values)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            dev.close()
            out[run] = dict(wall_s=round(wall, 2), cpu_s=round(cpu, 2), tokens=sum(a.tokens for a in ans), rows=len(ans),
                            round_trips=sum(a.cloud_round_trips for a in ans), calls=sum(a.cloud_calls for a in ans),
                            fell_back=sum(a.fell_back for a in ans), ids=[a.token_ids for a in ans])
            shown = {k: v for k, v in out[run].items() if k != "ids"}
            print(run, shown, f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        srv.stop(grace=1)
    base = out.get("device")
    for run, r in out.items():
        same = f" same tokens as logit: {r['ids'] == out['logit']['ids']}" if run.startswith("logit") and "logit" in out else ""
        if base:
            print(f"{run:28s} cpu x device {r['cpu_s'] / base['cpu_s']:.2f}  "
                  f"wall x device {r['wall_s'] / base['wall_s']:.2f}{same}")


if __name__ == "__main__":
    main()
