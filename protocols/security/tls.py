"""Self-made TLS certificates for the cloud gRPC service and the Flower link (``cryptography``).

A deployment would use certificates from its own PKI; for development, tests and the benchmark we
create a private CA, a server certificate (SAN: ``localhost`` and ``127.0.0.1`` by default, so a
loopback channel verifies the hostname) and client certificates. Private keys are written with
mode 0600 and never printed.

Layout of a TLS folder (what ``ensure_dev_certs`` writes and ``--tls-dir`` expects):
``ca.crt``, ``ca.key``, ``server.crt``, ``server.key``, ``client.crt``, ``client.key``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# What a user runs to get the missing files (a module name is no help to someone at a shell prompt):
# `fedcogen certs --out DIR` writes DIR/cloud (for `cloud serve --tls-dir`) and DIR/device (for --tls-dir).
CERTS_HINT = ("create them with `fedcogen certs --out DIR`, then pass DIR/cloud to `fedcogen cloud serve "
              "--tls-dir` and DIR/device to the device's --tls-dir")


@dataclass(frozen=True)
class CertPair:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes()


@dataclass(frozen=True)
class TlsFiles:
    """The CA, server and client pairs of one TLS folder."""

    ca: CertPair
    server: CertPair
    client: CertPair

    @classmethod
    def in_dir(cls, folder: str | Path) -> TlsFiles:
        d = Path(folder)
        return cls(
            ca=CertPair(d / "ca.crt", d / "ca.key"),
            server=CertPair(d / "server.crt", d / "server.key"),
            client=CertPair(d / "client.crt", d / "client.key"),
        )


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        # Create with 0600 from the start (no window where the key is world-readable).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o600)
    else:
        path.write_bytes(data)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _save(pair: CertPair, cert, key) -> CertPair:
    from cryptography.hazmat.primitives import serialization

    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(pair.key, key_pem, private=True)
    return pair


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcogen"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _load(pair: CertPair):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not pair.cert.is_file() or not pair.key.is_file():
        raise FileNotFoundError(f"CA certificate or key missing: {pair.cert}, {pair.key} ({CERTS_HINT})")
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    return cert, key


def make_ca(out_dir: str | Path, common_name: str = "fedcogen dev CA", days: int = 365) -> CertPair:
    """Create a self-signed CA (``ca.crt`` + ``ca.key``) in ``out_dir`` and return its paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    out = Path(out_dir)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _save(CertPair(out / "ca.crt", out / "ca.key"), cert, key)


def _leaf(
    out: Path, ca: CertPair, name: str, common_name: str, hosts: Sequence[str], server: bool, days: int
) -> CertPair:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert, ca_key = _load(ca)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if hosts:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _save(CertPair(out / f"{name}.crt", out / f"{name}.key"), cert, key)


def make_server_cert(
    out_dir: str | Path,
    ca: CertPair,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    name: str = "server",
    days: int = 365,
) -> CertPair:
    """Server certificate signed by ``ca`` valid for ``hosts`` (DNS names or IPs) -> ``<name>.crt/.key``."""
    return _leaf(Path(out_dir), ca, name, hosts[0] if hosts else name, hosts, server=True, days=days)


def make_client_cert(out_dir: str | Path, ca: CertPair, name: str = "client", days: int = 365) -> CertPair:
    """Client certificate (for mutual TLS) signed by ``ca`` -> ``<name>.crt/.key``."""
    return _leaf(Path(out_dir), ca, name, name, (), server=False, days=days)


def ensure_dev_certs(folder: str | Path, hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> TlsFiles:
    """Create the CA, server and client pairs in ``folder`` unless they already exist; return the paths."""
    files = TlsFiles.in_dir(folder)
    if not (files.ca.cert.is_file() and files.ca.key.is_file()):
        make_ca(folder)
    if not (files.server.cert.is_file() and files.server.key.is_file()):
        make_server_cert(folder, files.ca, hosts=hosts)
    if not (files.client.cert.is_file() and files.client.key.is_file()):
        make_client_cert(folder, files.ca)
    return files


def server_credentials(folder: str | Path, require_client_cert: bool = False):
    """gRPC server credentials from a TLS folder (server pair; CA for optional mutual TLS)."""
    import grpc

    files = TlsFiles.in_dir(folder)
    for path in (files.server.cert, files.server.key):
        if not path.is_file():
            raise FileNotFoundError(f"TLS file missing: {path} ({CERTS_HINT})")
    cert, key = files.server.read()
    ca = files.ca.cert.read_bytes() if require_client_cert else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=require_client_cert)


def channel_credentials(folder: str | Path, client_cert: bool = False):
    """gRPC channel credentials trusting the folder's CA (and presenting the client pair if asked)."""
    import grpc

    files = TlsFiles.in_dir(folder)
    if not files.ca.cert.is_file():
        raise FileNotFoundError(f"TLS CA certificate missing: {files.ca.cert} ({CERTS_HINT})")
    if client_cert:
        cert, key = files.client.read()
        return grpc.ssl_channel_credentials(files.ca.cert.read_bytes(), private_key=key, certificate_chain=cert)
    return grpc.ssl_channel_credentials(files.ca.cert.read_bytes())
