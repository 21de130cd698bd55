"""SuperNode authentication key pairs in the exact format Flower 1.41 expects.

Why a module of its own: ``flower-supernode --auth-supernode-private-key`` reads the file with
``cryptography``'s ``load_ssh_private_key`` (OpenSSH private-key format, EC key) and
``flwr supernode register`` reads the public key with ``load_ssh_public_key`` and only accepts
NIST curves. A PEM/PKCS8 key, an Ed25519 key or a key on a non-NIST curve is refused by Flower at
start-up with a terse exit code, so we generate the right thing once, here, without shelling out
to ``ssh-keygen`` or ``openssl``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644


@dataclass(frozen=True)
class NodeKeyPair:
    """Paths of one SuperNode's key pair (private stays on the device, public goes to the operator)."""

    name: str
    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (no window where a private key is world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def make_node_keypair(directory: Path | str, name: str, *, overwrite: bool = False) -> NodeKeyPair:
    """Generate an EC P-384 key pair as ``<name>`` (OpenSSH private key) and ``<name>.pub``.

    P-384 is the curve Flower's docs use; the comment of the public key is the node name so an
    operator can tell keys apart in ``flwr supernode ls``.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / name, folder / f"{name}.pub"
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise FileExistsError(f"node key {private_path} already exists (pass overwrite=True / --force)")
    key = ec.generate_private_key(ec.SECP384R1())
    private_bytes = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.OpenSSH,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public_bytes = key.public_key().public_bytes(
        encoding=serialization.Encoding.OpenSSH, format=serialization.PublicFormat.OpenSSH
    )
    _write(private_path, private_bytes, PRIVATE_KEY_MODE)
    _write(public_path, public_bytes + f" {name}\n".encode(), PUBLIC_KEY_MODE)
    return NodeKeyPair(name=name, private_key=private_path, public_key=public_path)


def load_node_public_key(path: Path | str) -> ec.EllipticCurvePublicKey:
    """Load and check a node public key the way ``flwr supernode register`` will (clear error first)."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an OpenSSH public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, Flower node auth needs an EC (NIST) key")
    return key


def load_node_private_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """Load a node private key the way ``flower-supernode`` will."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not an unencrypted OpenSSH private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, Flower node auth needs an EC (NIST) key")
    return key
