"""``python -m federated.deploy``: ``run`` a loopback deployment, or write ``certs`` for a SuperLink."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence

from ..task import Config
from .certs import make_certificates
from .loopback import LoopbackDeployment
from .processes import DeploymentError


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federated.deploy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="a loopback deployment: SuperLink, N SuperNodes, one run, then stop")
    run.add_argument("--nodes", type=int, default=3, help="number of SuperNodes (= num-clients), default 3")
    run.add_argument("--run-config", default="", help='run-config overrides, e.g. "mode=\'sketch\' max-points=20"')
    run.add_argument("--data", default="", help="data file or folder (data-path of the server and of every node)")
    run.add_argument("--workdir", default=None, help="an empty or new folder for certificates, logs and results (kept)")
    run.add_argument("--insecure", action="store_true", help="plain HTTP instead of TLS (never across a network)")
    run.add_argument("--supernode-auth", action="store_true", help="register one key per SuperNode; unknown nodes are refused")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each step (default 600)")
    certs = commands.add_parser("certs", help="write a CA and a server certificate for a SuperLink")
    certs.add_argument("folder", help="an empty or new folder")
    certs.add_argument("--host", action="append", required=True, help="a name or IP address the nodes connect to (repeat)")
    certs.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)

    try:
        if args.command == "certs":
            files = make_certificates(args.folder, args.host, days=args.days)
            print(f"wrote {files.ca} (for every SuperNode and CLI), {files.certificate} and {files.key} (SuperLink only)")
            return 0
        dep = _deployment(args)
    except (ValueError, FileExistsError) as err:  # a user error: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_exit)  # a plain `kill` stops the processes too
    start = time.monotonic()
    transport = "plain HTTP (--insecure)" if args.insecure else "TLS"
    try:
        with dep:
            auth = ", SuperNode authentication" if args.supernode_auth else ""
            print(f"superlink  {dep.address} ({transport}{auth}), {args.nodes} supernodes, logs in {dep.workdir / 'logs'}", flush=True)
            result = dep.run()
    except DeploymentError as err:
        print(f"{err}\ndeployment failed; every process it started was stopped; logs in {dep.workdir / 'logs'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; every process it started was stopped; logs in {dep.workdir / 'logs'}", file=sys.stderr)
        return 130
    line = f"accuracy   {result['accuracy']:.4f}"
    if "centralized_accuracy" in result:
        line += f" (centralized KRR {result['centralized_accuracy']:.4f}, weight error {result['weight_error']:.2e})"
    print(line)
    print(f"uploads    {len(result['clients']['accepted'])} accepted, {result['total_upload_bytes']} bytes in total")
    print(f"time       {time.monotonic() - start:.1f} s from start to stop (server round {result['wall_time_s']:.1f} s)")
    print(f"results    {dep.results_path}; every process stopped")
    return 0


def _deployment(args: argparse.Namespace) -> LoopbackDeployment:
    """The deployment the arguments describe (ValueError naming a bad one)."""
    from flwr.common.config import parse_config_args

    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    mapping = {"num-clients": args.nodes, "min-clients": args.nodes, **overrides}
    if args.data:
        mapping["data-path"] = args.data
    config = Config.from_mapping(mapping)
    workdir = args.workdir or tempfile.mkdtemp(prefix="distillmem-deploy-")
    try:
        return LoopbackDeployment(
            workdir, args.nodes, config, insecure=args.insecure, supernode_auth=args.supernode_auth,
            node_data=args.data, timeout_s=args.timeout,
        )
    except ValueError:
        if args.workdir is None:
            os.rmdir(workdir)  # still empty: nothing was started
        raise
