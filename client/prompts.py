"""Temporary alias of :mod:`fedcogen.prompts` for ``simulations/data.py`` until its rewrite lands.

The prompts moved to the core package because the cloud (server) formats its prompts with them too.
"""

from fedcogen.prompts import *  # noqa: F403
from fedcogen.prompts import CLOUD_SYSTEM, DEVICE_SYSTEM, SKETCH_SYSTEM  # noqa: F401
