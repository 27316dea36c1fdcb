"""One-shot federated uploads against FedAvg: accuracy, bytes and wall time of every method, over partitions and seeds.

Each one-shot method is one run of the federated app (``federated.simulate``)
on Flower's in-process grid (``engine="inprocess"``: the same ClientApp and
ServerApp code, and the same head, as the Simulation Engine on Ray), FCNN
features (``RandomFCNN(d, seed=0)``), lambda fixed. Bytes are those of the
serialised upload arrays as Flower counts them. The baselines on the same
features and partitions: centralized KRR on the whole training split (the
upper bound, computed once), and FedAvg of a linear head and of a one-hidden-layer
MLP, run by Flower's own ``FedAvg`` strategy with the project's FedAvg
ClientApp (``federated.simulate_fedavg``, in-process grid; all clients every
round, weighted by local sample counts), whose accuracy is recorded after
every round; each round a client uploads its model once. Seeds
change the partition, the random real subsets, the distillation noise and
FedAvg's initialisation and batches; the feature map stays fixed.

    python experiments/federated_oneshot.py --dataset mnist --data path/to/mnist.npz --clients 10
    python experiments/federated_oneshot.py --dataset fashion-mnist --data path/to/fashion-mnist --clients 100
    python experiments/federated_oneshot.py --dataset digits --clients 10 --seeds 0 --out /tmp/x    # seconds
    python experiments/federated_oneshot.py --dataset mnist --clients 10 --report-only

Writes experiments/results/federated_<dataset>_<clients>c[_<partition>].{json,md}, and when
measuring the plots <name>_bytes.png (accuracy against total bytes, log x)
and <name>_rounds.png (FedAvg's accuracy per round, one-shot methods as
horizontal lines); the README block of that name.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from statistics import mean, stdev

import harness

#: label -> (mode, simulate options). The order is the tables' order.
METHODS: dict[str, tuple[str, dict]] = {
    "moments (exact)": ("moments", {}),
    "stats (Fed3R / AFL)": ("stats", {}),
    # Sketch labels give max-points, the rows a client sends: r eigen-rows, plus the k rows of R - C when they fit.
    "sketch 1 row (r=1)": ("sketch", {"max_points": 1}),
    "sketch 10 rows (r=10)": ("sketch", {"max_points": 10}),
    "sketch 20 rows (r=10 + k)": ("sketch", {"max_points": 20}),
    "sketch 100 rows (r=90 + k)": ("sketch", {"max_points": 100}),
    "sketch 100 rows (r=90 + k), 5 rounds": ("sketch", {"max_points": 100, "rounds": 5}),
    "moments r=100 (truncated)": ("moments", {"max_points": 100}),
    "real r=100": ("real", {"max_points": 100}),
    "real r=500": ("real", {"max_points": 500}),
    "means (FedNCM)": ("means", {}),
    "head averaging, ipc=1": ("ipc", {"ipc": 1}),
    "head averaging, ipc=10": ("ipc", {"ipc": 10}),
}
#: (partition, alpha) cells, named as on the command line.
PARTITIONS = {"iid": ("iid", 0.5), "dir0.5": ("dirichlet", 0.5), "dir0.1": ("dirichlet", 0.1)}
FEDAVG = "FedAvg, linear head"  # the FedAvg whose rounds-to-reach the tables give


def fedavg_label(entry: dict) -> str:
    """A FedAvg run's row: the linear head (runs before the MLP existed carry no "model") or the MLP."""
    model = entry.get("model", "linear")
    return FEDAVG if model == "linear" else f"FedAvg, MLP ({model.removeprefix('mlp-')} hidden)"


def is_fedavg(label: str) -> bool:
    return label.startswith("FedAvg")
#: Targets of issue 8 on 10 clients: largest gap (points) to centralized KRR per Dirichlet alpha, and of refinement.
ONESHOT_GAP = {"dir0.5": 0.5, "dir0.1": 1.5}
REFINE_GAP = 0.1
REFINED, ONE_SHOT_OF_REFINED = "sketch 100 rows (r=90 + k), 5 rounds", "sketch 100 rows (r=90 + k)"
SMALL = (ONE_SHOT_OF_REFINED,)  # the "at most 100 points per client plus k rows of cross moments" upload
#: One-shot uploads compared with means, head averaging and FedAvg: the ones nearest their bytes, and SMALL.
COMPARED = ("sketch 1 row (r=1)", "sketch 10 rows (r=10)", "sketch 20 rows (r=10 + k)", *SMALL)
#: One-shot uploads of at most 100 points (rows) per client, besides k rows of cross moments or class means.
AT_MOST_100 = ("sketch 1 row (r=1)", "sketch 10 rows (r=10)", "sketch 20 rows (r=10 + k)", ONE_SHOT_OF_REFINED,
               "moments r=100 (truncated)", "real r=100", "means (FedNCM)", "head averaging, ipc=1", "head averaging, ipc=10")


# -- measuring ------------------------------------------------------------------------------------


def measure(args) -> dict:
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    import distillmem as dm
    from federated import Config, simulate, simulate_fedavg
    from federated.task import load_arrays, make_feature_map

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    data_path = "" if args.dataset == "digits" else str(args.data)
    data = load_arrays(args.dataset, data_path)
    fmap = make_feature_map(Config(dataset=args.dataset, data_path=data_path or "-"), data.x_train.shape[1])
    load = [os.getloadavg()[0]]
    start = time.monotonic()
    central = dm.KRR(fmap, reg=args.reg, n_classes=data.n_classes).fit(data.x_train.astype(np.float64), data.y_train)
    centralized = {"accuracy": central.score(data.x_test, data.y_test), "wall_time_s": time.monotonic() - start}
    reference = central.weights_.numpy()
    runs, fedavg = [], []
    for cell in args.partitions:
        partition, alpha = PARTITIONS[cell]
        for seed in args.seeds:
            common = dict(dataset=args.dataset, data=data_path or None, num_clients=args.clients, partition=partition,
                          alpha=alpha, feature_map="fcnn", reg=args.reg, seed=seed, engine="inprocess", centralized=False,
                          deadline_s=args.deadline)
            for label in args.methods:
                mode, options = METHODS[label]
                refines = options.get("rounds", 1) > 1  # the server's per-round weight errors need its centralized fit
                result = simulate(mode=mode, **{**common, "centralized": refines}, **options)
                weights = result["head"].weights_.numpy()
                refinement = [e for e in result["refinement"] if "residual_norm" in e]
                runs.append({
                    "method": label, "partition": cell, "seed": seed, "accuracy": result["accuracy"],
                    "weight_error": float(np.linalg.norm(weights - reference) / np.linalg.norm(reference)),
                    "upload_bytes": result["upload_bytes"], "total_bytes": result["total_upload_bytes"]
                    + sum(e["upload_bytes"] for e in refinement),
                    "accepted": len(result["clients"]["accepted"]), "wall_time_s": result["wall_time_s"],
                    "refinement": refinement,
                })
                print(f"{cell} seed {seed} {label}: {100 * result['accuracy']:.2f}% "
                      f"({runs[-1]['total_bytes']:,} bytes, {result['wall_time_s']:.1f} s)", flush=True)
            if args.fedavg_rounds == 0:
                continue
            models = {"linear": ("linear", 0), "mlp": (f"mlp-{args.fedavg_mlp}", args.fedavg_mlp)}  # label, hidden units
            for model, hidden in (models[kind] for kind in args.fedavg_models):
                result = simulate_fedavg(
                    dataset=args.dataset, data=data_path or None, num_clients=args.clients, partition=partition, alpha=alpha,
                    feature_map="fcnn", seed=seed, rounds=args.fedavg_rounds, lr=args.fedavg_lr, batch_size=args.fedavg_batch,
                    hidden=hidden, engine="inprocess", deadline_s=args.deadline,
                )
                fedavg.append({
                    "partition": cell, "seed": seed, "model": model, "engine": "flower-strategy",
                    "accuracy": result["accuracy"], "bytes_per_client_per_round": result["upload_bytes_per_round"],
                    "wall_time_s": result["wall_time_s"],
                })
                print(f"{cell} seed {seed} {fedavg_label(fedavg[-1])}: {100 * result['accuracy'][-1]:.2f}% after "
                      f"{args.fedavg_rounds} rounds ({result['wall_time_s']:.1f} s)", flush=True)
    load.append(os.getloadavg()[0])
    return {
        "code": _code_version(),
        "load_average": load,
        "setup": {
            "dataset": args.dataset, "n_train": int(data.x_train.shape[0]), "n_test": int(data.x_test.shape[0]),
            "clients": args.clients, "reg": args.reg, "feature_map": fmap.spec(), "seeds": args.seeds,
            "partitions": args.partitions, "engine": "inprocess", "threads": args.threads,
            "fedavg": {"rounds": args.fedavg_rounds, "lr": args.fedavg_lr, "batch_size": args.fedavg_batch,
                       "local_epochs": 1, "loss": "cross_entropy", "momentum": 0.0},
        },
        "centralized": centralized,
        "runs": runs,
        "fedavg": fedavg,
    }


def _code_version() -> str:
    """The repository's commit, with "+changes" when federated/ or distillmem/ differ from it."""
    import subprocess

    git = lambda *a: subprocess.run(["git", *a], cwd=harness.REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--", "federated", "distillmem") else "")


def merge(paths: list[Path], drop: list[str] = ()) -> dict:
    """One result from the JSON of runs that measured other seeds or partitions of the same setup.

    Lets the seeds run as separate processes; each part's command and machine are kept under ``parts``
    (an input that is itself a merge brings its own parts). Runs of the methods in ``drop`` are left
    out (for instance methods whose code changed since they were measured).
    """
    parts = [json.loads(Path(p).read_text()) for p in paths]
    unknown = set(drop) - {run["method"] for part in parts for run in part["runs"]}
    if unknown:
        raise SystemExit(f"--drop: no input has runs of {sorted(unknown)}")
    # Threads change wall times only: parts run with different counts are merged, and the counts listed.
    same = ("dataset", "n_train", "n_test", "clients", "reg", "feature_map", "engine")
    threads = sorted({str(part["setup"]["threads"]) for part in parts}, key=lambda t: [int(n) for n in t.split(", ")])
    first = parts[0]
    fedavg = [part["setup"]["fedavg"] for part in parts if part["setup"]["fedavg"]["rounds"] > 0]
    for path, part in zip(paths, parts):
        for key in same:
            if part["setup"][key] != first["setup"][key]:
                raise SystemExit(f"--merge {path}: setup {key} is {part['setup'][key]!r}, the first part's {first['setup'][key]!r}")
        if part["setup"]["fedavg"]["rounds"] > 0 and part["setup"]["fedavg"] != fedavg[0]:
            raise SystemExit(f"--merge {path}: FedAvg setup {part['setup']['fedavg']!r} differs from {fedavg[0]!r}")
        if part["centralized"]["accuracy"] != first["centralized"]["accuracy"]:
            raise SystemExit(f"--merge {path}: centralized accuracy differs from the first part's")
    provenance, replaced, offsets = [], [], []
    for part in parts:
        offsets.append(len(provenance))
        if "parts" in part:  # itself a merge: its parts and re-measurements, renumbered
            replaced += [{**r, "part": r["part"] + offsets[-1], "by": r["by"] + offsets[-1]} for r in part.get("replaced", [])]
            provenance += part["parts"]
        else:
            provenance.append({"code": part.get("code", "not recorded"), **{k: part[k] for k in ("command", "machine", "load_average")}})
    # A later part's run replaces an earlier part's run of the same (method, partition, seed): a re-measurement.
    latest = {}
    for i, part in enumerate(parts):
        for run in part["runs"]:
            if run["method"] in drop:
                continue
            key = (run["method"], run["partition"], run["seed"])
            if key in latest:
                if "parts" in parts[latest[key][0]] or "parts" in part:
                    raise SystemExit(f"--merge: {key} is measured again, and one side is a merged input: --drop the method "
                                     "or merge the original parts")
                replaced.append({"method": key[0], "partition": key[1], "seed": key[2], "part": offsets[latest[key][0]],
                                 "by": offsets[i]})
            latest[key] = (i, run)
    runs = [run for _, run in latest.values()]
    fed = [(f["partition"], f["seed"], fedavg_label(f)) for part in parts for f in part["fedavg"]]
    if len(set(fed)) != len(fed):
        raise SystemExit("--merge: the parts run FedAvg twice on some (partition, seed)")
    cells = {c for part in parts for c in part["setup"]["partitions"]}
    return {
        "load_average": [max(p["load_average"][i] for p in parts) for i in (0, 1)],
        "setup": {**first["setup"], "threads": ", ".join(threads), "fedavg": (fedavg or [first["setup"]["fedavg"]])[0], "seeds": sorted({s for p in parts for s in p["setup"]["seeds"]}),
                  "partitions": [c for c in PARTITIONS if c in cells]},
        "centralized": first["centralized"],
        "runs": runs,
        "fedavg": [f for part in parts for f in part["fedavg"]],
        "parts": provenance,
        "replaced": replaced,
        # A merged input's own drops stay on record beside this merge's.
        "dropped": {"methods": sorted(set(drop).union(*(part.get("dropped", {}).get("methods", []) for part in parts))),
                    "runs": sum(run["method"] in drop for part in parts for run in part["runs"])
                    + sum(part.get("dropped", {}).get("runs", 0) for part in parts)},
    }


# -- summaries (pure functions of the JSON) -------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float]:
    return mean(values), (stdev(values) if len(values) > 1 else 0.0)


def summary(payload: dict) -> dict[str, dict[str, dict]]:
    """{partition: {method: {acc, std, gap, bytes_client, bytes_total, wall, seeds, ...}}}, FedAvg included."""
    central = payload["centralized"]["accuracy"]
    table: dict[str, dict[str, dict]] = {}
    for cell in payload["setup"]["partitions"]:
        rows = {}
        order = list(METHODS)
        for label in sorted(dict.fromkeys(r["method"] for r in payload["runs"]), key=lambda m: order.index(m) if m in order else len(order)):
            runs = [r for r in payload["runs"] if r["method"] == label and r["partition"] == cell]
            if not runs:
                continue
            acc, std = _stats([r["accuracy"] for r in runs])
            rows[label] = {
                "acc": acc, "std": std, "gap": central - acc, "seeds": len(runs),
                "worst_gap": max(central - r["accuracy"] for r in runs),
                "bytes_client": mean(b for r in runs for b in r["upload_bytes"]),
                "bytes_total": mean(r["total_bytes"] for r in runs),
                "weight_error": max(r["weight_error"] for r in runs),
                "wall": mean(r["wall_time_s"] for r in runs),
                "refinement": [r["refinement"] for r in runs],
            }
        runs_of = {}
        for f in payload["fedavg"]:
            if f["partition"] == cell:
                runs_of.setdefault(fedavg_label(f), []).append(f)
        for label, fed in sorted(runs_of.items(), key=lambda item: item[0] != FEDAVG):
            finals = [f["accuracy"][-1] for f in fed]
            acc, std = _stats(finals)
            clients = payload["setup"]["clients"]
            per_round = fed[0]["bytes_per_client_per_round"]
            rows[label] = {
                "acc": acc, "std": std, "gap": central - acc, "seeds": len(fed), "worst_gap": max(central - a for a in finals),
                "bytes_client": per_round * len(fed[0]["accuracy"]), "bytes_total": per_round * clients * len(fed[0]["accuracy"]),
                "wall": mean(f["wall_time_s"] for f in fed), "per_round": per_round,
                "curve": [mean(vals) for vals in zip(*(f["accuracy"] for f in fed))],
            }
        table[cell] = rows
    return table


def weight_errors(payload: dict, cell: str) -> dict[int, list[float]]:
    """{seed: weight error after round 1 (the one-shot sketch), 2, ...} of the refinement runs of ``cell``."""
    found = {}
    for run in payload["runs"]:
        if run["method"] == REFINED and run["partition"] == cell:
            (first,) = [r["weight_error"] for r in payload["runs"]
                        if r["method"] == ONE_SHOT_OF_REFINED and r["partition"] == cell and r["seed"] == run["seed"]] or [None]
            later = [e["weight_error"] for e in run["refinement"]]
            found[run["seed"]] = later if first is None else [first, *later]
    return found


def _within(gap: float, points: float) -> bool:
    """Whether an accuracy ``gap`` (a share) is at most ``points`` percentage points, up to float rounding."""
    return 100 * gap <= points + 1e-9


def rounds_to_reach(curve: list[float], target: float) -> int | None:
    """The first round (1-based) whose seed-mean accuracy reaches ``target``, or None."""
    return next((t for t, a in enumerate(curve, 1) if a >= target), None)


def _kb(n: float) -> str:
    return f"{n / 1e3:,.1f} kB" if n < 1e6 else f"{n / 1e6:,.2f} MB"


def _fedavg_engines(payload: dict) -> str:
    """Which code ran the FedAvg runs: Flower's own strategy, or (runs before it was used) the in-process loop."""
    flower = sum(f.get("engine") == "flower-strategy" for f in payload["fedavg"])
    loop = len(payload["fedavg"]) - flower
    parts = ([f"{flower} by Flower's `FedAvg` strategy with the FedAvg ClientApp (`federated.simulate_fedavg`, in-process grid)"]
             if flower else []) + ([f"{loop} by the in-process loop `federated.fedavg.FedAvg`"] if loop else [])
    return f"FedAvg runs: {' and '.join(parts)}." if parts else ""


def _cell_name(cell: str) -> str:
    partition, alpha = PARTITIONS[cell]
    return "IID" if partition == "iid" else f"Dirichlet α = {alpha:g}"


def targets(payload: dict) -> list[str]:
    """Each target of issue 8 this result can speak to, with the figure reached and met or not."""
    table, lines = summary(payload), []
    if payload["setup"]["clients"] != 10 or payload["setup"]["dataset"] != "mnist":
        return lines
    for cell, rows in table.items():
        exact = rows.get("moments (exact)")
        if exact:
            lines.append(f"{_cell_name(cell)}: `moments` weight error ≤ {harness.sci(exact['weight_error'])} "
                         f"(target ≤ 1e-6), accuracy gap {exact['gap'] * 100:+.2f} points (target within 0.05): "
                         f"{'met' if exact['weight_error'] <= 1e-6 and abs(exact['gap']) * 100 <= 0.05 else 'not met'}.")
        for label in COMPARED:
            if label in rows and cell in ONESHOT_GAP:
                row, limit = rows[label], ONESHOT_GAP[cell]
                if label in SMALL:
                    lines.append(f"{_cell_name(cell)}: `{label}` is {100 * row['gap']:.2f} points below centralized "
                                 f"(seed mean; worst seed {100 * row['worst_gap']:.2f}), target within {limit}: "
                                 f"{'met' if _within(row['gap'], limit) else 'not met'}.")
                    small = {m: r for m, r in rows.items() if m in AT_MOST_100}
                    best = max(small, key=lambda m: small[m]["acc"])
                    lines.append(f"{_cell_name(cell)}: the best one-shot upload of at most 100 points per client is `{best}`, "
                                 f"{100 * small[best]['gap']:.2f} points below centralized: "
                                 f"{'met' if _within(small[best]['gap'], limit) else 'not met'}.")
                rivals = [m for m in ("means (FedNCM)", "head averaging, ipc=1", "head averaging, ipc=10") if m in rows]
                beaten = [m for m in rivals if row["acc"] >= rows[m]["acc"]]
                lines.append(f"{_cell_name(cell)}: `{label}` ({_kb(row['bytes_client'])} per client, "
                             f"{100 * row['acc']:.2f}%) against " + ", ".join(
                                 f"`{m}` ({_kb(rows[m]['bytes_client'])}, {100 * rows[m]['acc']:.2f}%)" for m in rivals)
                             + f": at least as accurate as {len(beaten)} of {len(rivals)}.")
                if FEDAVG in rows:
                    fed = rows[FEDAVG]
                    t = rounds_to_reach(fed["curve"], row["acc"])
                    lines.append(f"{_cell_name(cell)}: FedAvg (linear head) reaches `{label}`'s accuracy "
                                 + (f"after {t} rounds, {_kb(t * fed['per_round'] * payload['setup']['clients'])} of uploads "
                                    f"against {_kb(row['bytes_total'])}." if t else
                                    f"in none of its {len(fed['curve'])} rounds ({100 * fed['acc']:.2f}% after the last, "
                                    f"{_kb(fed['bytes_total'])} of uploads; the one-shot upload is {_kb(row['bytes_total'])})."))
        refine = rows.get(REFINED)
        if refine and cell in ONESHOT_GAP:
            errors = weight_errors(payload, cell)
            falling = all(all(b < a for a, b in zip(e, e[1:])) for e in errors.values())
            per_round = max(e["upload_bytes"] for h in refine["refinement"] for e in h) / payload["setup"]["clients"]
            lines.append(f"{_cell_name(cell)}: refinement to 5 rounds is {100 * refine['gap']:.2f} points below centralized "
                         f"(seed mean; worst seed {100 * refine['worst_gap']:.2f}; target within {REFINE_GAP}): "
                         f"{'met' if _within(refine['worst_gap'], REFINE_GAP) else 'not met'}; final weight error "
                         f"≤ {harness.sci(refine['weight_error'])}; weight error falling every round in every seed: "
                         f"{'yes' if falling else 'no'}; each round's upload {_kb(per_round)} per client (k rows of p).")
    return lines


# -- rendering ----------------------------------------------------------------------------------------


def markdown(payload: dict) -> str:
    setup, table = payload["setup"], summary(payload)
    central = payload["centralized"]["accuracy"]
    fed = setup["fedavg"]
    lines = [
        f"# Federated one-shot uploads on {setup['dataset']}, {setup['clients']} clients",
        "",
        f"Command: `{payload['command']}`; machine: {payload['machine']}.",
        "",
        *([f"Merged from {len(payload['parts'])} runs (part: command, code commit): "
           + "; ".join(f"{i}: `{part['command']}`, {part['code']}" for i, part in enumerate(payload["parts"])) + ".", ""]
          if "parts" in payload else []),
        *(["Re-measured (a later part replaced an earlier one's run): " + "; ".join(
            f"{r['method']}, {r['partition']}, seed {r['seed']}: part {r['part']} by part {r['by']}" for r in payload["replaced"]) + ".", ""]
          if payload.get("replaced") else []),
        *(["Runs in which not every client's upload arrived before the deadline (the head lacks their data): " + "; ".join(
            f"{r['method']}, {r['partition']}, seed {r['seed']}: {r['accepted']} of {setup['clients']}" for r in short) + ".", ""]
          if (short := [r for r in payload["runs"] if r["accepted"] < setup["clients"]]) else []),
        *([f"Left out when merging: {payload['dropped']['runs']} runs of "
           + ", ".join(f"`{m}`" for m in payload["dropped"]["methods"]) + " (measured by earlier code).", ""]
          if payload.get("dropped", {}).get("runs") else []),
        f"{setup['n_train']:,} training points split over {setup['clients']} clients, {setup['n_test']:,} test points; "
        f"FCNN features (`RandomFCNN(d, seed=0)`), "
        f"λ = {setup['reg']:g}; seeds {setup['seeds']}. One-shot runs use the app's in-process engine "
        f"(the same ClientApp/ServerApp code and head as the Simulation Engine on Ray). Centralized KRR on the whole "
        f"training split: {100 * central:.2f}%. FedAvg: a linear head (and, where a row says so, a ReLU MLP with one "
        f"hidden layer) on the same features, cross-entropy, SGD lr {fed['lr']:g}, batch {fed['batch_size']}, "
        f"{fed['local_epochs']} local epoch, all clients every round, {fed['rounds']} rounds; its bytes are the uploads "
        f"(one model per client per round; the download doubles them). {_fedavg_engines(payload)}",
        "",
        "Bytes are the serialised upload arrays as Flower counts them, per client (mean over clients and seeds) and in "
        f"total (mean over seeds). {harness.load_note(payload['load_average'])} Torch threads: {setup['threads']}.",
        "",
    ]
    for cell, rows in table.items():
        lines += [f"## {_cell_name(cell)}", "",
                  "| method | seeds | accuracy (%) | below centralized (points) | bytes per client | bytes in total | FedAvg rounds (bytes) to reach it | wall time (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        curve = rows.get(FEDAVG, {}).get("curve")
        for label, row in rows.items():
            reach = "–"
            if curve and not is_fedavg(label):
                t = rounds_to_reach(curve, row["acc"])
                reach = f"not in {len(curve)}" if t is None else f"{t} ({_kb(t * rows[FEDAVG]['per_round'] * setup['clients'])})"
            bytes_client = (f"{_kb(row['per_round'])} per round" if is_fedavg(label) else _kb(row["bytes_client"]))
            lines.append(f"| {label} | {row['seeds']} | {100 * row['acc']:.2f} ± {100 * row['std']:.2f} | {100 * row['gap']:.2f} | "
                         f"{bytes_client} | {_kb(row['bytes_total'])} | {reach} | {row['wall']:.1f} |")
        if curve:
            marks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200) if t <= len(curve)]
            for label in (lb for lb in rows if is_fedavg(lb)):
                lines += ["", f"{label} accuracy (seed mean) after "
                          + ", ".join(f"{t}: {100 * rows[label]['curve'][t - 1]:.2f}%" for t in marks) + " rounds."]
        errors = weight_errors(payload, cell)
        if errors:
            accuracies = {r["seed"]: [a["accuracy"] for a in r["refinement"]] for r in payload["runs"]
                          if r["method"] == REFINED and r["partition"] == cell}
            lines += ["", f"Refinement (`{REFINED}`), seed by seed: relative weight error to centralized KRR after rounds "
                      "1 (the one-shot head), 2, ...: " + "; ".join(f"seed {seed}: " + " → ".join(harness.sci(e) for e in errs)
                                                                    for seed, errs in errors.items())
                      + "; test accuracy (%) after rounds 2, 3, ...: " + "; ".join(
                          f"seed {seed}: " + " → ".join(f"{100 * a:.2f}" for a in accs) for seed, accs in accuracies.items()) + "."]
        lines.append("")
    found = targets(payload)
    if found:
        lines += ["## Targets of issue 8", ""] + [f"- {line}" for line in found] + [""]
    return "\n".join(lines)


def readme(payload: dict) -> str:
    setup, table = payload["setup"], summary(payload)
    cells = list(table)
    order = [*METHODS, FEDAVG]
    labels = sorted({label for rows in table.values() for label in rows}, key=lambda m: order.index(m) if m in order else len(order))
    lines = [
        f"{setup['dataset']}, {setup['clients']} clients, FCNN features, λ = {setup['reg']:g}, "
        f"{len(setup['seeds'])} seed(s); centralized KRR {100 * payload['centralized']['accuracy']:.2f}%; "
        "accuracy (%) as seed mean ± std and bytes per client. "
        + (f"Measured by {len(payload['parts'])} runs of `experiments/federated_oneshot.py` for different seeds and "
           "methods, merged with `--merge` (every command in the result's .md)"
           if "parts" in payload else f"Measured with `{payload['command']}`")
        + f" on the app's in-process engine; {payload['machine']}.",
        "",
        "| method | " + " | ".join(_cell_name(c) for c in cells) + " | bytes per client (mean over the columns) |",
        "|---|" + "---|" * len(cells) + "---|",
    ]

    def shown(row: dict) -> str:
        return f"{100 * row['acc']:.2f} ± {100 * row['std']:.2f}" if row["seeds"] > 1 else f"{100 * row['acc']:.2f} (1 seed)"

    for label in labels:
        shown_cells = [shown(table[c][label]) if label in table[c] else "–" for c in cells]
        held = [table[c][label] for c in cells if label in table[c]]
        size = (f"{_kb(held[0]['per_round'])} per round" if is_fedavg(label)
                else _kb(mean(row["bytes_client"] for row in held)))
        lines.append(f"| {label} | " + " | ".join(shown_cells) + f" | {size} |")
    found = targets(payload)
    if found:
        lines += [""] + [f"- {line}" for line in found]
    return "\n".join(lines) + "\n"


def plot(payload: dict, out: Path, name: str) -> list[Path]:
    """Accuracy against total bytes (log x) and FedAvg's accuracy per round; one panel per partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, setup = summary(payload), payload["setup"]
    central = 100 * payload["centralized"]["accuracy"]

    def by_bytes(ax, rows: dict) -> None:
        for i, (label, row) in enumerate(rows.items()):
            if is_fedavg(label):
                xs = [row["per_round"] * setup["clients"] * t for t in range(1, len(row["curve"]) + 1)]
                ax.plot(xs, [100 * a for a in row["curve"]], "-" if label == FEDAVG else "--", color="gray", label=label)
            else:
                ax.errorbar(row["bytes_total"], 100 * row["acc"], yerr=100 * row["std"], fmt="osD^v<>"[i % 7], capsize=3,
                            color=plt.cm.tab20(i % 20), label=label)
        ax.axhline(central, color="black", ls=":", label="centralized KRR")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("total upload bytes")

    def by_rounds(ax, rows: dict) -> None:
        for label in (lb for lb in rows if is_fedavg(lb)):
            curve = rows[label]["curve"]
            ax.plot(range(1, len(curve) + 1), [100 * a for a in curve], "k-" if label == FEDAVG else "k--", label=label)
        for i, (label, row) in enumerate((lb, r) for lb, r in rows.items() if not is_fedavg(lb)):
            ax.axhline(100 * row["acc"], color=plt.cm.tab20(i % 20), lw=1, label=label)
        ax.set_xlabel("FedAvg round")
        ax.set_ylim(max(0, 100 * min(r["acc"] for r in rows.values()) - 5), central + 2)

    paths = []
    for suffix, draw in (("bytes", by_bytes), ("rounds", by_rounds)):
        fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table) + 2.5, 4.5), squeeze=False)
        for ax, (cell, rows) in zip(axes[0], table.items()):
            draw(ax, rows)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{setup['dataset']}, {setup['clients']} clients, {_cell_name(cell)}")
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.tight_layout()
        paths.append(out / f"{name}_{suffix}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n\n")[0], data="the dataset: a .npz, an IDX folder or a torchvision root "
                            "(not needed for digits)", seeds=(0, 1, 2))
    parser.add_argument("--dataset", default="mnist", choices=("digits", "mnist", "fashion-mnist", "cifar10"))
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                        help="one-shot methods (default: all; none: FedAvg only): " + "; ".join(METHODS))
    parser.add_argument("--reg", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=300.0,
                        help="seconds the server waits for the uploads of each run (a slow machine may need more)")
    parser.add_argument("--fedavg-rounds", type=int, default=20, help="FedAvg rounds (0: no FedAvg run)")
    parser.add_argument("--fedavg-lr", type=float, default=0.1)
    parser.add_argument("--fedavg-batch", type=int, default=64)
    parser.add_argument("--fedavg-models", nargs="+", default=["linear", "mlp"], choices=["linear", "mlp"],
                        help="the FedAvg models to train (default: both)")
    parser.add_argument("--fedavg-mlp", type=int, default=256, help="hidden units of the FedAvg MLP (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default: 1; faster on a busy machine)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="measure nothing: combine results of this script that hold other seeds or partitions")
    parser.add_argument("--drop", nargs="+", default=[], metavar="METHOD",
                        help="with --merge: leave out the inputs' runs of these methods (e.g. measured by older code)")
    parser.add_argument("--name", default=None, help="result name (default: federated_<dataset>_<clients>c, "
                        "with _<partition> when only one is measured)")
    args = parser.parse_args(argv)
    if not args.report_only and args.dataset != "digits" and args.merge is None:
        harness.require_data(parser, args, args.dataset)
    name = args.name or f"federated_{args.dataset}_{args.clients}c" + (f"_{args.partitions[0]}" if len(args.partitions) == 1 else "")
    report = harness.Report(__file__, name, args.out, argv)
    code = report.run(args.report_only, lambda: merge(args.merge, args.drop) if args.merge else measure(args), markdown, readme)
    if not args.report_only:
        for path in plot(report.load(), args.out, name):
            print(f"wrote {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
