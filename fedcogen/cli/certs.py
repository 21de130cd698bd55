"""``fedcogen certs``: every certificate and key a fedcogen deployment needs, in one folder
(the bundle itself is made by :mod:`fedcogen.simulations.deploy.certs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedcogen.cli.common import add_command
from fedcogen.simulations.deploy.certs import DEFAULT_HOSTS, INDEX_FILE, create_cert_bundle


def _cmd_certs(args: argparse.Namespace) -> int:
    try:
        bundle = create_cert_bundle(args.out, nodes=args.nodes, hosts=args.hosts, force=args.force, days=args.days)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from exc
    print(f"wrote CA, SuperLink + cloud certificates (hosts: {', '.join(bundle.hosts)}), a device client pair "
          f"and {bundle.nodes} SuperNode key pair(s) to {bundle.root}")
    print(f"see {bundle.root / INDEX_FILE} for which file goes to which machine")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "certs", "create the CA, TLS certificates and SuperNode key pairs for a deployment", func=_cmd_certs,
        description=(
            "Create everything a TLS + node-authenticated deployment needs: a private CA, the SuperLink "
            "and cloud-service server certificates (valid for --hosts), a device client certificate, "
            "and one OpenSSH EC key pair per SuperNode (private key -> that device, public key -> "
            "`flwr supernode register`). index.json says which file goes to which machine."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write (created with mode 0700)")
    p.add_argument("--nodes", type=int, default=2, help="number of SuperNode key pairs (default 2)")
    p.add_argument(
        "--hosts",
        default=",".join(DEFAULT_HOSTS),
        help="comma-separated DNS names / IPs the SuperLink and cloud certificates are valid for; "
        "devices must dial one of them (default 127.0.0.1,localhost)",
    )
    p.add_argument("--days", type=int, default=365, help="certificate validity in days (default 365)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle (new CA: redistribute all)")
