"""Training the learned fusion gate and calibrating the gated variant's threshold, on the device's data."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedcogen.client.cogen.cogen_device import CogenDevice
from fedcogen.client.cogen.fusion import FusionGate, GateTrainConfig, entropy, fit_gate
from fedcogen.client.cogen.incremental_lm import IncrementalLM


def train_gate(
    device: CogenDevice,
    examples: Sequence[dict[str, str]],
    epochs: int = 30,
    lr: float = 0.02,
    max_target_tokens: int = 48,
) -> tuple[FusionGate, dict[str, float]]:
    """Train the learned fusion gate on PUBLIC examples (the cloud sees each instruction and target).

    ``examples``: dicts with ``instruction``, ``private_context``, ``target``. The device computes its
    own distributions (with context) teacher-forced on the target; the cloud returns its distributions
    for the same prefixes over ``Decode`` (it sees instruction + answer prefix, never the context).
    Never pass a user's own tasks: their targets are private. ``client.public_gate.train_public_gate``
    (``fedcogen gate train``) screens fake users' tasks on the device and then calls this.
    """
    dev = IncrementalLM(device.lm.model)
    small, large, targets = [], [], []
    for ex in examples:
        target_ids = device.tokenizer(ex["target"], add_special_tokens=False)["input_ids"][:max_target_tokens]
        if not target_ids:
            continue
        small.append(dev.teacher_forced(device.device_ids(ex["instruction"], ex["private_context"]), target_ids))
        large.append(torch.stack(device.cloud_teacher_forced(ex["instruction"], target_ids)))
        targets.extend(target_ids)
    if not targets:
        raise ValueError("train_gate needs at least one example with a non-empty target")
    return fit_gate(torch.cat(small), torch.cat(large), targets, GateTrainConfig(epochs=epochs, lr=lr))


def calibrate_gate_threshold(
    device: CogenDevice, examples: Sequence[tuple[str, str]], call_share: float
) -> float:
    """Entropy threshold at which the gated variant asks the cloud for about ``call_share`` of tokens.

    Measured on the device alone: it answers its own validation tasks ``(instruction, private_context)``
    device-only, and the threshold is the (1 - share) quantile of its next-token entropies along those
    answers, the distribution the gate sees when it decodes. Nothing leaves the device.
    """
    if not 0.0 < call_share < 1.0:
        raise ValueError(f"call share must be in (0, 1), got {call_share}")
    answers = device.generate_batch(list(examples), "device")
    dev = IncrementalLM(device.lm.model)
    values = [entropy(dev.teacher_forced(device.device_ids(instr, ctx), res.token_ids))
              for (instr, ctx), res in zip(examples, answers, strict=True) if res.token_ids]
    if not values:
        raise ValueError("gate calibration needs at least one example the device answers with a token")
    return float(torch.quantile(torch.cat(values).float(), 1.0 - call_share))
