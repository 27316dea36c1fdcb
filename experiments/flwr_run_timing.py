"""Wall time of `flwr run .` on the Simulation Engine, offline, with 10, 100 and 1000 clients on MNIST.

Each run is timed from the `flwr run` command to its exit (`--stream` follows the run to its end), so the
figure includes the local SuperLink's start-up, Ray's start-up, every client's loading and upload, and the
server's fit and evaluation. The managed SuperLink that `flwr run` leaves behind is stopped by process id
after every run, as the README says; a run whose results file is missing counts as failed.

    python experiments/flwr_run_timing.py --data path/to/mnist.npz --clients 10 100 1000
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

from federated.local_run import offline_env, stop_local_superlink

TARGETS_S = {10: 60.0, 100: 180.0}


def time_one(clients: int, data: Path, mode: str, max_points: int, timeout_s: float) -> dict:
    """One `flwr run .` with ``clients`` simulated clients: wall time, and what its results file says."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="distillmem-flwr-timing-") as tmp:
        home, results = Path(tmp) / "flwr-home", Path(tmp) / "out" / "run-{run_id}.json"
        env = offline_env(home)
        run_config = (
            f"dataset='mnist' data-path='{data.resolve()}' num-clients={clients} min-clients={clients} "
            f"mode='{mode}' max-points={max_points} results-path='{results}'"
        )
        command = [
            str(bin_dir / "flwr"), "run", ".", "--stream", "--run-config", run_config,
            "--federation-config",
            f"num-supernodes={clients} client-resources-num-cpus=1 client-resources-num-gpus=0 init-args-num-cpus=2",
        ]
        start = time.perf_counter()
        try:
            run = subprocess.run(command, cwd=harness.REPO, env=env, capture_output=True, text=True,
                                 timeout=timeout_s, check=False)
            wall = time.perf_counter() - start
            returncode = run.returncode
        except subprocess.TimeoutExpired:
            wall, returncode = time.perf_counter() - start, None
        finally:
            stop_local_superlink(home)
        written = sorted((Path(tmp) / "out").glob("run-*.json"))
        saved = json.loads(written[0].read_text()) if written else {}
    return {
        "clients": clients,
        "mode": mode,
        "max_points": max_points,
        "wall_s": wall,
        "returncode": returncode,
        "ok": returncode == 0 and bool(saved),
        "accuracy": saved.get("accuracy"),
        "accepted": len(saved.get("clients", {}).get("accepted", [])),
        "server_wall_time_s": saved.get("wall_time_s"),
        "total_upload_bytes": saved.get("total_upload_bytes"),
    }


def measure(args) -> dict:
    runs = [time_one(n, Path(args.data), args.mode, args.max_points, args.timeout) for n in harness.progress(args.clients, "clients")]
    return {"runs": runs, "targets_s": {str(k): v for k, v in TARGETS_S.items()}}


def _verdict(run: dict, targets: dict) -> str:
    target = targets.get(str(run["clients"]))
    if not run["ok"]:
        return "failed"
    if target is None:
        return "measured (no target)"
    return f"{'met' if run['wall_s'] < target else 'not met'} (target < {target:.0f} s)"


def markdown(payload: dict) -> str:
    lines = [
        "# `flwr run .` wall time, MNIST, Simulation Engine, offline",
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {payload['machine']}",
        "",
        "| clients | mode | wall time (s) | server loop (s) | clients accepted | accuracy | total upload | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in payload["runs"]:
        acc = "-" if run["accuracy"] is None else f"{100 * run['accuracy']:.2f}%"
        server = "-" if run["server_wall_time_s"] is None else f"{run['server_wall_time_s']:.1f}"
        upload = "-" if run["total_upload_bytes"] is None else f"{run['total_upload_bytes'] / 1e6:.2f} MB"
        mode = run["mode"] + (f" r={run['max_points']}" if run["max_points"] else "")
        lines.append(f"| {run['clients']} | {mode} | {run['wall_s']:.1f} | {server} | {run['accepted']} | {acc} | {upload} | "
                     f"{_verdict(run, payload['targets_s'])} |")
    return "\n".join(lines) + "\n"


def readme(payload: dict) -> str:
    parts = []
    for run in payload["runs"]:
        acc = "" if run["accuracy"] is None else f", {100 * run['accuracy']:.2f}%"
        parts.append(f"{run['clients']} clients {run['wall_s']:.0f} s ({_verdict(run, payload['targets_s'])}{acc})")
    mode = payload["runs"][0]["mode"] if payload["runs"] else "?"
    return (f"`flwr run .` on MNIST, mode `{mode}`, one CPU per simulated client, timed from the command to its exit "
            f"(SuperLink and Ray start-up included): {'; '.join(parts)}. Machine: {payload['machine']} "
            f"(`{payload['command']}`).\n")


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n\n")[0], data="mnist.npz, an IDX folder or a torchvision root")
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--mode", default="sketch", help="upload mode (default sketch)")
    parser.add_argument("--max-points", type=int, default=100, help="max-points of the upload (default 100)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run counts as failed")
    args = parser.parse_args(argv)
    if not args.report_only:
        harness.require_data(parser, args)
    report = harness.Report(__file__, "flwr_run_timing", args.out, argv)
    return report.run(args.report_only, lambda: measure(args), markdown, readme)


if __name__ == "__main__":
    sys.exit(main())
