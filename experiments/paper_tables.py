"""Reproduce Tables 3 and 4 of Chen, Huang & Weng (NeurIPS 2024) with distillmem.

Table 3: test accuracy of the original and the distilled KRR model for the
identity, FCNN and RFF maps at IPC 1 / 10 / 50 (seed 0, noise init, lambda_S = 0).
Table 4: FCNN over seeds 0-3, mean +- population std, with the wall time of a
whole run (loading the data file to the distilled model's test accuracy).

Each run executes in a fresh process so its peak memory (VmHWM, which
includes the ~0.4 GB of an imported torch) is its own.

    python experiments/paper_tables.py --dataset mnist            # ../shared/data/mnist.npz
    python experiments/paper_tables.py --dataset fashion-mnist    # /usr/share/datasets/fashion-mnist
    python experiments/paper_tables.py --dataset cifar10 --data ~/data   # a torchvision root

Writes experiments/results/<dataset>_paper_tables.{md,json} and a picture of
distilled points per init mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from distillmem._io import atomic_write_bytes
from distillmem.protocol import FEATURE_MAPS, RunResult, run_protocol
from distillmem.viz import save_image_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_isolated  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = {
    "mnist": REPO.parent / "shared" / "data" / "mnist.npz",
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
}
# The paper's figures (theory.md section 9): Table 3 per map and IPC ("original" first), Table 4 FCNN mean/std.
PAPER_TABLE3 = {
    "mnist": {"identity": (86.41, 86.41, 86.41, 86.41), "fcnn": (93.89, 93.89, 93.89, 93.85), "rff": (93.82, 93.82, 93.82, 93.82)},
    "cifar10": {"identity": (39.48,) * 4, "fcnn": (47.86, 47.87, 47.84, 47.81), "rff": (42.84, 42.84, 42.87, 42.73)},
    "cifar100": {"identity": (14.37,) * 4, "fcnn": (21.42, 21.41, 21.52, 21.49), "rff": (18.71, 18.70, 18.69, 18.57)},
}
PAPER_TABLE4 = {
    "mnist": {1: (93.72, 0.14, 16), 10: (93.69, 0.17, 16), 50: (93.62, 0.24, 16)},
    "cifar10": {1: (47.85, 0.10, 21), 10: (47.76, 0.12, 20), 50: (47.77, 0.06, 20)},
    "cifar100": {1: (21.58, 0.15, 20), 10: (21.59, 0.15, 20), 50: (21.58, 0.13, 25)},
}


def _record(result: RunResult, peak_gb: float) -> dict:
    row = {k: v for k, v in vars(result).items() if k != "distilled"}
    row["peak_rss_gb"] = peak_gb
    return row


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def table3_markdown(dataset: str, rows: list[dict], ipcs: list[int], maps: list[str]) -> str:
    paper = PAPER_TABLE3.get(dataset)
    lines = [
        f"### Table 3 on {dataset}: test accuracy (%), seed 0, noise init, lambda_S = 0",
        "",
        "| map | IPC | original | distilled | paper | same predictions | weight error | lambda | time (s) | peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fmap in maps:
        for ipc in ipcs:
            row = next(r for r in rows if r["feature_map"] == fmap and r["ipc"] == ipc and r["seed"] == 0)
            ref = "-"
            if paper and ipc in (1, 10, 50):
                ref = f"{paper[fmap][(1, 10, 50).index(ipc) + 1]:.2f} (orig. {paper[fmap][0]:.2f})"
            lines.append(
                f"| {fmap} | {ipc} | {_pct(row['original_accuracy'])} | {_pct(row['distilled_accuracy'])} | {ref} | "
                f"{_pct(row['agreement'])}% | {row['recovery_error']:.1e} | {row['reg']:.3g} | "
                f"{row['seconds']:.2f} | {row['peak_rss_gb']:.2f} |"
            )
    return "\n".join(lines)


def table4_markdown(dataset: str, rows: list[dict], ipcs: list[int], seeds: list[int]) -> str:
    paper = PAPER_TABLE4.get(dataset, {})
    lines = [
        f"### Table 4 on {dataset}: FCNN, seeds {seeds[0]}-{seeds[-1]}, mean +- std (ddof 0)",
        "",
        "| IPC | original | distilled | paper (distilled) | max weight error | time (s) | paper time (A5000 GPU, s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for ipc in ipcs:
        sel = [r for r in rows if r["feature_map"] == "fcnn" and r["ipc"] == ipc and r["seed"] in seeds]
        orig = [100 * r["original_accuracy"] for r in sel]
        dist = [100 * r["distilled_accuracy"] for r in sel]
        secs = [r["seconds"] for r in sel]
        ref = paper.get(ipc)
        lines.append(
            f"| {ipc} | {statistics.fmean(orig):.2f} +- {statistics.pstdev(orig):.2f} | "
            f"{statistics.fmean(dist):.2f} +- {statistics.pstdev(dist):.2f} | "
            f"{f'{ref[0]:.2f} +- {ref[1]:.2f}' if ref else '-'} | {max(r['recovery_error'] for r in sel):.1e} | "
            f"{statistics.fmean(secs):.2f} +- {statistics.pstdev(secs):.2f} | {ref[2] if ref else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=("digits", "mnist", "fashion-mnist", "cifar10", "cifar100"))
    parser.add_argument("--data", type=Path, help="dataset location (default: the copy on this machine, if known)")
    parser.add_argument("--maps", nargs="+", default=list(FEATURE_MAPS), choices=FEATURE_MAPS)
    parser.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    args = parser.parse_args(argv)
    data = args.data if args.data is not None else DEFAULT_DATA.get(args.dataset)
    if args.dataset != "digits" and data is None:
        parser.error(f"--data is required for {args.dataset}")
    if 0 not in args.seeds:
        parser.error("--seeds must include 0 (Table 3 uses seed 0)")
    args.out.mkdir(parents=True, exist_ok=True)

    common = dict(dataset=args.dataset, root=None if args.dataset == "digits" else data, device=args.device)
    rows, pictures = [], {}
    plan = [(fmap, ipc, 0) for fmap in args.maps for ipc in args.ipcs]
    if "fcnn" in args.maps:
        plan += [("fcnn", ipc, seed) for ipc in args.ipcs for seed in args.seeds if seed != 0]
    for fmap, ipc, seed in plan:
        result, peak = run_isolated(run_protocol, feature_map=fmap, ipc=ipc, seed=seed, **common)
        rows.append(_record(result, peak))
        print(f"{fmap:>8} ipc {ipc:>3} seed {seed}: original {_pct(result.original_accuracy)}  distilled "
              f"{_pct(result.distilled_accuracy)}  error {result.recovery_error:.1e}  {result.seconds:.2f} s  "
              f"{peak:.2f} GB", flush=True)
    # Pictures: the same FCNN model distilled from noise and from real points.
    picture_ipc = 10 if 10 in args.ipcs else args.ipcs[0]
    for init, contrast in (("noise", "minmax"), ("real", "clip")):
        result, _ = run_isolated(run_protocol, feature_map="fcnn", ipc=picture_ipc, seed=0, init=init, **common)
        path = args.out / f"{args.dataset}_fcnn_ipc{picture_ipc}_{init}.png"
        save_image_grid(result.distilled.images(), path, result.distilled.n_classes, contrast)
        pictures[init] = path.name

    seeds = sorted(args.seeds)
    markdown = [
        f"## {args.dataset}: closed-form distillation, paper protocol",
        "",
        f"Command: `python experiments/paper_tables.py --dataset {args.dataset}`; "
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{'device ' + args.device if args.device else 'CPU'}; {time.strftime('%Y-%m-%d')}.",
        "",
        table3_markdown(args.dataset, rows, args.ipcs, args.maps),
    ]
    if "fcnn" in args.maps:
        markdown += ["", table4_markdown(args.dataset, rows, args.ipcs, seeds)]
    markdown += ["", "Distilled points (FCNN, one column per class): " + ", ".join(f"{k}: `{v}`" for k, v in pictures.items()), ""]
    atomic_write_bytes(args.out / f"{args.dataset}_paper_tables.md", "\n".join(markdown).encode())
    payload = {"dataset": args.dataset, "torch": torch.__version__, "cpu_count": os.cpu_count(), "runs": rows}
    atomic_write_bytes(args.out / f"{args.dataset}_paper_tables.json", json.dumps(payload, indent=1).encode())
    print("\n".join(markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
