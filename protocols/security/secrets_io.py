"""Where a bearer token may come from: a 0600 file or an environment variable, never a command line.

Why: a process's argv is world-readable (``ps``, ``/proc/PID/cmdline``), so a token passed as
``--token`` is visible to every local user. ``/proc/PID/environ`` is readable only by the process
owner, and a file with mode 0600 only by its owner; those are the two supported channels.
``--token`` still works for backwards compatibility but is reported as exposed.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

CLOUD_TOKEN_ENV = "FEDCOGEN_CLOUD_TOKEN"


class SecretError(ValueError):
    """A secret source is unusable (unsafe permissions, empty, several given)."""


def read_secret_file(path: str | Path) -> str:
    """The stripped content of ``path``; refuses files that group or others can read or write."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise SecretError(f"cannot read token file {p}: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise SecretError(f"token file {p} is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"token file {p} has mode {stat.S_IMODE(mode):04o}; it must be 0600 (chmod 600 {p})")
    token = p.read_text(encoding="utf-8").strip()
    if not token:
        raise SecretError(f"token file {p} is empty")
    return token


def write_secret_file(path: str | Path, secret: str) -> Path:
    """Write ``secret`` to a new file created with mode 0600 (never briefly world-readable)."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret)
    os.chmod(p, 0o600)  # O_CREAT's mode does not apply to an existing file
    return p


def resolve_token(
    token_file: str | Path | None = None, cli_token: str | None = None, env_var: str = CLOUD_TOKEN_ENV
) -> str | None:
    """The token from ``--token-file``, else (with a warning) ``--token``, else ``$env_var``; None if none."""
    if token_file and cli_token:
        raise SecretError("give the token either with --token-file or --token, not both")
    if token_file:
        return read_secret_file(token_file)
    if cli_token:
        log.warning(
            "--token puts the secret on the command line, visible to every local user in the process "
            "list; use --token-file FILE (mode 0600) or the %s environment variable", env_var
        )
        return cli_token
    return os.environ.get(env_var) or None
