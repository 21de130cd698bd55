"""TEMPORARY import path for simulations/deploy.py (helper A's file) until the merge; the bundle lives in
:mod:`fedcogen.simulations.certs`. Delete once deploy.py imports from there."""

from fedcogen.simulations.certs import create_cert_bundle, load_bundle  # noqa: F401
