"""Federated heads on a frozen pretrained backbone (CIFAR-10, EfficientNet-Lite0 features): accuracy against total MB.

Every client holds the pooled features of its partition under the frozen
backbone (``federated.simulate(..., feature_map="efficientnet-lite0",
image_size=160, feature_cache=DIR)``: the features of each split are
computed once into the engine's feature cache and read by every client and
the server). Each one-shot method is one run of the federated app on its
in-process engine; FedAvg of a linear head (``federated.fedavg``) runs on the
same features and partitions. lambda is chosen once, centrally, on a seeded
10% of the training features (the grid of ``federated.task.REG_GRID``) and
then fixed for every method; centralized ridge on all training features at
that lambda is the reference every head is compared with. Bytes are the
serialised upload arrays as Flower counts them, summed over clients.

    python experiments/pretrained_federated.py --data path/to/cifar10.npz --cache path/to/cache
    python experiments/pretrained_federated.py --data path/to/cifar10.npz --cache path/to/cache \\
        --clients 100 --partitions dir0.1 --seeds 0 --out /tmp/pf --name part0       # one part
    python experiments/pretrained_federated.py --merge /tmp/pf/part*.json                  # one result
    python experiments/pretrained_federated.py --report-only

Writes experiments/results/pretrained_federated_cifar10.{json,md}, the plot
pretrained_federated_cifar10_bytes.png (accuracy against total MB, log x)
and the README block of that name.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import time
from pathlib import Path
from statistics import mean

import harness
from federated_oneshot import _kb, _stats, rounds_to_reach  # the same figures as the other federated tables

#: label -> (mode, simulate options). The order is the tables' order.
METHODS: dict[str, tuple[str, dict]] = {
    "moments (exact; Fed3R's statistics as points)": ("moments", {}),
    "stats (Fed3R / AFL upload)": ("stats", {}),
    "means (FedNCM / FedCOF upload)": ("means", {}),
    "sketch r=10": ("sketch", {"max_points": 10}),
    # r eigen-rows plus the k = 10 rows of the target R - C (float32 both); 37 rows are the most within issue 9's budget.
    "sketch 20 rows (r=10 + k, R - C)": ("sketch", {"max_points": 20}),
    "sketch 37 rows (r=27 + k, R - C)": ("sketch", {"max_points": 37}),
    "moments r=19 (truncated)": ("moments", {"max_points": 19}),
    "head averaging, ipc=1": ("ipc", {"ipc": 1}),
}
EXACT = ("moments (exact; Fed3R's statistics as points)", "stats (Fed3R / AFL upload)")
MEANS = "means (FedNCM / FedCOF upload)"
FEDAVG = "FedAvg, linear head"
CENTRAL = "centralized ridge (all training features)"
#: (partition, alpha) cells, named as on the command line.
PARTITIONS = {"dir0.5": ("dirichlet", 0.5), "dir0.1": ("dirichlet", 0.1)}
#: Issue 9's targets: the exact upload's weight error, and the best compressed upload's gap at
#: (100 clients, alpha 0.1) within the bytes of `means` plus 10 class means per client.
EXACT_ERROR = 1e-6
TARGET_CELL, TARGET_GAP, EXTRA_MEANS = (100, "dir0.1"), 1.0, 10


# -- measuring ------------------------------------------------------------------------------------


def measure(args) -> dict:
    import numpy as np
    import torch
    from flwr.app import Array, ArrayRecord
    from threadpoolctl import threadpool_limits

    from distillmem.data import train_val_split
    from distillmem.features import Identity
    from federated import Config, simulate
    from federated.fedavg import FedAvg
    from federated.features import backbone, head_arrays
    from federated.task import REG_GRID, RidgePath, accuracy, client_partition

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    cache = args.cache if args.subset is None else args.cache / f"subset-{args.subset[0]}-{args.subset[1]}"
    data_path = str(args.data) if args.subset is None else str(subset_file(args.data, *args.subset, cache))
    base = Config(dataset="cifar10", data_path=data_path, feature_map=args.backbone, image_size=args.image_size,
                  feature_cache=str(cache))
    load = [os.getloadavg()[0]]
    start = time.monotonic()
    data = head_arrays(base, data_path)  # the cached features of both splits (computed here the first time)
    features_s = time.monotonic() - start
    x, y, k = data.x_train.astype(np.float64), data.y_train, data.n_classes
    targets = np.eye(k)[y]
    fit, val = (np.sort(i.numpy()) for i in train_val_split(x.shape[0], 0.1, 0))
    path = RidgePath(x[fit].T @ x[fit], x[fit].T @ targets[fit])
    val_scores = [accuracy(Identity(), path.weights(r), x[val], y[val]) for r in REG_GRID]
    reg = float(REG_GRID[int(np.argmax(val_scores))])
    start = time.monotonic()
    reference = RidgePath(x.T @ x, x.T @ targets).weights(reg)
    central = {"accuracy": accuracy(Identity(), reference, data.x_test, data.y_test), "wall_time_s": time.monotonic() - start,
               "validation": {str(r): s for r, s in zip(REG_GRID, val_scores)}}
    print(f"features {features_s:.1f} s; lambda {reg:g}; centralized ridge {100 * central['accuracy']:.2f}%", flush=True)
    runs, fedavg = [], []
    for clients in args.clients:
        for cell in args.partitions:
            partition, alpha = PARTITIONS[cell]
            for seed in args.seeds:
                common = dict(dataset="cifar10", data=data_path, num_clients=clients, partition=partition, alpha=alpha,
                              feature_map=args.backbone, image_size=args.image_size, feature_cache=str(cache),
                              reg=reg, seed=seed, engine="inprocess", centralized=False, deadline_s=args.deadline)
                for label in args.methods:
                    mode, options = METHODS[label]
                    result = simulate(mode=mode, **common, **options)
                    if len(result["clients"]["accepted"]) != clients:
                        # A head from some of the clients is not the method's figure: stop rather than record it.
                        raise SystemExit(f"{label}, {clients} clients, {cell}, seed {seed}: only "
                                         f"{len(result['clients']['accepted'])} uploads accepted ({result['clients']}); "
                                         "raise --deadline on a loaded machine")
                    weights = result["head"].weights_.numpy()
                    runs.append({
                        "method": label, "clients": clients, "partition": cell, "seed": seed, "accuracy": result["accuracy"],
                        "weight_error": float(np.linalg.norm(weights - reference) / np.linalg.norm(reference)),
                        "upload_bytes": result["upload_bytes"], "total_bytes": result["total_upload_bytes"],
                        "accepted": len(result["clients"]["accepted"]), "wall_time_s": result["wall_time_s"],
                    })
                    print(f"{clients} clients {cell} seed {seed} {label}: {100 * result['accuracy']:.2f}% "
                          f"({runs[-1]['total_bytes'] / 1e6:,.2f} MB, {result['wall_time_s']:.1f} s)", flush=True)
                if args.fedavg_rounds == 0:
                    continue
                cfg = dataclasses.replace(base, num_clients=clients, partition=partition, alpha=alpha, seed=seed)
                parts = [client_partition(cfg, i, clients, data_path)[:2] for i in range(clients)]
                start = time.monotonic()
                model = FedAvg(Identity(), rounds=args.fedavg_rounds, lr=args.fedavg_lr, batch_size=args.fedavg_batch,
                               local_epochs=1, seed=seed).fit(parts, n_classes=k, eval_set=(data.x_test, data.y_test))
                per_round = int(ArrayRecord({n: Array(v) for n, v in model.parameters_().items()}).count_bytes())
                fedavg.append({"clients": clients, "partition": cell, "seed": seed,
                               "accuracy": [h["accuracy"] for h in model.history_],
                               "bytes_per_client_per_round": per_round, "wall_time_s": time.monotonic() - start})
                print(f"{clients} clients {cell} seed {seed} {FEDAVG}: {100 * model.history_[-1]['accuracy']:.2f}% after "
                      f"{args.fedavg_rounds} rounds ({fedavg[-1]['wall_time_s']:.1f} s)", flush=True)
    load.append(os.getloadavg()[0])
    return {
        "load_average": load,
        "setup": {
            "dataset": "cifar10", "n_train": int(x.shape[0]), "n_test": int(data.x_test.shape[0]), "p": int(x.shape[1]),
            "k": k, "backbone": backbone("cifar10", data_path, args.backbone, args.image_size).spec(),
            "subset": args.subset, "reg": reg, "seeds": args.seeds, "clients": args.clients, "partitions": args.partitions, "threads": args.threads,
            "features_s": features_s,
            "fedavg": {"rounds": args.fedavg_rounds, "lr": args.fedavg_lr, "batch_size": args.fedavg_batch,
                       "local_epochs": 1, "loss": "cross_entropy", "momentum": 0.0},
        },
        "centralized": central,
        "runs": runs,
        "fedavg": fedavg,
    }


def subset_file(data: Path, n_train: int, n_test: int, folder: Path) -> Path:
    """A seeded class-balanced subset of a CIFAR-10 .npz (n_train / 10 and n_test / 10 images per class), written once."""
    import numpy as np

    from distillmem.files import atomic_write_bytes

    path = folder / f"cifar10-subset-{n_train}-{n_test}.npz"
    if path.exists():
        return path
    if data.suffix != ".npz":
        raise SystemExit(f"--subset needs --data to be a .npz file, got {data}")
    arrays = np.load(data)
    rng = np.random.default_rng(0)
    picked = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = arrays[f"y_{split}"].reshape(-1)
        rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), n // 10, replace=False) for c in range(10)]))
        picked[f"x_{split}"], picked[f"y_{split}"] = arrays[f"x_{split}"][rows], y[rows]
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **picked)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def merge(paths: list[Path]) -> dict:
    """One result from the JSON of runs of this script that measured other client counts, partitions, seeds or methods.

    A later part's run of the same (method, clients, partition, seed) replaces an earlier one's; each part's
    command and machine are kept under ``parts``.
    """
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    same = ("dataset", "n_train", "n_test", "p", "k", "backbone", "subset", "reg", "threads")
    fedavg = [part["setup"]["fedavg"] for part in parts if part["fedavg"]]
    for path, part in zip(paths, parts):
        for key in same:
            if part["setup"][key] != first["setup"][key]:
                raise SystemExit(f"--merge {path}: setup {key} is {part['setup'][key]!r}, the first part's {first['setup'][key]!r}")
        if part["fedavg"] and part["setup"]["fedavg"] != fedavg[0]:
            raise SystemExit(f"--merge {path}: FedAvg setup {part['setup']['fedavg']!r} differs from {fedavg[0]!r}")
        if part["centralized"]["accuracy"] != first["centralized"]["accuracy"]:
            raise SystemExit(f"--merge {path}: centralized accuracy differs from the first part's")
    latest: dict[tuple, dict] = {}
    for part in parts:
        for run in part["runs"]:
            latest[(run["method"], run["clients"], run["partition"], run["seed"])] = run
    fed: dict[tuple, dict] = {}
    for part in parts:
        for f in part["fedavg"]:
            fed[(f["clients"], f["partition"], f["seed"])] = f
    union = lambda key: sorted({v for p in parts for v in p["setup"][key]})  # noqa: E731
    return {
        "load_average": [max(p["load_average"][i] for p in parts) for i in (0, 1)],
        "setup": {**first["setup"], "fedavg": (fedavg or [first["setup"]["fedavg"]])[0], "seeds": union("seeds"),
                  "clients": union("clients"), "partitions": [c for c in PARTITIONS if c in union("partitions")]},
        "centralized": first["centralized"],
        "runs": list(latest.values()),
        "fedavg": list(fed.values()),
        "parts": [{k: part[k] for k in ("command", "machine", "load_average")} for part in parts],
    }


# -- summaries (pure functions of the JSON) -------------------------------------------------------------


def cells(payload: dict) -> list[tuple[int, str]]:
    """(clients, partition) of every measured cell, in table order."""
    setup = payload["setup"]
    return [(c, cell) for c in setup["clients"] for cell in setup["partitions"]
            if any(r["clients"] == c and r["partition"] == cell for r in payload["runs"])
            or any(f["clients"] == c and f["partition"] == cell for f in payload["fedavg"])]


def summary(payload: dict) -> dict[tuple[int, str], dict[str, dict]]:
    """{(clients, partition): {method: {acc, std, gap, worst_gap, seeds, bytes_client, bytes_client_max, bytes_total, ...}}}."""
    central = payload["centralized"]["accuracy"]
    table = {}
    for clients, cell in cells(payload):
        rows = {}
        for label in [m for m in METHODS if any(r["method"] == m for r in payload["runs"])]:
            runs = [r for r in payload["runs"] if r["method"] == label and r["clients"] == clients and r["partition"] == cell]
            if not runs:
                continue
            acc, std = _stats([r["accuracy"] for r in runs])
            rows[label] = {
                "acc": acc, "std": std, "gap": central - acc, "worst_gap": max(central - r["accuracy"] for r in runs),
                "seeds": len(runs), "bytes_client": mean(b for r in runs for b in r["upload_bytes"]),
                "bytes_client_max": max(b for r in runs for b in r["upload_bytes"]),
                "bytes_total": mean(r["total_bytes"] for r in runs), "weight_error": max(r["weight_error"] for r in runs),
                "wall": mean(r["wall_time_s"] for r in runs),
            }
        fed = [f for f in payload["fedavg"] if f["clients"] == clients and f["partition"] == cell]
        if fed:
            acc, std = _stats([f["accuracy"][-1] for f in fed])
            per_round, rounds = fed[0]["bytes_per_client_per_round"], len(fed[0]["accuracy"])
            rows[FEDAVG] = {
                "acc": acc, "std": std, "gap": central - acc, "seeds": len(fed), "per_round": per_round,
                "bytes_client": per_round * rounds, "bytes_total": per_round * clients * rounds, "rounds": rounds,
                "wall": mean(f["wall_time_s"] for f in fed),
                "curve": [mean(vals) for vals in zip(*(f["accuracy"] for f in fed))],
            }
        table[(clients, cell)] = rows
    return table


def budget(payload: dict, rows: dict[str, dict]) -> float | None:
    """Issue 9's per-client byte budget: the largest `means` upload plus 10 class means (p float64 each)."""
    if MEANS not in rows:
        return None
    return rows[MEANS]["bytes_client_max"] + EXTRA_MEANS * payload["setup"]["p"] * 8


def targets(payload: dict) -> list[str]:
    """Issue 9's federated targets this result speaks to, each with the figure reached and met or not."""
    table, lines = summary(payload), []
    exact = [r for r in payload["runs"] if r["method"] == EXACT[0]]
    if exact:
        worst = max(r["weight_error"] for r in exact)
        n = len({(r["clients"], r["partition"], r["seed"]) for r in exact})
        lines.append(f"`moments` against centralized ridge on all {n} partitions measured: relative weight error "
                     f"≤ {harness.sci(worst)} (target ≤ 1e-6): {'met' if worst <= EXACT_ERROR else 'not met'}.")
    for (clients, cell), rows in table.items():
        limit = budget(payload, rows)
        within = {m: r for m, r in rows.items() if m != FEDAVG and m not in EXACT and limit is not None
                  and r["bytes_client_max"] <= limit}
        if not within:
            continue
        best = max(within, key=lambda m: within[m]["acc"])
        row = within[best]
        verdict = (f"target within {TARGET_GAP:g}: {'met' if 100 * row['gap'] <= TARGET_GAP + 1e-9 else 'not met'}"
                   if (clients, cell) == TARGET_CELL else "for reference; the target is at 100 clients, α = 0.1")
        lines.append(
            f"{clients} clients, {_cell_name(cell)}: the best compressed upload within {_kb(limit)} per client (`means` plus "
            f"{EXTRA_MEANS} class means) is `{best}` ({_kb(row['bytes_client_max'])} per client at most), "
            f"{100 * row['gap']:.2f} points below centralized (seed mean; worst seed {100 * row['worst_gap']:.2f}); {verdict}.")
    if TARGET_CELL not in table:
        clients, cell = TARGET_CELL
        lines.append(f"{clients} clients, {_cell_name(cell)}: not measured in this result, so the compressed-upload target is open.")
    return lines


# -- rendering ----------------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}" if n >= 1e7 else f"{n / 1e6:,.2f}"


def _cell_name(cell: str) -> str:
    return f"Dirichlet α = {PARTITIONS[cell][1]:g}"


def _backbone_name(setup: dict) -> str:
    spec = setup["backbone"]["params"]
    return f"{spec['backbone'].replace('efficientnet', 'EfficientNet').replace('lite', 'Lite')} (ImageNet-1k), {spec['image_size']} px"


def _data_name(setup: dict) -> str:
    """CIFAR-10, or the subset it was run on."""
    if not setup.get("subset"):
        return "CIFAR-10"
    return (f"CIFAR-10 subset ({setup['n_train']:,} training and {setup['n_test']:,} test images, seeded and "
            "class-balanced)")


def _shown(row: dict) -> str:
    acc = f"{100 * row['acc']:.2f} ± {100 * row['std']:.2f}" if row["seeds"] > 1 else f"{100 * row['acc']:.2f} (1 seed)"
    return f"{acc} / {_mb(row['bytes_total'])}"


def fedcof_table(payload: dict) -> list[str]:
    """Accuracy (%) / total upload MB per method and cell, FedCOF's Table 3 layout, with the backbone named."""
    table, setup = summary(payload), payload["setup"]
    keys = list(table)
    labels = list(dict.fromkeys(m for rows in table.values() for m in rows))
    lines = ["| method | backbone | " + " | ".join(f"{c} clients, {_cell_name(cell)}" for c, cell in keys) + " |",
             "|---|---|" + "---|" * len(keys),
             f"| {CENTRAL} | {_backbone_name(setup)} | " + " | ".join(
                 f"{100 * payload['centralized']['accuracy']:.2f} / –" for _ in keys) + " |"]
    for label in labels:
        shown = []
        for key in keys:
            row = table[key].get(label)
            if row is None:
                shown.append("–")
            elif label == FEDAVG:
                shown.append(f"{100 * row['acc']:.2f} ± {100 * row['std']:.2f} / {_mb(row['bytes_total'])} ({row['rounds']} rounds)")
            else:
                shown.append(_shown(row))
        lines.append(f"| {label} | {_backbone_name(setup)} | " + " | ".join(shown) + " |")
    return lines


def markdown(payload: dict) -> str:
    setup, table = payload["setup"], summary(payload)
    fed = setup["fedavg"]
    lines = [
        f"# Federated heads on {_backbone_name(setup)} features, {_data_name(setup)}",
        "",
        f"Command: `{payload['command']}`; machine: {payload['machine']}.",
        "",
        *([f"Merged from {len(payload['parts'])} runs: " + "; ".join(f"`{part['command']}`" for part in payload["parts"]) + ".", ""]
          if "parts" in payload else []),
        f"{setup['n_train']:,} training images split over the clients, {setup['n_test']:,} test images; features: "
        f"{_backbone_name(setup)}, p = {setup['p']} (weights sha256 {setup['backbone']['params']['weights_sha256'][:12]}…), "
        f"computed once into the engine's feature cache. λ = {setup['reg']:g}, chosen once on a seeded 10% of the "
        f"training features by centralized ridge and fixed for every method. Centralized ridge on all training features: "
        f"{100 * payload['centralized']['accuracy']:.2f}%. One-shot methods run on the app's in-process engine. FedAvg: "
        f"linear head on the same features and partitions, cross-entropy, SGD lr {fed['lr']:g}, batch {fed['batch_size']}, "
        f"{fed['local_epochs']} local epoch, all clients every round, {fed['rounds']} rounds; its bytes are the uploads "
        "(one head per client per round; the download doubles them). Seeds change the partition, the distillation "
        "noise and FedAvg's initialisation and batches.",
        "",
        "Accuracy (%) as seed mean ± std / total upload MB (mean over seeds), as in FedCOF's Table 3:",
        "",
        *fedcof_table(payload),
        "",
        f"{harness.load_note(payload['load_average'])} Torch threads: {setup['threads']}.",
        "",
    ]
    for (clients, cell), rows in table.items():
        lines += [f"## {clients} clients, {_cell_name(cell)}", "",
                  "| method | seeds | accuracy (%) | below centralized (points) | bytes per client (mean / max) | total | "
                  "FedAvg rounds (total) to reach it | weight error | wall time (s) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        curve = rows.get(FEDAVG, {}).get("curve")
        for label, row in rows.items():
            reach = "–"
            if curve and label != FEDAVG:
                t = rounds_to_reach(curve, row["acc"])
                reach = f"not in {len(curve)}" if t is None else f"{t} ({_kb(t * rows[FEDAVG]['per_round'] * clients)})"
            size = (f"{_kb(row['per_round'])} per round" if label == FEDAVG
                    else f"{_kb(row['bytes_client'])} / {_kb(row['bytes_client_max'])}")
            error = "–" if label == FEDAVG else harness.sci(row["weight_error"])
            lines.append(f"| {label} | {row['seeds']} | {100 * row['acc']:.2f} ± {100 * row['std']:.2f} | {100 * row['gap']:.2f} | "
                         f"{size} | {_kb(row['bytes_total'])} | {reach} | {error} | {row['wall']:.1f} |")
        if curve:
            marks = [t for t in (1, 2, 5, 10, 20, 50, 100) if t <= len(curve)]
            lines += ["", "FedAvg accuracy (seed mean) after " + ", ".join(f"{t}: {100 * curve[t - 1]:.2f}%" for t in marks) + " rounds."]
        limit = budget(payload, rows)
        if limit is not None:
            lines += ["", f"Issue 9's byte budget here: {_kb(limit)} per client (the largest `means` upload plus "
                      f"{EXTRA_MEANS} class means of {setup['p']} float64)."]
        lines.append("")
    found = targets(payload)
    if found:
        lines += ["## Targets of issue 9", ""] + [f"- {line}" for line in found] + [""]
    return "\n".join(lines)


def readme(payload: dict) -> str:
    setup = payload["setup"]
    command = (f"`{payload['parts'][0]['command']}` and {len(payload['parts']) - 1} more runs of the script for other "
               "cells and seeds, merged with `--merge` (every command in the result's .md)" if "parts" in payload
               else f"`{payload['command']}`")
    lines = [
        f"{_data_name(setup)}, {_backbone_name(setup)} features (p = {setup['p']}), λ = {setup['reg']:g}, "
        f"{len(setup['seeds'])} seed(s); accuracy (%) as seed mean ± std / total upload MB over all clients. "
        f"Measured with {command} on the app's in-process engine; "
        f"{payload['parts'][0]['machine'] if 'parts' in payload else payload['machine']}.",
        "",
        *fedcof_table(payload),
    ]
    found = targets(payload)
    if found:
        lines += [""] + [f"- {line}" for line in found]
    return "\n".join(lines) + "\n"


def plot(payload: dict, out: Path, name: str) -> Path:
    """Accuracy against total upload MB (log x), one panel per cell; FedAvg as its curve over rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, central = summary(payload), 100 * payload["centralized"]["accuracy"]
    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table) + 2.5, 4.5), squeeze=False)
    for ax, ((clients, cell), rows) in zip(axes[0], table.items()):
        for i, (label, row) in enumerate(rows.items()):
            if label == FEDAVG:
                xs = [row["per_round"] * clients * t / 1e6 for t in range(1, len(row["curve"]) + 1)]
                ax.plot(xs, [100 * a for a in row["curve"]], "-", color="gray", label=f"{label} (per round)")
            else:
                ax.errorbar(row["bytes_total"] / 1e6, 100 * row["acc"], yerr=100 * row["std"], fmt="osD^v<>"[i % 7],
                            capsize=3, color=plt.cm.tab10(i % 10), label=label)
        ax.axhline(central, color="black", ls=":", label="centralized ridge")
        ax.set_xscale("log")
        ax.set_xlabel("total upload (MB)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{clients} clients, {_cell_name(cell)}")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"{_data_name(payload['setup'])}, {_backbone_name(payload['setup'])} features")
    fig.tight_layout()
    path = out / f"{name}_bytes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n\n")[0], data="CIFAR-10: a .npz or a torchvision root", seeds=(0, 1, 2))
    parser.add_argument("--cache", type=Path, default=None, help="feature cache folder (the features are computed there once)")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--subset", nargs=2, type=int, default=None, metavar=("N_TRAIN", "N_TEST"),
                        help="run on a seeded class-balanced subset of the .npz (its features cached in a subfolder of --cache)")
    parser.add_argument("--clients", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                        help="one-shot methods (default: all): " + "; ".join(METHODS))
    parser.add_argument("--deadline", type=float, default=3600.0,
                        help="seconds the server waits for the uploads (default: %(default)s; every client must answer)")
    parser.add_argument("--fedavg-rounds", type=int, default=20, help="FedAvg rounds (0: no FedAvg run)")
    parser.add_argument("--fedavg-lr", type=float, default=0.1)
    parser.add_argument("--fedavg-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default: 1; faster on a busy machine)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="measure nothing: combine results of this script that hold other cells, seeds or methods")
    parser.add_argument("--name", default="pretrained_federated_cifar10", help="result name (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.report_only and args.merge is None:
        harness.require_data(parser, args, "CIFAR-10")
        if args.cache is None:
            parser.error("--cache is required to measure: the folder of the feature cache")
    report = harness.Report(__file__, args.name, args.out, argv)
    code = report.run(args.report_only, lambda: merge(args.merge) if args.merge else measure(args), markdown, readme)
    if not args.report_only:
        print(f"wrote {plot(report.load(), args.out, args.name)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
