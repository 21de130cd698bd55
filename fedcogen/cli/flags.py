"""Command-line flags built from a config dataclass: one flag per field, help from the field metadata.

Why: the run configuration's defaults, types and help text live once, in
:class:`fedcogen.run_config.FLSettings`; a command that exposes a config gets its flags from the
dataclass instead of a hand-kept copy that would drift.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from fedcogen.accelerator import SETTINGS_HELP, DeviceError, check_setting
from fedcogen.run_config import field_help


def add_dataclass_flags(parser: argparse.ArgumentParser | Any, cls: type, skip: tuple[str, ...] = ()) -> None:
    """``--field-name`` for every scalar field of ``cls`` (bools get ``--x/--no-x``); defaults stay None.

    Flags default to None so that only what the user typed overrides a config file.
    """
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.default is dataclasses.MISSING:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{helps[f.name]} (default: {'on' if f.default else 'off'})")
        else:
            parser.add_argument(flag, dest=f.name, type=type(f.default), default=None,
                                help=f"{helps[f.name]} (default: {f.default if f.default != '' else repr('')})")


def flag_values(args: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name, None) is not None}


def device_setting(text: str) -> str:
    """argparse type of ``--device``: the normalised setting, or argparse's usage error naming the problem."""
    try:
        return check_setting(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_flag(parser: argparse.ArgumentParser | Any, what: str = "the model",
                    default: str | None = "auto") -> None:
    """The one ``--device`` flag (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``) every command shares.

    ``default=None`` lets a config file's value stand when the flag is not given (``fedcogen demo``).
    """
    parser.add_argument("--device", type=device_setting, default=default,
                        help=f"where {what} runs: {SETTINGS_HELP} (default {default or 'auto'}; docs/gpu.md)")
