"""``fedcogen deploy``: a real multi-process Flower deployment on this machine, or the commands for many.

Why: the simulation engine runs every client inside one Ray process; a deployment has separate
processes talking TLS over sockets, node authentication, crashes and restarts. ``deploy local``
exercises exactly that on loopback in one command (and cleans up after itself, also on Ctrl-C);
``deploy print-commands`` prints what to type on real machines.

Outputs of ``deploy local`` (all under ``--out``): ``deploy-result.json`` + ``deploy-report.md``,
``logs/`` (one file per process, plus the streamed run log and every ``flwr`` CLI call),
``certs/`` (see ``fedcogen certs``), ``flwr-home/`` (private Flower config), ``server/`` (the
ServerApp's metrics and checkpoint), ``clients/`` (per-client state), ``data/`` (synthetic data).
"""

from __future__ import annotations

import argparse
import shlex
import time
import tomllib
from pathlib import Path
from typing import Any

from fedcogen import results_json
from fedcogen.cli.common import DEVICE_MODEL, cli_settings
from fedcogen.provenance import provenance
from fedcogen.run_config import RUN_KEYS, attributes_of, flatten
from fedcogen.simulations.deploy import (
    FEDCOGEN_CLIENTAPP,
    Deployment,
    DeploymentConfig,
    app_dir_for,
    write_probe_app,
)

DEFAULT_OUT = Path("runs/deploy")


def app_config_keys(app_dir: Path) -> set[str]:
    """Keys of ``[tool.flwr.app.config]`` as Flower flattens them (``lora.r``): Flower rejects
    ``--run-config`` keys not listed there."""
    data = tomllib.loads((app_dir / "pyproject.toml").read_text())
    return set(flatten(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})))


def adapt_keys(config: dict[str, Any], known: set[str]) -> tuple[dict[str, Any], list[str]]:
    """Map our snake_case names onto the app's spelling (``a_b`` or ``a-b``); return (config, dropped)."""
    out: dict[str, Any] = {}
    dropped = []
    for key, value in config.items():
        for cand in (key, key.replace("_", "-"), key.replace("-", "_")):
            if cand in known:
                out[cand] = value
                break
        else:
            dropped.append(key)
    return out, dropped


def fedcogen_run_config(out: Path, nodes: int, rounds: int, model: str, seed: int, min_fit: int,
                        overwrite: bool = False) -> dict[str, Any]:
    """Run config (grouped keys) for the fedcogen app in a deployment: one partition per SuperNode,
    state under ``out`` (``overwrite``: replace an earlier run there, which the ServerApp otherwise refuses)."""
    values = {
        "overwrite": overwrite,
        "model": model,
        "seed": seed,
        "rounds": rounds,
        "num_clients": nodes,
        "clients_per_round": nodes,
        "min_fit_clients": min_fit,
        "data_dir": str(out / "data"),
        "out_dir": str(out / "server"),
        "client_state_dir": str(out / "clients"),
    }
    return {RUN_KEYS[name]: value for name, value in values.items()}


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs: ints, floats and true/false are typed, the rest stay strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--run-config expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
        out[key.strip()] = value
    return out


def run_local(args: argparse.Namespace) -> dict[str, Any]:
    """Start the deployment, run the app once, write the report, stop everything (also on errors)."""

    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    probe = args.app == "probe"
    if probe:
        app_dir = write_probe_app(out / "probe-app")
    elif args.app in (None, "fedcogen"):
        app_dir = app_dir_for(FEDCOGEN_CLIENTAPP, out)  # the project folder is the FAB
    else:
        app_dir = Path(args.app).expanduser().resolve()
    min_fit = args.min_fit_clients or args.nodes
    if probe:
        run_config: dict[str, Any] = {"num-server-rounds": args.rounds, "min-nodes": min_fit,
                                      "result-file": str(out / "probe-result.json")}
    else:
        run_config = fedcogen_run_config(out, args.nodes, args.rounds, args.model, args.seed, min_fit,
                                         overwrite=args.overwrite)
    overrides = parse_overrides(args.run_config)
    if not probe and args.app in (None, "fedcogen"):
        attributes_of(overrides)  # an unknown or pre-grouping key: an error naming the key to use
    run_config.update(overrides)
    run_config, dropped = adapt_keys(run_config, app_config_keys(app_dir))
    if dropped:
        print(f"note: the app at {app_dir} has no run-config keys {dropped}; not passed")

    cfg = DeploymentConfig(out_dir=out, nodes=args.nodes, app_dir=app_dir, with_cloud=args.with_cloud,
                           cloud_model=args.cloud_model, startup_timeout=args.startup_timeout)
    started = time.time()
    report: dict[str, Any] = {"out_dir": str(out), "app": str(app_dir), "nodes": args.nodes, "rounds": args.rounds,
                              "run_config": run_config,
                              "provenance": provenance(settings=cli_settings(args), seeds={"seed": args.seed})}
    dep = Deployment(cfg)
    try:
        with dep:
            print(f"starting SuperLink (TLS, node auth) on {dep.superlink_address}, {args.nodes} SuperNode(s)"
                  + (", cloud service" if args.with_cloud else "") + f"; logs in {dep.logs}")
            dep.start()
            report["startup_seconds"] = round(time.time() - started, 2)
            print(f"registered nodes {sorted(dep.node_ids.values())}; all SuperNodes online "
                  f"({report['startup_seconds']} s). Submitting run: flwr run {app_dir} {cfg.connection}")
            run_id = dep.submit_run(run_config)
            report["run_id"] = run_id
            status = dep.wait_run(run_id, timeout=args.timeout, progress=not args.no_progress,
                                  watch=[dep.superlink])
            report.update(status=status.status, run=status.raw, rounds_seen=dep.rounds_seen(run_id))
    except BaseException as exc:
        report.update(status="error", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:  # after the `with`: every process is stopped, so exit codes are final
        report["deployment"] = dep.describe()
        report["wall_seconds"] = round(time.time() - started, 2)
        _write_report(out, report)
    for name in ("server/metrics.json", "probe-result.json"):
        if (out / name).is_file():
            report["app_result"] = str(out / name)
    _write_report(out, report)
    print(f"run {report['run_id']}: {report['status']} in {report['wall_seconds']} s; "
          f"report {out / 'deploy-report.md'}")
    return report


def _write_report(out: Path, report: dict[str, Any]) -> None:
    results_json.write(out / "deploy-result.json", report, indent=2, default=str)
    dep = report.get("deployment", {})
    lines = [
        "# fedcogen local deployment",
        "",
        f"- status: **{report.get('status', '?')}** (run {report.get('run_id', '-')})",
        f"- app: `{report.get('app')}`, nodes: {report.get('nodes')}, rounds: {report.get('rounds')}",
        f"- SuperLink: `{dep.get('superlink_address')}` (TLS {dep.get('tls')}, node auth {dep.get('node_auth')})",
        f"- startup: {report.get('startup_seconds', '-')} s, total wall time: {report.get('wall_seconds', '-')} s",
    ]
    if report.get("error"):
        lines.append(f"- error: `{report['error']}`")
    if report.get("app_result"):
        lines.append(f"- app result: `{report['app_result']}`")
    lines += ["", "| process | pid | starts | exit code | log |", "|---|---|---|---|---|"]
    for name, info in dep.get("processes", {}).items():
        lines.append(f"| {name} | {info['pid']} | {info['starts']} | {info['returncode']} | `{info['log']}` |")
    (out / "deploy-report.md").write_text("\n".join(lines) + "\n")


def print_commands(args: argparse.Namespace) -> str:
    """Shell commands for a SuperLink (+ cloud) machine and device machines; see docs/deployment.md."""
    link = f"{args.superlink_host}:{args.port}"
    cloud = f"{args.cloud_host or args.superlink_host}:{args.cloud_port}"
    q = shlex.quote
    c = args.certs
    lines = [
        "# ---- operator (any machine): certificates + node keys",
        f"fedcogen certs --out {q(c)} --nodes {args.nodes} --hosts {q(args.superlink_host)}"
        + (f",{q(args.cloud_host)}" if args.cloud_host and args.cloud_host != args.superlink_host else ""),
        f"#   copy {c}/superlink/ -> SuperLink machine, {c}/cloud/ -> cloud machine,",
        f"#   {c}/device/ca.crt + {c}/nodes/node-K -> device K.  {c}/ca/ca.key stays with you.",
        "",
        "# ---- machine A: SuperLink (TLS, only registered SuperNodes may join)",
        f"flower-superlink --host 0.0.0.0 --port {args.port} --enable-supernode-auth \\",
        f"  --ssl-ca-certfile {c}/superlink/ca.crt --ssl-certfile {c}/superlink/server.crt \\",
        f"  --ssl-keyfile {c}/superlink/server.key --database state/superlink.db \\",
        "  --disable-runtime-dependency-installation",
        "",
        f"# ---- machine A (or a third one): CoGenesis cloud service (TLS + bearer token); devices dial {cloud}",
        f"fedcogen cloud serve --model {args.cloud_model} --host 0.0.0.0 --port {args.cloud_port} \\",
        f"  --tls-dir {c}/cloud --token-file ~/.fedcogen/cloud-token   # a mode-0600 file holding the token",
        "# (or export FEDCOGEN_CLOUD_TOKEN=...; never pass the token itself as an argument: argv is public)",
        "",
        "# ---- operator: Flower config naming the federation, then register every node's public key",
        "mkdir -p ~/.flwr && cat >> ~/.flwr/config.toml <<'EOF'",
        f"[superlink.{args.connection}]",
        f'address = "{link}"',
        f'root-certificates = "{Path(c).resolve()}/ca/ca.crt"',
        "EOF",
    ]
    for k in range(args.nodes):
        lines.append(f"flwr supernode register {c}/nodes/node-{k}.pub {args.connection}")
    lines += ["", "# ---- machine B (device K): one SuperNode per device, its own key and partition"]
    for k in range(args.nodes):
        lines += [
            f"flower-supernode --superlink {link} --root-certificates {c}/device/ca.crt \\",
            f"  --auth-supernode-private-key {c}/nodes/node-{k} --port {9094 + k} \\",
            f"  --node-config 'partition-id={k} num-partitions={args.nodes}'",
        ]
    lines += [
        "",
        "# ---- operator: run the fedcogen app on the federation (from the project folder)",
        f"flwr run . {args.connection} --stream --run-config 'strategy.rounds={args.rounds} "
        f"model.name=\"{args.model}\" strategy.num-clients={args.nodes} strategy.clients-per-round={args.nodes}'",
        "# after a SuperLink crash: restart it with the same --database and re-submit with output.resume=true",
        f"flwr run . {args.connection} --stream --run-config 'output.resume=true strategy.rounds={args.rounds}'",
    ]
    text = "\n".join(lines)
    print(text)
    return text


def _cmd_local(args: argparse.Namespace) -> int:
    if args.nodes < 1:
        raise ValueError("--nodes must be at least 1")
    if args.min_fit_clients and args.min_fit_clients > args.nodes:
        raise ValueError(f"--min-fit-clients {args.min_fit_clients} > --nodes {args.nodes}: no round could finish")
    report = run_local(args)
    return 0 if report.get("status") == "finished:completed" else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="real multi-process Flower deployment (TLS + node auth) on loopback")
    dsub = p.add_subparsers(dest="deploy_command", metavar="ACTION")
    loc = dsub.add_parser(
        "local",
        help="start SuperLink + N SuperNodes (+ cloud) on loopback, run the app, stop everything",
        description=(
            "One command for a complete local deployment: creates certificates and node keys, starts a "
            "SuperLink with TLS and SuperNode authentication on a free loopback port, registers the N "
            "node public keys (unregistered nodes are refused), starts N SuperNodes (partition-id 0..N-1), "
            "optionally the CoGenesis cloud service with TLS + token, submits the app with `flwr run`, "
            "shows round progress, waits for completion and stops every process it started - on success, "
            "error, Ctrl-C or SIGTERM. Every process logs to OUT/logs/."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    loc.add_argument("--nodes", type=int, default=2, help="number of SuperNodes (devices)")
    loc.add_argument("--rounds", type=int, default=2, help="federated rounds")
    loc.add_argument("--model", default="tiny", help="device model (tiny for a quick check, smollm2-half, ...)")
    loc.add_argument("--seed", type=int, default=0, help="run seed")
    loc.add_argument("--min-fit-clients", type=int, default=0, help="replies a round needs (0 = all nodes)")
    loc.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    loc.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run in --out (without it, the ServerApp refuses to write over one)")
    loc.add_argument("--app", default=None,
                     help="'fedcogen' (default: the project's own app, the project folder as FAB), "
                     "'probe' (model-free plumbing check) or a Flower app folder")
    loc.add_argument("--run-config", action="append", metavar="KEY=VALUE", help="extra run config (repeatable)")
    loc.add_argument("--with-cloud", action="store_true", help="also start `fedcogen cloud serve` (TLS + token)")
    loc.add_argument("--cloud-model", default="tiny-large", help="cloud model when --with-cloud")
    loc.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the run")
    loc.add_argument("--startup-timeout", type=float, default=120.0, help="seconds each process may take to start")
    loc.add_argument("--no-progress", action="store_true", help="no progress bar")
    loc.set_defaults(func=_cmd_local)

    pc = dsub.add_parser(
        "print-commands",
        help="print the commands for a deployment on real machines",
        description="Print, for copy-paste, the commands to run on the operator, SuperLink/cloud and device "
        "machines (certificates, SuperLink with TLS + node auth, registration, SuperNodes, flwr run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pc.add_argument("--superlink-host", default="superlink.example.org", help="DNS name / IP devices dial")
    pc.add_argument("--cloud-host", default=None, help="cloud service host (default: the SuperLink host)")
    pc.add_argument("--port", type=int, default=9092, help="SuperLink port (Fleet + Control + Runtime API)")
    pc.add_argument("--cloud-port", type=int, default=50071, help="cloud service gRPC port")
    pc.add_argument("--nodes", type=int, default=2, help="number of devices")
    pc.add_argument("--rounds", type=int, default=3, help="federated rounds")
    pc.add_argument("--model", default=DEVICE_MODEL, help="device model")
    pc.add_argument("--cloud-model", default="smollm2", help="cloud model")
    pc.add_argument("--certs", default="certs", help="certificate folder")
    pc.add_argument("--connection", default="fedcogen", help="name of the SuperLink connection in the Flower config")
    pc.set_defaults(func=lambda a: print_commands(a) and 0)
    p.set_defaults(func=lambda _a: p.print_help() or 2)
