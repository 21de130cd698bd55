"""Fixtures the CoGenesis device tests share: the random ``tiny`` device model and a ``tiny-large`` cloud on
loopback (one per test module; a module that needs other cloud settings defines its own ``server``)."""

from __future__ import annotations

import pytest

from fedcogen.models import load_model
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server


@pytest.fixture(scope="module")
def device_lm():
    return load_model("tiny")


@pytest.fixture(scope="module")
def server():
    srv = start_cloud_server(CloudConfig(model="tiny-large", insecure=True), lm=load_model("tiny-large"))
    yield srv
    srv.stop(grace=1)
