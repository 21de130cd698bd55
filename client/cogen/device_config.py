"""Device-side generation settings (``fedcogen generate`` flags map onto these)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedcogen.accelerator import check_setting
from fedcogen.client.cogen.decoding import RepetitionControl
from fedcogen.client.cogen.span_detector import SpanDetector
from fedcogen.protocols.codecs import logit_codec


@dataclass
class DeviceConfig:
    """Device-side generation settings (``fedcogen generate`` flags map onto these)."""

    device_model: str = "smollm2-24l"
    seed: int = 0
    # the accelerator the device model runs on: auto | cpu | cuda | cuda:N | mps (fedcogen.accelerator)
    device: str = "auto"
    adapter: str | None = None
    cloud: str | None = None
    tls_dir: str | None = None
    token: str | None = None
    insecure: bool = False
    # packed8 (uint16 ids + uint8 codes, k adapting to the cloud's spread) at k <= 32: ~110 B/token with
    # >= 99.5% top-1 agreement with full-vocabulary fusion for smollm2-24l/27l (docs/cogenesis-speed.md)
    k: int = 32
    encoding: str = "packed8"
    weight: float = 0.5
    # logit variant: > 0 = speculative rounds (device drafts up to this many tokens, the cloud scores them in
    # one forward; same tokens as per-token fusion under greedy decoding); 0 = one round trip per token.
    # Sampling, the full-vocabulary baseline and k > 1024 always run per token.
    draft_tokens: int = 8
    draft_min_p: float = 0.5  # draft only tokens the device gives at least this probability (speculative.py)
    # speculative rounds for lockstep batches of at most this many rows; larger batches fuse per token (same
    # tokens). Why: every lockstep draft forward costs the whole batch while most drafts are rejected, so for a
    # batch of 24 answers (smollm2-27l device, smollm2 cloud, 48 tokens) speculative rounds took 2.47x the CPU
    # of the device alone and per-token fusion 1.60x; for one answer speculative is 3-4% faster
    # (docs/cogenesis-speed.md)
    draft_max_batch: int = 1
    # a lockstep drafting round ends once fewer than this fraction of its rows still draft (every draft forward
    # costs the whole batch): 2.06x instead of 2.47x the device's CPU on that batch of 24; 0 = draft until the
    # last row stops
    draft_min_live: float = 0.5
    # draft_edit variant (client/cogen/decoders/draft_edit.py): the device keeps a cloud draft token while its
    # own probability of it is >= tau x its top token's (0 = keep the whole draft, > 1 = keep none: the device's
    # own greedy answer). 0.01: the best validation ROUGE-L of 0.003 / 0.01 / 0.03 / 0.1 / 0.3 with a personalised
    # smollm2-27l and the public-LoRA cloud (docs/results/draft-edit.md)
    draft_edit_tau: float = 0.01
    draft_edit_block: int = 16  # draft tokens scored per device forward at most (0 = the whole remaining draft)
    draft_edit_window: int = 8  # how far ahead in the draft a rewritten token may realign (grows as it writes)
    gate_path: str | None = None
    max_new_tokens: int = 160  # fits ~150-token references; trained devices stop at EOS well before
    max_prompt_tokens: int = 3072  # longer private contexts are shrunk (fit_context); SmolLM2 reads 8192
    repetition_penalty: float = RepetitionControl.penalty
    no_repeat_ngram: int = RepetitionControl.no_repeat_ngram
    sample: bool = False
    temperature: float = 1.0
    gated_metric: str = "entropy"  # or "margin"
    # entropy (nats) above / margin below this -> ask the cloud. 5.0 = the cloud for ~20% of tokens with the
    # default device smollm2-24l (`fedcogen gate calibrate`, docs/cogenesis-speed.md)
    gated_threshold: float = 5.0
    step_timeout_s: float = 20.0
    sketch_timeout_s: float = 120.0
    sketch_max_new_tokens: int = 96
    protect_private_spans: bool = True  # logit/gated: private tokens never go on the wire (client/cogen/private_spans.py)
    # what the guard treats as private in each context (detectors, the user's patterns and values)
    private_spans: SpanDetector = field(default_factory=SpanDetector)

    def validate(self) -> None:
        self.device = check_setting(self.device)
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"--weight must be in [0, 1] or 'learned', got {self.weight}")
        if self.gated_metric not in ("entropy", "margin"):
            raise ValueError(f"gated metric must be 'entropy' or 'margin', got {self.gated_metric}")
        logit_codec.CodecConfig(self.k, self.encoding).encoding_value()
        if self.draft_tokens < 0:
            raise ValueError(f"--draft-tokens must be >= 0 (0 = per-token fusion), got {self.draft_tokens}")
        if not 0.0 <= self.draft_min_p <= 1.0:
            raise ValueError(f"--draft-min-p must be in [0, 1], got {self.draft_min_p}")
        if self.draft_max_batch < 1:
            raise ValueError(f"draft_max_batch must be >= 1, got {self.draft_max_batch}")
        if not 0.0 <= self.draft_min_live <= 1.0:
            raise ValueError(f"draft_min_live must be in [0, 1], got {self.draft_min_live}")
        if not (self.draft_edit_tau >= 0.0 and math.isfinite(self.draft_edit_tau)):
            raise ValueError(f"draft_edit_tau must be a finite number >= 0, got {self.draft_edit_tau}")
        if self.draft_edit_block < 0:
            raise ValueError(f"draft_edit_block must be >= 0 (0 = the whole draft), got {self.draft_edit_block}")
        if self.draft_edit_window < 0:
            raise ValueError(f"draft_edit_window must be >= 0, got {self.draft_edit_window}")
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")

    def fit_vocabulary(self, vocab_size: int) -> str | None:
        """Switch ``packed8`` to ``fp16`` when the model pair's vocabulary needs ids above uint16.

        packed8 packets carry 16-bit token ids (the smallest packets, and the default); pairs with larger
        vocabularies (Qwen2.5: 151,665 tokens, Llama 3: 128,256) would be refused by the cloud at session
        open. Returns a line saying what changed, or None.
        """
        if self.encoding == "packed8" and vocab_size > logit_codec.PACKED_MAX_VOCAB:
            self.encoding = "fp16"
            return (f"packed8 packets index at most {logit_codec.PACKED_MAX_VOCAB} tokens and this model pair has "
                    f"{vocab_size}: using fp16 packets (k={self.k})")
        return None
