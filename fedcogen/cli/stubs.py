"""`fedcogen stubs`: regenerate (or check) the committed gRPC stubs of ``protocols/cogen.proto``."""

from __future__ import annotations

import argparse

from fedcogen.cli.common import add_command, module_doc


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "stubs", "regenerate (or check) the committed gRPC stubs of protocols/cogen.proto",
                    description=module_doc("fedcogen.protocols.gen_stubs"), func=_stubs)
    p.add_argument("--check", action="store_true", help="only report stale stubs (exit 1 if any)")


def _stubs(args: argparse.Namespace) -> int:
    from fedcogen.protocols.gen_stubs import stale_files, write_stubs

    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated stubs: {', '.join(stale)}; run fedcogen stubs")
            return 1
        print("generated stubs are up to date")
        return 0
    for path in write_stubs():
        print(f"wrote {path}")
    return 0
