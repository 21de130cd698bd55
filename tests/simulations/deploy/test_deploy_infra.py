"""Certificates, node keys, the process supervisor, and a real TLS + node-auth Flower deployment.

The deployment tests start real ``flower-superlink`` / ``flower-supernode`` processes on loopback
with the model-free probe app (seconds, not minutes) and check that every process is gone after.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedcogen.cli import build_parser
from fedcogen.cli.deploy import app_config_keys, fedcogen_run_config
from fedcogen.simulations import deploy as dp
from fedcogen.simulations.deploy.certs import create_cert_bundle, load_bundle
from fedcogen.simulations.deploy.deployment import flwr_run_args


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------------ certs


def test_cert_bundle_layout_permissions_and_trust(tmp_path: Path) -> None:
    from cryptography import x509
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    out = tmp_path / "certs"
    bundle = create_cert_bundle(out, nodes=3, hosts="127.0.0.1,localhost,link.example")
    assert bundle.nodes == 3
    assert _mode(out) == 0o700
    for sub in ("ca", "superlink", "cloud", "device", "nodes"):
        assert _mode(out / sub) == 0o700, sub
    for key in [out / "ca/ca.key", bundle.superlink_key, out / "cloud/server.key", out / "device/client.key",
                *bundle.node_private_keys]:
        assert _mode(key) == 0o600, key

    index = json.loads((out / "index.json").read_text())
    listed = {e["path"] for e in index["files"]}
    assert "nodes/node-2" in listed and "nodes/node-2.pub" in listed and "superlink/server.crt" in listed
    assert index["hosts"] == ["127.0.0.1", "localhost", "link.example"]

    # server certificate: signed by the CA, valid for every host asked for
    ca = x509.load_pem_x509_certificate(bundle.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(bundle.superlink_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "link.example" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    # node keys: exactly what flower-supernode / `flwr supernode register` load
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    priv = load_ssh_private_key(bundle.node_private_keys[0].read_bytes(), None)
    pub_bytes = try_load_public_key(bundle.node_public_keys[0])
    assert pub_bytes == public_key_to_bytes(priv.public_key())
    assert pub_bytes != try_load_public_key(bundle.node_public_keys[1])  # distinct keys per node

    assert load_bundle(out).node_public_keys == bundle.node_public_keys


def test_cert_bundle_refuses_overwrite_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    first = create_cert_bundle(out, nodes=1)
    ca_before = first.ca_cert.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        create_cert_bundle(out, nodes=1)
    assert first.ca_cert.read_bytes() == ca_before
    second = create_cert_bundle(out, nodes=2, force=True)
    assert second.ca_cert.read_bytes() != ca_before
    assert second.nodes == 2


def test_certs_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedcogen.cli import main

    assert main(["certs", "--out", str(tmp_path / "c"), "--nodes", "1", "--hosts", "127.0.0.1"]) == 0
    assert (tmp_path / "c/nodes/node-0.pub").is_file()
    assert main(["certs", "--out", str(tmp_path / "c")]) == 2  # exists: one clear error line
    assert "--force" in capsys.readouterr().err
    assert main(["certs", "--out", str(tmp_path / "d"), "--hosts", " , "]) == 2


def test_load_bundle_names_missing_file(tmp_path: Path) -> None:
    bundle = create_cert_bundle(tmp_path / "c", nodes=1)
    bundle.node_private_keys[0].unlink()
    with pytest.raises(FileNotFoundError, match="node-0"):
        load_bundle(tmp_path / "c")


# ------------------------------------------------------------------------------------ supervisor

_TREE_SCRIPT = textwrap.dedent(
    """
    import signal, subprocess, sys, time, socket
    # a helper in a NEW SESSION, like flower-superexec: killing our process group misses it
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    print("child", child.pid, flush=True)
    if len(sys.argv) > 1 and sys.argv[1] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if len(sys.argv) > 2:
        s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[2]))); s.listen()
    print("ready", flush=True)
    time.sleep(600)
    """
)


def _child_pid(proc: dp.ManagedProcess) -> int:
    proc.wait_for_log(r"(?m)^child \d+", timeout=30)
    return int(re.search(r"(?m)^child (\d+)", proc.read_log()).group(1))


def test_managed_process_stops_whole_tree_including_other_sessions(tmp_path: Path) -> None:
    port = dp.free_port()
    proc = dp.ManagedProcess("tree", [sys.executable, "-c", _TREE_SCRIPT, "x", str(port)], tmp_path / "tree.log",
                             ready_port=port, ready_pattern="ready")
    proc.start().wait_ready(30)
    child = _child_pid(proc)
    assert dp.alive(child)
    assert child in proc.track()
    proc.stop(timeout=5)
    assert not proc.running and not dp.alive(child)
    assert not dp.port_open("127.0.0.1", port)
    # restart gives a fresh process on the same command; the log keeps both starts
    proc.start().wait_ready(30)
    assert proc.starts == 2 and proc.read_log(since_start=False).count("===== fedcogen: start") == 2
    proc.kill()
    assert not proc.running


def test_managed_process_sigkills_after_timeout_when_sigterm_ignored(tmp_path: Path) -> None:
    proc = dp.ManagedProcess("stubborn", [sys.executable, "-c", _TREE_SCRIPT, "ignore-term"], tmp_path / "s.log",
                             ready_pattern="ready")
    proc.start().wait_ready(30)
    child = _child_pid(proc)
    started = time.monotonic()
    proc.stop(timeout=1.0)
    assert time.monotonic() - started < 20
    assert proc.returncode == -9  # it ignored SIGTERM, so it was SIGKILLed
    assert not dp.alive(child)


def test_wait_ready_fails_fast_with_log_tail(tmp_path: Path) -> None:
    proc = dp.ManagedProcess("dies", [sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"],
                             tmp_path / "d.log", ready_port=dp.free_port())
    proc.start()
    with pytest.raises(dp.DeploymentError, match=r"exited with code 3[\s\S]*boom: bad flag"):
        proc.wait_ready(60)


def test_stop_all_cleans_up_forgotten_processes(tmp_path: Path) -> None:
    proc = dp.ManagedProcess("forgotten", [sys.executable, "-c", _TREE_SCRIPT], tmp_path / "f.log",
                             ready_pattern="ready")
    proc.start().wait_ready(30)
    child = _child_pid(proc)
    dp.stop_all(timeout=5)  # what atexit / the SIGTERM handler run
    assert not proc.running and not dp.alive(child)


def test_format_run_config_quotes_and_rejects_spaces() -> None:
    assert dp.format_run_config({"a": 1, "b": 0.5, "c": True, "d": "tiny"}) == ["a=1", "b=0.5", "c=true", 'd="tiny"']
    with pytest.raises(ValueError, match="spaces"):
        dp.format_run_config({"path": "/a b"})


def test_deployment_config_validation(tmp_path: Path) -> None:
    app = dp.write_probe_app(tmp_path / "app")
    with pytest.raises(ValueError, match="requires TLS"):
        dp.DeploymentConfig(out_dir=tmp_path / "o", app_dir=app, tls=False, node_auth=True)
    with pytest.raises(ValueError, match="loopback"):
        dp.DeploymentConfig(out_dir=tmp_path / "o", app_dir=app, host="0.0.0.0")
    with pytest.raises(FileNotFoundError, match="pyproject"):
        dp.DeploymentConfig(out_dir=tmp_path / "o", app_dir=tmp_path)


# ------------------------------------------------------------------------- real Flower deployment


def _all_pids(dep: dp.Deployment) -> list[int]:
    pids: list[int] = []
    for proc in dep.all_processes():
        if proc.pid:
            pids.append(proc.pid)
        pids.extend(proc.track())
    return pids


@pytest.mark.slow
def test_tls_node_auth_deployment_refuses_intruders(tmp_path: Path) -> None:
    """SuperLink (TLS + node auth) + 2 registered SuperNodes run 2 rounds; strangers are refused."""
    from fedcogen.protocols.security.node_keys import make_node_keypair

    app = dp.write_probe_app(tmp_path / "app")
    cfg = dp.DeploymentConfig(out_dir=tmp_path / "dep", nodes=2, app_dir=app)
    with dp.Deployment(cfg) as dep:
        dep.start()
        assert len(set(dep.node_ids.values())) == 2
        pids = _all_pids(dep)

        # 1. an unregistered key is refused at activation (Flower exit code 305), link unaffected
        stranger = make_node_keypair(tmp_path / "stranger", "intruder")
        intruder = dep.start_supernode(0, wait=False, name="intruder", private_key=stranger.private_key)
        assert intruder.wait(timeout=90) != 0
        assert "Failed to activate SuperNode" in intruder.read_log()

        # 2. a plaintext SuperNode (no TLS) cannot talk to the TLS SuperLink
        plain = dep.start_supernode(1, wait=False, name="plaintext", insecure=True, extra_args=["--max-retries", "1"])
        assert plain.wait(timeout=90) != 0
        assert "could not establish a connection" in plain.read_log()

        # 3. a raw plaintext HTTP request on the SuperLink port gets no HTTP answer
        with socket.create_connection(("127.0.0.1", dep.superlink_port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            try:
                answer = s.recv(100)
            except (TimeoutError, ConnectionResetError):
                answer = b""
        assert not answer.startswith(b"HTTP/1.1 200")

        # 4. the CLI with a wrong trust anchor is refused: TLS verification fails
        other_ca = create_cert_bundle(tmp_path / "other", nodes=0)
        ctx = ssl.create_default_context(cafile=str(other_ca.ca_cert))
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection(("127.0.0.1", dep.superlink_port), timeout=5) as s:
                ctx.wrap_socket(s, server_hostname="127.0.0.1")

        # the registered nodes still train: 2 rounds, both partitions in every round
        result_file = tmp_path / "result.json"
        run_id = dep.submit_run({"num-server-rounds": 2, "min-nodes": 2, "result-file": str(result_file)})
        status = dep.wait_run(run_id, timeout=240, progress=False, watch=[dep.superlink, *dep.supernodes.values()])
        assert status.completed, status.raw
        result = json.loads(result_file.read_text())
        # round 1: mean(0+1, 0+2) = 1.5; round 2: mean(1.5+1, 1.5+2) = 3.0
        assert result["final"] == [3.0, 3.0, 3.0]
        assert dep.rounds_seen(run_id) == 2
        for k in range(2):
            assert "SuperNode ID" in dep.supernodes[k].read_log()
        assert "Uvicorn running on https://" in dep.superlink.read_log()
    assert pids and not [p for p in pids if dp.alive(p)], "processes left behind"
    assert not dp.port_open("127.0.0.1", dep.superlink_port)


def test_print_commands_cover_both_machines(capsys: pytest.CaptureFixture[str]) -> None:
    from fedcogen.cli import main

    assert main(["deploy", "print-commands", "--superlink-host", "10.1.2.3", "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "flower-superlink" in out and "--enable-supernode-auth" in out and "--ssl-certfile" in out
    assert out.count("flwr supernode register") == 2
    assert "--auth-supernode-private-key certs/nodes/node-1" in out and "partition-id=1" in out
    assert "--superlink 10.1.2.3:9092" in out and "--root-certificates certs/device/ca.crt" in out


@pytest.mark.slow
def test_deploy_local_cli_probe_writes_report_and_cleans_up(tmp_path: Path) -> None:
    from fedcogen.cli import main

    out = tmp_path / "run"
    assert main(["deploy", "local", "--app", "probe", "--nodes", "2", "--rounds", "1", "--out", str(out),
                 "--no-progress"]) == 0
    report = json.loads((out / "deploy-result.json").read_text())
    assert report["status"] == "finished:completed"
    assert json.loads((out / "probe-result.json").read_text())["rounds"][0]["replied"] == [0, 1]
    procs = report["deployment"]["processes"]
    assert {"superlink", "supernode-0", "supernode-1"} <= set(procs)
    assert all(not p["running"] for p in procs.values())
    assert not [p["pid"] for p in procs.values() if dp.alive(p["pid"])]
    assert (out / "logs" / "superlink.log").is_file() and "status: **finished:completed**" in (
        out / "deploy-report.md").read_text()


def test_deploy_local_run_config_keys_are_all_app_config_keys_and_overwrite_is_passed(tmp_path):
    """Flower rejects --run-config keys the app does not declare: every key deploy local sends must be one."""
    cfg = fedcogen_run_config(tmp_path, nodes=2, rounds=1, model="tiny", seed=0, min_fit=2, overwrite=True)
    assert cfg["output.overwrite"] is True
    assert set(cfg) <= set(app_config_keys(Path(__file__).resolve().parents[3]))
    args = build_parser().parse_args(["deploy", "local", "--overwrite", "--out", str(tmp_path)])
    assert args.overwrite is True


def test_a_submitted_run_keeps_every_grouped_key() -> None:
    """Flower merges several --run-config items one level deep: `output.dir` then `output.resume` kept only the
    second, so a deployment's resumed run wrote to the default folder. One item holds them all."""
    cfg = {"output.dir": "/tmp/a", "output.resume": True, "strategy.rounds": 2, "strategy.num-clients": 3}
    args = flwr_run_args(Path("/app"), "fed", cfg)
    assert args[:3] == ["run", "/app", "fed"] and args.count("--run-config") == 1
    assert parse_config_args(args[args.index("--run-config") + 1:]) == cfg
    assert flwr_run_args(Path("/app"), "fed", {}) == ["run", "/app", "fed"]
