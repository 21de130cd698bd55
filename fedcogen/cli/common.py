"""Shapes every `fedcogen` command shares: a subcommand with a description, a command group that prints
its help when called bare, the cloud token and decoding flags, and writing a result JSON.

One helper per shape, so that the commands read as lists of their own flags and nothing else.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcogen import results_json
from fedcogen.client.cogen.span_detector import SpanDetector, load_span_detector
from fedcogen.dataset.validate import FieldLimits
from fedcogen.provenance import provenance

Handler = Callable[[argparse.Namespace], int]

# The device model wherever a command asks for one: the demo's (simulations/demo/demo.py DEMO_RUN.model;
# tests/cli/test_truthful_cli.py keeps the two equal). A constant here, not an import, so --help stays fast.
DEVICE_MODEL = "smollm2-27l"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The one help style of every `fedcogen` command (``build_parser`` sets it on each parser).

    A description or epilog with line breaks is shown as written, a one-line one is wrapped. Each flag's
    default is shown once: the help text's own "(default ...)" when it has one, else " (default: X)"
    added here; nothing for flags without a meaningful default (None, off switches, empty strings).
    Why not ``ArgumentDefaultsHelpFormatter``: it appends "(default: None)" to flags whose help already
    names the default (flags built from a config dataclass default to None so that only typed flags
    override a config file), which printed defaults twice.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is False or default == ""
                or default is argparse.SUPPRESS or not action.option_strings or action.nargs == 0):
            return action.help
        return f"{text} (default: %(default)s)"


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every (nested) subcommand parser under it, each once."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                out.extend(all_parsers(child))
    return out


def module_doc(dotted: str) -> str | None:
    """A module's docstring read from its source, without importing it (``--help`` stays fast)."""
    spec = importlib.util.find_spec(dotted)
    if spec is None or spec.origin is None:
        return None
    return ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8")))


def add_command(sub: argparse._SubParsersAction, name: str, help: str, *, description: str | None = None,
                func: Handler | None = None, epilog: str | None = None,
                formatter: type[argparse.HelpFormatter] | None = None) -> argparse.ArgumentParser:
    """``sub.add_parser``; ``func`` is the handler ``main`` calls. Help is laid out by :class:`HelpFormatter`
    (``build_parser`` sets it on every parser, whatever ``formatter`` a command asked for)."""
    description = description or help
    p = sub.add_parser(name, help=help, description=description, epilog=epilog,
                       formatter_class=formatter or HelpFormatter)
    if func is not None:
        p.set_defaults(func=func)
    return p


def add_group(sub: argparse._SubParsersAction, name: str, help: str, *, dest: str, metavar: str = "ACTION",
              description: str | None = None) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """A command made of subcommands; called without one it prints its help and exits 2."""
    p = add_command(sub, name, help, description=description)
    group = p.add_subparsers(dest=dest, metavar=metavar)
    p.set_defaults(func=lambda _args: p.print_help() or 2)
    return p, group


def add_json_out(p: argparse.ArgumentParser, help: str = "write the result JSON here") -> None:
    p.add_argument("--json", dest="json_out", metavar="FILE", help=help)


def write_json(path: str | Path | None, result: Any, *, indent: int = 1, default: Callable[[Any], Any] = str,
               args: argparse.Namespace | None = None) -> None:
    """Write ``result`` as strict JSON to ``path`` (creating its folder; ``null`` for NaN, see
    :mod:`fedcogen.results_json`); nothing when ``path`` is empty.

    With ``args``, a dict result that carries no ``"provenance"`` record yet (the experiments make their
    own) gets one built from the command's flags, so every result file says what code made it."""
    if path:
        if args is not None and isinstance(result, dict) and "provenance" not in result:
            result = {**result, "provenance": provenance(settings=cli_settings(args),
                                                         seeds={"seed": getattr(args, "seed", None)})}
        results_json.write(path, result, indent=indent, default=default)


def cli_settings(args: argparse.Namespace) -> dict[str, Any]:
    """A command's parsed flags as the settings of its result's provenance record: every flag except
    the handler and a token given on the command line (a secret must not land in a result file)."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "token")}


def add_token_args(p: argparse.ArgumentParser, file_help: str = "file (mode 0600) with the cloud's bearer token "
                   "(default: the FEDCOGEN_CLOUD_TOKEN environment variable)") -> None:
    """The cloud's bearer token: from a 0600 file or FEDCOGEN_CLOUD_TOKEN, never (silently) argv."""
    p.add_argument("--token-file", help=file_help)
    p.add_argument("--token", help="DEPRECATED: the token itself, visible in the process list; use --token-file")


def token_of(args: argparse.Namespace) -> str | None:
    from fedcogen.protocols.security.secrets_io import resolve_token

    return resolve_token(getattr(args, "token_file", None), getattr(args, "token", None))


def add_size_limit_args(p: argparse.ArgumentParser) -> None:
    """``--max-chars FIELD=N``: the per-field size caps of task lines (defaults in FieldLimits)."""
    defaults = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(FieldLimits))
    p.add_argument("--max-chars", metavar="FIELD=N", action="append", default=[],
                   help=f"largest accepted size of a task field in characters; repeat for several fields "
                   f"(default: {defaults})")


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    """Answer length, prompt budget and repetition control; unset flags keep DeviceConfig's defaults
    (one source of truth, documented in client/cogen/decoding.py)."""
    p.add_argument("--max-new-tokens", type=int, help="answer length cap (default 160: fits ~150-token references)")
    p.add_argument("--max-prompt-tokens", type=int,
                   help="device prompt budget; longer private contexts keep the profile and newest texts (default 3072)")
    p.add_argument("--repetition-penalty", type=float,
                   help="log-prob multiplier for already generated tokens, 1.0 = off (default 1.15)")
    p.add_argument("--no-repeat-ngram", type=int, help="ban repeating any n-gram of this size, 0 = off (default 4)")
    p.add_argument("--draft-edit-tau", type=float,
                   help="draft_edit: keep a cloud draft token while the device gives it >= TAU x its top token's "
                        "probability; 0 = keep the whole draft, > 1 = none (default: DeviceConfig's, tuned on "
                        "validation tasks)")
    p.add_argument("--no-protect", dest="protect_private_spans", action="store_false", default=None,
                   help="logit/gated: stream private tokens to the cloud too (UNPROTECTED baseline; default: "
                        "private spans stay on the device, see client/cogen/private_spans.py)")
    p.add_argument("--private-spans", metavar="FILE", dest="private_spans_file",
                   help="private-span detector config (JSON/TOML/YAML with SpanDetector fields: patterns, "
                        "extra_values, names, sensitive, pii, ngram; see docs/privacy-spans.md)")
    p.add_argument("--private-value", action="append", dest="private_value", metavar="TEXT",
                   help="a value that must never reach the cloud (repeatable; added to --private-spans)")
    p.add_argument("--private-pattern", action="append", dest="private_pattern", metavar="REGEX",
                   help="a regular expression whose matches in the private context never reach the cloud (repeatable)")


def decoding_settings(args: argparse.Namespace) -> dict[str, Any]:
    names = ("max_new_tokens", "max_prompt_tokens", "repetition_penalty", "no_repeat_ngram", "protect_private_spans",
             "draft_edit_tau")
    out = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    spans = private_spans_settings(args)
    if spans is not None:
        out["private_spans"] = spans
    return out


def private_spans_settings(args: argparse.Namespace) -> SpanDetector | None:
    """The SpanDetector of ``--private-spans FILE`` plus ``--private-value``/``--private-pattern`` (None: defaults)."""
    path = getattr(args, "private_spans_file", None)
    values = tuple(getattr(args, "private_value", None) or ())
    patterns = tuple(getattr(args, "private_pattern", None) or ())
    if path is None and not values and not patterns:
        return None
    det = load_span_detector(path) if path else SpanDetector()
    return dataclasses.replace(det, extra_values=det.extra_values + values, patterns=det.patterns + patterns)
