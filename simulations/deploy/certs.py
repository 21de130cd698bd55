"""Every certificate and key a fedcogen deployment needs, in one folder.

Why one command: a deployment has three trust relationships that are easy to get subtly wrong by
hand - SuperNodes verify the SuperLink's TLS certificate, devices verify the CoGenesis cloud
service's TLS certificate, and the SuperLink admits only SuperNodes whose public keys an operator
registered. The folder this writes is laid out by *destination machine*, so distributing it is
"copy this sub-folder there" and private keys never travel further than they must.

Layout (``index.json`` lists every file with its role and destination)::

    OUT/ca/ca.crt, ca.key                 operator only (ca.key signs; keep it offline)
    OUT/superlink/ca.crt, server.crt/.key SuperLink machine (--ssl-* flags)
    OUT/cloud/ca.crt, server.crt/.key     cloud service machine (fedcogen cloud serve --tls-dir)
    OUT/device/ca.crt, client.crt/.key    every device (verifies SuperLink and cloud; optional mTLS pair)
    OUT/nodes/node-K, node-K.pub          node-K's private key -> device K; .pub -> operator (register)

Private keys are 0600, folders holding private keys 0700. Uses :mod:`fedcogen.protocols.security.tls`
(X.509) and :mod:`fedcogen.protocols.security.node_keys` (OpenSSH EC keys Flower's node auth expects).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedcogen.protocols.security import tls
from fedcogen.protocols.security.node_keys import make_node_keypair

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
INDEX_FILE = "index.json"
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True)
class CertBundle:
    """Paths of a certificate folder written by :func:`create_cert_bundle` (or read by :func:`load_bundle`)."""

    root: Path
    hosts: tuple[str, ...]
    ca_cert: Path
    superlink_cert: Path
    superlink_key: Path
    cloud_dir: Path
    device_dir: Path
    node_private_keys: tuple[Path, ...] = field(default_factory=tuple)
    node_public_keys: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def nodes(self) -> int:
        return len(self.node_private_keys)


def _layout(root: Path, hosts: Sequence[str], nodes: int) -> CertBundle:
    return CertBundle(
        root=root,
        hosts=tuple(hosts),
        ca_cert=root / "ca" / "ca.crt",
        superlink_cert=root / "superlink" / "server.crt",
        superlink_key=root / "superlink" / "server.key",
        cloud_dir=root / "cloud",
        device_dir=root / "device",
        node_private_keys=tuple(root / "nodes" / f"node-{k}" for k in range(nodes)),
        node_public_keys=tuple(root / "nodes" / f"node-{k}.pub" for k in range(nodes)),
    )


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def _parse_hosts(text: str | Sequence[str]) -> tuple[str, ...]:
    hosts = [h.strip() for h in (text.split(",") if isinstance(text, str) else text) if h.strip()]
    if not hosts:
        raise ValueError("--hosts needs at least one host name or IP address")
    return tuple(dict.fromkeys(hosts))


def create_cert_bundle(
    out: str | Path,
    nodes: int = 2,
    hosts: str | Sequence[str] = DEFAULT_HOSTS,
    force: bool = False,
    days: int = 365,
) -> CertBundle:
    """Create CA, SuperLink/cloud server certificates, a device client pair and ``nodes`` node key pairs.

    ``hosts`` are the names/IPs the SuperLink and cloud certificates are valid for (the address
    devices dial must be one of them, or TLS hostname verification fails). Refuses to touch an
    existing bundle unless ``force`` (a silently replaced CA would lock every device out).
    """
    if nodes < 0:
        raise ValueError(f"--nodes must be >= 0, got {nodes}")
    host_list = _parse_hosts(hosts)
    root = Path(out).expanduser().resolve()
    if (root / INDEX_FILE).exists() or (root / "ca").exists():
        if not force:
            raise FileExistsError(f"{root} already holds certificates; pass --force to replace them")
        for sub in ("ca", "superlink", "cloud", "device", "nodes"):
            shutil.rmtree(root / sub, ignore_errors=True)
    _private_dir(root)
    bundle = _layout(root, host_list, nodes)

    ca = tls.make_ca(_private_dir(root / "ca"), days=days)
    for sub in ("superlink", "cloud", "device"):
        folder = _private_dir(root / sub)
        shutil.copyfile(ca.cert, folder / "ca.crt")
    tls.make_server_cert(root / "superlink", ca, hosts=host_list, name="server", days=days)
    tls.make_server_cert(root / "cloud", ca, hosts=host_list, name="server", days=days)
    tls.make_client_cert(root / "device", ca, name="client", days=days)
    node_dir = _private_dir(root / "nodes")
    for k in range(nodes):
        make_node_keypair(node_dir, f"node-{k}", overwrite=force)
    _write_index(bundle)
    return bundle


def _write_index(bundle: CertBundle) -> None:
    def rel(p: Path) -> str:
        return str(p.relative_to(bundle.root))

    files = [
        {"path": "ca/ca.crt", "role": "CA certificate (trust anchor)", "copy_to": "every machine"},
        {"path": "ca/ca.key", "role": "CA private key", "copy_to": "nowhere: operator keeps it offline"},
        {"path": "superlink/server.crt", "role": "SuperLink TLS certificate", "copy_to": "SuperLink",
         "flag": "flower-superlink --ssl-certfile"},
        {"path": "superlink/server.key", "role": "SuperLink TLS private key", "copy_to": "SuperLink",
         "flag": "flower-superlink --ssl-keyfile"},
        {"path": "superlink/ca.crt", "role": "CA certificate", "copy_to": "SuperLink",
         "flag": "flower-superlink --ssl-ca-certfile"},
        {"path": "cloud/", "role": "cloud service TLS folder (ca.crt, server.crt, server.key)",
         "copy_to": "cloud service", "flag": "fedcogen cloud serve --tls-dir"},
        {"path": "device/ca.crt", "role": "CA certificate devices verify servers with", "copy_to": "every device",
         "flag": "flower-supernode --root-certificates; cloud client --tls-dir device/"},
        {"path": "device/client.crt", "role": "device client certificate (optional mutual TLS to cloud)",
         "copy_to": "every device"},
        {"path": "device/client.key", "role": "device client private key", "copy_to": "every device"},
    ]
    for k, (priv, pub) in enumerate(zip(bundle.node_private_keys, bundle.node_public_keys, strict=True)):
        files.append({"path": rel(priv), "role": f"SuperNode {k} auth private key (OpenSSH, EC P-384)",
                      "copy_to": f"device {k} only", "flag": "flower-supernode --auth-supernode-private-key"})
        files.append({"path": rel(pub), "role": f"SuperNode {k} auth public key", "copy_to": "operator",
                      "flag": "flwr supernode register"})
    index = {
        "format": 1,
        "hosts": list(bundle.hosts),
        "nodes": bundle.nodes,
        "files": files,
        "note": "Server certificates are valid only for 'hosts'; devices must dial one of them.",
    }
    path = bundle.root / INDEX_FILE
    path.write_text(json.dumps(index, indent=2) + "\n")


def load_bundle(root: str | Path) -> CertBundle:
    """Read a bundle written by :func:`create_cert_bundle` (checks every listed file exists)."""
    folder = Path(root).expanduser().resolve()
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} missing: create the folder with `fedcogen certs --out {folder}`")
    index = json.loads(index_path.read_text())
    bundle = _layout(folder, index["hosts"], int(index["nodes"]))
    for entry in index["files"]:
        if not (folder / entry["path"]).exists():
            raise FileNotFoundError(f"certificate bundle incomplete: {folder / entry['path']} missing")
    return bundle


def bundle_summary(bundle: CertBundle) -> dict[str, object]:
    """JSON-friendly description (paths as strings) for reports and ``--json`` output."""
    out: dict[str, object] = {}
    for key, value in asdict(bundle).items():
        if isinstance(value, tuple):
            out[key] = [str(v) for v in value]
        else:
            out[key] = str(value)
    out["nodes"] = bundle.nodes
    return out
