"""Regenerate (or check) the Python stubs of ``protocols/cogen.proto``.

The stubs are committed so that installing fedcogen needs no protoc; this script keeps them honest:

    fedcogen stubs          # rewrite cogen_pb2.py / cogen_pb2_grpc.py
    fedcogen stubs --check  # exit 1 if the committed stubs are stale

grpcio-tools emits ``import cogen_pb2 as cogen__pb2`` in the gRPC stub, which only works when
``protocols/`` is on ``sys.path``; we rewrite it to a package-relative import.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("cogen",)


def _fix_imports(text: str, name: str) -> str:
    return text.replace(f"import {name}_pb2 as", f"from fedcogen.protocols import {name}_pb2 as")


def generate(name: str = "cogen") -> dict[str, str]:
    """Run protoc (from grpcio-tools) on ``<name>.proto``; return {filename: content} without writing."""
    from grpc_tools import protoc

    proto = HERE / f"{name}.proto"
    if not proto.is_file():
        raise FileNotFoundError(f"proto file missing: {proto}")
    with tempfile.TemporaryDirectory() as tmp:
        # grpc_tools ships the well-known protos; include them so imports resolve.
        import grpc_tools

        include = Path(grpc_tools.__file__).parent / "_proto"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{HERE}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(proto),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc})")
        out = {}
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            fname = f"{name}{suffix}"
            out[fname] = _fix_imports((Path(tmp) / fname).read_text(), name)
        return out


def stale_files() -> list[str]:
    """Names of committed stub files that differ from a fresh generation (empty = up to date)."""
    stale = []
    for name in PROTOS:
        for fname, content in generate(name).items():
            path = HERE / fname
            if not path.is_file() or path.read_text() != content:
                stale.append(fname)
    return stale


def write_stubs() -> list[Path]:
    """Rewrite the committed stubs from the .proto files; returns the paths written."""
    written = []
    for name in PROTOS:
        for fname, content in generate(name).items():
            (HERE / fname).write_text(content)
            written.append(HERE / fname)
    return written
