"""Wall time and peak memory of one paper-protocol run on data of CIFAR shape.

CIFAR-10 is not needed: this writes random uint8 images of CIFAR-10's shape
(50,000 + 10,000 images, 3 x 32 x 32, 10 classes) to a temporary .npz and runs
the same protocol as experiments/paper_tables.py on it (FCNN, p = d = 3,072),
timed from loading that file to the distilled model's test accuracy. Accuracy
is meaningless on random labels; the weight error is not. One more run, also in
a fresh process, times the protocol's stages one by one.

    python experiments/cifar_shape_timing.py --repeats 4 [--ipc 10] [--device cuda]
    python experiments/cifar_shape_timing.py --n-train 2000 --n-test 500 --out /tmp/x   # a quick check
    python experiments/cifar_shape_timing.py --repeats 4 --report-only

Writes experiments/results/cifar_shape_<map>_<device>.{md,json}; the README block of that name.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np

from distillmem import KRR, KRRDistiller
from distillmem.data import load_dataset
from distillmem.protocol import FEATURE_MAPS, make_feature_map, run_protocol

N_TRAIN, N_TEST, SHAPE, K = 50_000, 10_000, (32, 32, 3), 10
TARGET_SECONDS = 20.0  # the paper's GPU time for one CIFAR-10 run is 20-21 s
#: The stages that profile_stages times, in order.
STAGES = ("loading", "original model (features, Gram, lambda)", "distillation", "refit and test predictions")
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def write_random_cifar(path: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(n_train, *SHAPE), dtype=np.uint8),
        y_train=rng.integers(0, K, size=n_train),
        x_test=rng.integers(0, 256, size=(n_test, *SHAPE), dtype=np.uint8),
        y_test=rng.integers(0, K, size=n_test),
    )


def profile_stages(path: Path, feature_map: str, ipc: int, device: str | None) -> dict[str, float]:
    """Seconds of each stage of one protocol run (as run_protocol does them), timed one by one."""
    marks = [time.perf_counter()]
    data = load_dataset("cifar10", path)
    marks.append(time.perf_counter())
    fmap = make_feature_map(feature_map, data.n_features, 0)
    teacher = KRR(fmap, reg="auto", seed=0, refit=False, n_classes=data.n_classes, device=device)
    teacher.fit(data.x_train, data.y_train)
    marks.append(time.perf_counter())
    distiller = KRRDistiller(ipc=ipc, seed=0).fit(data.x_train, data.y_train, teacher=teacher)
    marks.append(time.perf_counter())
    student = distiller.distilled_.fit_krr(device=device)
    teacher.predict(data.x_test), student.predict(data.x_test)
    marks.append(time.perf_counter())
    return dict(zip(STAGES, np.diff(marks).tolist()))


def measure(args) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random_cifar10.npz"
        write_random_cifar(path, args.n_train, args.n_test)
        for _ in harness.progress(range(args.repeats), "runs"):
            result, peak = harness.run_isolated(
                run_protocol, dataset="cifar10", root=path, feature_map=args.feature_map, ipc=args.ipc, device=args.device
            )
            runs.append({"seconds": result.seconds, "peak_rss_gb": peak, "recovery_error": result.recovery_error,
                         "agreement": result.agreement, "n_train": result.n_train})
            print(f"{result.seconds:.2f} s, peak RSS {peak:.2f} GB, weight error {result.recovery_error:.1e}", flush=True)
        stages, _ = harness.run_isolated(profile_stages, path=path, feature_map=args.feature_map, ipc=args.ipc, device=args.device)
    return {"stages": stages, "feature_map": args.feature_map, "ipc": args.ipc, "device": args.device or "cpu",
            "n_train": args.n_train, "n_test": args.n_test, "runs": runs}


def _count(n: int) -> str:
    return NUMBERS[n] if n < len(NUMBERS) else str(n)


def markdown(payload: dict) -> str:
    lines = [
        f"### CIFAR-shape run ({payload['feature_map']}, IPC {payload['ipc']}, {payload['device']})",
        "",
        f"Command: `{payload['command']}`; machine: {payload['machine']}.",
        "",
        "| run | n train | time (s) | peak RSS (GB) | weight error | same predictions |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {i} | {r['n_train']} | {r['seconds']:.2f} | {r['peak_rss_gb']:.2f} | {r['recovery_error']:.1e} | {100 * r['agreement']:.2f}% |"
              for i, r in enumerate(payload["runs"])]
    if "stages" in payload:
        lines += ["", "| stage (one more run) | time (s) |", "|---|---|"]
        lines += [f"| {name} | {seconds:.2f} |" for name, seconds in payload["stages"].items()]
    return "\n".join(lines) + "\n"


def readme(payload: dict) -> str:
    runs = payload["runs"]
    seconds = sorted(r["seconds"] for r in runs)
    listed = ", ".join(f"{s:.2f}" for s in seconds[:-1]) + (" and " if len(seconds) > 1 else "") + f"{seconds[-1]:.2f}"
    over = sum(s > TARGET_SECONDS for s in seconds)
    n = len(runs)
    return "\n".join([
        f"Random uint8 data of CIFAR-10's shape, n = {payload['n_train']:,} and d = p = 3,072, with "
        f"{payload['feature_map'].upper()} features and IPC {payload['ipc']}: `{payload['command']}` on {payload['machine']}.",
        "",
        f"- {_count(n).capitalize()} run{'s' if n > 1 else ''} took {listed} s, so the median is "
        f"{statistics.median(seconds):.1f} s; "
        + (f"none is over the {TARGET_SECONDS:.0f} s target." if over == 0 else
           f"{_count(over)} of the {_count(n)} {'is' if over == 1 else 'are'} over the {TARGET_SECONDS:.0f} s target."),
        f"- Peak memory was {harness.span([r['peak_rss_gb'] for r in runs], '.2f')} GB and the weight error "
        f"at most {harness.sci(max(r['recovery_error'] for r in runs))}; the distilled model made the same predictions "
        f"as the original on {harness.same_share(min(r['agreement'] for r in runs))} of test points.",
        "- The paper reports 20–21 s per CIFAR-10 run on an A5000 GPU.",
        *_stages(payload),
    ])


def _stages(payload: dict) -> list[str]:
    """The profile bullet, for results that have one (earlier runs did not record it)."""
    stages = payload.get("stages")
    if stages is None:
        return []
    return ["- One more run, stage by stage: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items()) + "."]


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n\n")[0], device=True)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--feature-map", default="fcnn", choices=FEATURE_MAPS)
    parser.add_argument("--repeats", type=int, default=2, help="runs, each in a fresh process (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=N_TRAIN, help="training images (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=N_TEST, help="test images (default: %(default)s)")
    args = parser.parse_args(argv)
    device = (args.device or "cpu").replace(":", "")
    for name in ("repeats", "n_train", "n_test"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    report = harness.Report(__file__, f"cifar_shape_{args.feature_map}_{device}", args.out, argv)
    return report.run(args.report_only, lambda: measure(args), markdown, readme)


if __name__ == "__main__":
    sys.exit(main())
