"""Fusion of the device's and the cloud's next-token distributions (CoGenesis logit variant).

Fixed weight: ``log p ∝ w·log p_small + (1−w)·log p_large`` (a weighted product of experts,
renormalised). ``w = 1`` is the device alone, ``w = 0`` the cloud alone.

Learned gate (as the paper's released code): ``w = sigmoid(MLP(features))`` per token and
``z = w·z_small + (1−w)·z_large`` on log-prob vectors. The cloud's vector is rebuilt from top-k +
missing mass (see ``protocols.logit_codec``). The MLP sees a handful of summary features of each side
(top log-probs, entropy, top-2 margin, how much each side likes the other's favourite), never the
49k-wide vectors, so it has ~300 parameters: cheap to train on a phone and small enough to federate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

N_TOP = 4
N_FEATURES = 2 * N_TOP + 2 * 2 + 2 + 1


def fuse_logprobs(lp_small: torch.Tensor, lp_large: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """Normalised log-probs of the weighted log-linear combination (works on [..., V])."""
    return torch.log_softmax(weight * lp_small + (1.0 - weight) * lp_large, dim=-1)


def entropy(lp: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of a log-prob vector ([..., V] -> [...])."""
    return -(lp.exp() * lp).sum(dim=-1)


def top2_margin(lp: torch.Tensor) -> torch.Tensor:
    """p(top1) − p(top2): small margin = the model hesitates between two tokens."""
    top = torch.topk(lp, 2, dim=-1).values.exp()
    return top[..., 0] - top[..., 1]


def gate_features(lp_small: torch.Tensor, lp_large: torch.Tensor) -> torch.Tensor:
    """Summary features of the two distributions ([..., V] each -> [..., N_FEATURES])."""
    ts = torch.topk(lp_small, N_TOP, dim=-1)
    tl = torch.topk(lp_large, N_TOP, dim=-1)
    small_likes_large = lp_small.gather(-1, tl.indices[..., :1])
    large_likes_small = lp_large.gather(-1, ts.indices[..., :1])
    agree = (ts.indices[..., :1] == tl.indices[..., :1]).float()
    feats = [
        ts.values.clamp(min=-30) / 10,
        tl.values.clamp(min=-30) / 10,
        entropy(lp_small).unsqueeze(-1) / 5,
        entropy(lp_large).unsqueeze(-1) / 5,
        top2_margin(lp_small).unsqueeze(-1),
        top2_margin(lp_large).unsqueeze(-1),
        small_likes_large.clamp(min=-30) / 10,
        large_likes_small.clamp(min=-30) / 10,
        agree,
    ]
    return torch.cat(feats, dim=-1)


class FusionGate(torch.nn.Module):
    """``w = sigmoid(MLP(features))``: how much to trust the device model at this position."""

    def __init__(self, hidden: int = 16, init_weight: float = 0.5) -> None:
        super().__init__()
        self.hidden = hidden
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )
        with torch.no_grad():  # start as the fixed-weight fusion with init_weight
            self.mlp[2].weight.mul_(0.1)
            self.mlp[2].bias.fill_(float(torch.logit(torch.tensor(init_weight))))

    def weight(self, lp_small: torch.Tensor, lp_large: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(gate_features(lp_small, lp_large)))

    def forward(self, lp_small: torch.Tensor, lp_large: torch.Tensor) -> torch.Tensor:
        """Fused, normalised log-probs ([..., V])."""
        w = self.weight(lp_small, lp_large)
        return torch.log_softmax(w * lp_small + (1 - w) * lp_large, dim=-1)

    def save(self, path: str | Path) -> None:
        torch.save({"hidden": self.hidden, "state_dict": self.state_dict(), "n_features": N_FEATURES}, path)

    @classmethod
    def load(cls, path: str | Path) -> FusionGate:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"fusion gate file not found: {path}")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("n_features") != N_FEATURES:
            raise ValueError(f"gate {path} expects {blob.get('n_features')} features, this code makes {N_FEATURES}")
        gate = cls(hidden=int(blob["hidden"]))
        gate.load_state_dict(blob["state_dict"])
        gate.eval()
        return gate


@dataclass
class GateTrainConfig:
    epochs: int = 30
    lr: float = 0.02
    seed: int = 0


def fit_gate(
    lp_small: Sequence[torch.Tensor] | torch.Tensor,
    lp_large: Sequence[torch.Tensor] | torch.Tensor,
    targets: Sequence[int] | torch.Tensor,
    config: GateTrainConfig | None = None,
    gate: FusionGate | None = None,
) -> tuple[FusionGate, dict[str, float]]:
    """Train a gate with cross-entropy of the fused distribution on target tokens (full batch, Adam).

    Returns the gate and {"loss_before", "loss_after", "positions"}.
    """
    cfg = config or GateTrainConfig()
    s = torch.stack(list(lp_small)) if not isinstance(lp_small, torch.Tensor) else lp_small
    c = torch.stack(list(lp_large)) if not isinstance(lp_large, torch.Tensor) else lp_large
    y = torch.as_tensor(targets, dtype=torch.long)
    if s.shape != c.shape or s.shape[0] != y.shape[0]:
        raise ValueError(f"shapes differ: small {tuple(s.shape)}, large {tuple(c.shape)}, targets {tuple(y.shape)}")
    torch.manual_seed(cfg.seed)
    gate = gate or FusionGate()
    gate.train()
    feats = gate_features(s, c).detach()
    s, c = s.detach(), c.detach()

    def loss_fn() -> torch.Tensor:
        w = torch.sigmoid(gate.mlp(feats))
        fused = torch.log_softmax(w * s + (1 - w) * c, dim=-1)
        return torch.nn.functional.nll_loss(fused, y)

    opt = torch.optim.Adam(gate.parameters(), lr=cfg.lr)
    with torch.no_grad():
        before = float(loss_fn())
    for _ in range(cfg.epochs):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    gate.eval()
    with torch.no_grad():
        after = float(loss_fn())
    return gate, {"loss_before": before, "loss_after": after, "positions": int(y.shape[0])}
