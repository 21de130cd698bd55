"""The cloud's bearer token never travels on a command line (issue #12 E)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from fedcogen.client.cogen.cloud_client import CloudClient, CloudRefused
from fedcogen.protocols.security import tls
from fedcogen.protocols.security.secrets_io import (
    SecretError,
    read_secret_file,
    resolve_token,
    write_secret_file,
)
from fedcogen.simulations.federation.processes import spawned_cloud


def test_token_file_must_be_owner_only(tmp_path: Path) -> None:
    path = write_secret_file(tmp_path / "token", "s3cret\n")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert read_secret_file(path) == "s3cret"
    os.chmod(path, 0o644)
    with pytest.raises(SecretError, match="0644.*must be 0600"):
        read_secret_file(path)
    empty = write_secret_file(tmp_path / "empty", "  \n")
    with pytest.raises(SecretError, match="empty"):
        read_secret_file(empty)


def test_resolve_token_prefers_file_warns_on_cli_and_falls_back_to_env(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("FEDCOGEN_CLOUD_TOKEN", "from-env")
    path = write_secret_file(tmp_path / "token", "from-file")
    assert resolve_token(path, None) == "from-file"
    assert resolve_token(None, None) == "from-env"
    with caplog.at_level(logging.WARNING):
        assert resolve_token(None, "from-cli") == "from-cli"
    assert "visible" in caplog.text
    with pytest.raises(SecretError, match="not both"):
        resolve_token(path, "from-cli")
    monkeypatch.delenv("FEDCOGEN_CLOUD_TOKEN")
    assert resolve_token(None, None) is None


def test_spawned_cloud_gets_token_from_environment_not_argv(tmp_path: Path) -> None:
    tls.ensure_dev_certs(tmp_path / "tls")
    token = "tok-" + os.urandom(8).hex()
    with spawned_cloud("tiny-large", tls_dir=tmp_path / "tls", token=token, timeout_s=180,
                       log_path=tmp_path / "cloud.log") as cloud:
        argv = cloud.process.args
        assert "--token" not in argv and token not in " ".join(map(str, argv))
        cmdline = Path(f"/proc/{cloud.process.pid}/cmdline").read_bytes()
        assert token.encode() not in cmdline  # what `ps` shows every local user
        ok = CloudClient(cloud.address, tls_dir=str(tmp_path / "tls"), token=token)
        bad = CloudClient(cloud.address, tls_dir=str(tmp_path / "tls"), token="wrong")
        try:
            reply = ok.sketch("Say hi.", 2, timeout=60)
            assert reply.generated_tokens == 2  # served in full (2 asked): the token from the environment works
            with pytest.raises(CloudRefused) as err:
                bad.sketch("Say hi.", 2, timeout=60)
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        finally:
            ok.close()
            bad.close()


def test_cloud_serve_refuses_a_group_readable_token_file(tmp_path: Path) -> None:
    tls.ensure_dev_certs(tmp_path / "tls")
    path = write_secret_file(tmp_path / "token", "abc")
    os.chmod(path, 0o640)
    env = {k: v for k, v in os.environ.items() if k != "FEDCOGEN_CLOUD_TOKEN"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fedcogen.cli", "cloud", "serve", "--model", "tiny-large", "--port", "0",
         "--tls-dir", str(tmp_path / "tls"), "--token-file", str(path)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode != 0 and time.monotonic() - t0 < 120
    assert "must be 0600" in proc.stderr + proc.stdout
