"""Wall time and peak memory of one paper-protocol run on data of CIFAR shape.

CIFAR-10 is not on this machine, so this writes random uint8 images of CIFAR-10's
shape (50,000 + 10,000 images, 3 x 32 x 32, 10 classes) to a temporary .npz and
runs the same protocol as experiments/paper_tables.py on it (FCNN, p = d = 3,072),
timed from loading that file to the distilled model's test accuracy. Accuracy
is meaningless on random labels; the weight error is not.

    python experiments/cifar_shape_timing.py [--ipc 10] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distillmem._io import atomic_write_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import run_isolated  # noqa: E402
from paper_tables import REPO  # noqa: E402

from distillmem.protocol import run_protocol  # noqa: E402


def write_random_cifar(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(50_000, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, size=50_000),
        x_test=rng.integers(0, 256, size=(10_000, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, size=10_000),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--feature-map", default="fcnn", choices=("identity", "fcnn", "rff"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random_cifar10.npz"
        write_random_cifar(path)
        for _ in range(args.repeats):
            result, peak = run_isolated(
                run_protocol, dataset="cifar10", root=path, feature_map=args.feature_map, ipc=args.ipc, device=args.device
            )
            runs.append({"seconds": result.seconds, "peak_rss_gb": peak, "recovery_error": result.recovery_error,
                         "agreement": result.agreement, "n_train": result.n_train})
            print(f"{result.seconds:.2f} s, peak RSS {peak:.2f} GB, weight error {result.recovery_error:.1e}", flush=True)
    device = args.device or "cpu"
    lines = [
        f"### CIFAR-shape run ({args.feature_map}, IPC {args.ipc}, {device}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')})",
        "",
        "Command: `python experiments/cifar_shape_timing.py" + (f" --device {args.device}" if args.device else "") + "`",
        "",
        "| run | n train | time (s) | peak RSS (GB) | weight error | same predictions |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {i} | {r['n_train']} | {r['seconds']:.2f} | {r['peak_rss_gb']:.2f} | {r['recovery_error']:.1e} | {100 * r['agreement']:.2f}% |"
              for i, r in enumerate(runs)]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"cifar_shape_{args.feature_map}_{device.replace(':', '')}"
    atomic_write_bytes(args.out / f"{stem}.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(args.out / f"{stem}.json", json.dumps({"device": device, "runs": runs}, indent=1).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
