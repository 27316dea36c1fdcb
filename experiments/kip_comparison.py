"""Closed-form distillation against random subsets, herding and KIP on MNIST (Chen et al. 2024, Table 4).

Every method is judged by one protocol: the FCNN map of ``distillmem.protocol``
(seed s), a KRR head refitted on the method's set (its own ridge), and test
accuracy on the official 10k test split. The training pool is the 95% part of
the seeded 95/5 split that the closed form's original model is fitted on, and
every set's weight error is measured against that model.

Wall time is that of a whole run, from loading the data file to the test
accuracy (the paper's timing protocol). KIP runs for a fixed, small step
budget; its time per step is also extrapolated linearly to the paper's 30,000
steps (an extrapolation, not a measurement).

    python experiments/kip_comparison.py --data path/to/mnist.npz               # 150 KIP steps
    python experiments/kip_comparison.py --data path/to/mnist.npz --kip-steps 500 --ipcs 1 10
    python experiments/kip_comparison.py --report-only

Writes experiments/results/kip_comparison.{md,json}; the README block kip_comparison.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import harness

from distillmem import KRR, DistilledSet
from distillmem.baselines import KIP_PAPER_STEPS, herding, kip, random_subset
from distillmem.data import load_dataset, train_val_split
from distillmem.protocol import make_feature_map, run_protocol

DEFAULT_STEPS = 150
# Table 4 of the paper (MNIST, FCNN, 4 seeds, A5000 GPU seconds): IPC -> (KIP acc, KIP s, ours acc, ours s).
PAPER_TABLE4 = {1: (93.44, 159, 93.72, 16), 10: (93.75, 554, 93.69, 16), 50: (93.72, 3114, 93.62, 16)}
METHODS = ("closed form", "random", "herding", "KIP")


def _accuracy(s: DistilledSet, x_test, y_test) -> float:
    return harness.accuracy(s.fit_krr().predict(x_test), y_test)


def run_baseline(method: str, root: Path, ipc: int, seed: int, teacher: KRR, steps: int) -> dict:
    """One whole run of a baseline: load, split, build the set, refit, test."""
    start = time.perf_counter()
    data = load_dataset("mnist", root)
    train_idx, val_idx = train_val_split(len(data.y_train), 0.05, seed)
    x, y = data.x_train[train_idx], data.y_train[train_idx]
    fmap = make_feature_map("fcnn", data.n_features, seed)
    common = dict(ipc=ipc, feature_map=fmap, teacher=teacher, dataset=data.name, mean=data.mean, std=data.std)
    if method == "random":
        s = random_subset(x, y, seed=seed, **common)
    elif method == "herding":
        s = herding(x, y, **common)
    else:
        s = kip(x, y, steps=steps, init="real", seed=seed, progress=True, **common)
    accuracy = _accuracy(s, data.x_test, data.y_test)
    row = {
        "method": method,
        "ipc": ipc,
        "seed": seed,
        "test_accuracy": accuracy,
        "seconds": time.perf_counter() - start,
        "method_seconds": s.provenance.seconds,
        "reg": s.reg,
        "recovery_error": s.recovery_error,
    }
    if method in ("random", "herding"):
        # Not part of the timed run: the same points with lambda chosen on the 5% validation part.
        tuned = KRR(s.feature_map(), reg="auto", n_classes=data.n_classes).fit(
            s.x, s.y, eval_set=(data.x_train[val_idx], data.y_train[val_idx])
        )
        row["tuned_reg"] = tuned.reg_
        row["tuned_test_accuracy"] = tuned.score(data.x_test, data.y_test)
    if method == "KIP":
        keys = ("steps", "lr", "batch_size", "learn_labels", "dtype", "cache_features",
                "initial_loss", "final_loss", "setup_seconds", "step_seconds")
        row.update({"init": s.provenance.init, **{k: s.provenance.extras[k] for k in keys}})
        fixed = row["seconds"] - steps * row["step_seconds"]
        row["fixed_seconds"] = fixed
        row["extrapolated_paper_seconds"] = fixed + KIP_PAPER_STEPS * row["step_seconds"]
    return row


def run_closed_form(root: Path, ipc: int, seed: int) -> dict:
    result = run_protocol("mnist", root, feature_map="fcnn", ipc=ipc, seed=seed)
    return {
        "method": "closed form",
        "ipc": ipc,
        "seed": seed,
        "test_accuracy": result.distilled_accuracy,
        "original_accuracy": result.original_accuracy,
        "seconds": result.seconds,
        "reg": result.distilled.reg,
        "teacher_reg": result.reg,
        "recovery_error": result.recovery_error,
    }


def markdown(payload: dict) -> str:
    rows, meta = payload["runs"], payload["meta"]
    steps = meta["kip_steps"]
    lines = [
        "## MNIST: closed-form distillation vs random subset, herding and KIP (FCNN map, KRR evaluation)",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Machine: {payload['machine']}; load average {meta['load_before'][0]:.1f} before, "
        f"{meta['load_after'][0]:.1f} after (the CPU was shared with other processes, so times are upper bounds).",
        "",
        f"Protocol: seed {meta['seed']}, 95/5 split of the 60k training images (pool n = {meta['n_pool']}), "
        f"FCNN map (one LeakyReLU(0.1) layer, p = d = 784), KRR head refitted on each set with the set's "
        f"lambda, accuracy on the 10k test images. Original model (lambda = {meta['teacher_reg']:.3g} chosen on "
        f"the 5%): {100 * meta['original_accuracy']:.2f}%. "
        f"Random and herding: one-hot targets, lambda = 0 (notes: the same points with lambda chosen on the "
        f"5% validation part, outside the timed run); herding in the FCNN embedding. KIP: real-image "
        f"init, Adam lr {meta['kip_lr']}, batch {meta['kip_batch_size']}, lambda_S = 1e-6 tr(K_S)/m, labels "
        f"re-solved in closed form each step, {meta['kip_dtype']}, **{steps} steps** (the paper: {KIP_PAPER_STEPS}). "
        "Wall time = whole run from loading the data file to test accuracy.",
        "",
        "| IPC | method | test acc. (%) | wall time (s) | weight error vs original | notes |",
        "|---|---|---|---|---|---|",
    ]
    for ipc in meta["ipcs"]:
        for method in METHODS:
            row = next((r for r in rows if r["ipc"] == ipc and r["method"] == method), None)
            if row is None:
                continue
            note = ""
            if method == "KIP":
                note = (f"{row['step_seconds']:.3f} s/step, loss {row['initial_loss']:.4f} -> {row['final_loss']:.4f}")
            elif method == "closed form":
                note = f"lambda_S = {row['reg']:.3g}"
            else:
                note = f"{100 * row['tuned_test_accuracy']:.2f}% with lambda = {row['tuned_reg']:.3g} chosen on the 5% split"
            lines.append(
                f"| {ipc} | {method} | {100 * row['test_accuracy']:.2f} | {row['seconds']:.1f} | "
                f"{row['recovery_error']:.2e} | {note} |"
            )
    lines += [
        "",
        f"### Speed-up of the closed form over KIP ({steps} steps measured; 30,000 steps extrapolated)",
        "",
        "| IPC | closed form (s) | KIP, " + str(steps) + " steps (s) | speed-up at " + str(steps) + " steps "
        "| KIP at 30,000 steps, **extrapolated** (s) | speed-up, **extrapolated** | paper KIP / ours (A5000 s) | paper speed-up | paper acc. KIP / ours (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ipc in meta["ipcs"]:
        closed = next((r for r in rows if r["ipc"] == ipc and r["method"] == "closed form"), None)
        kip_row = next((r for r in rows if r["ipc"] == ipc and r["method"] == "KIP"), None)
        if closed is None or kip_row is None:
            continue
        paper = PAPER_TABLE4.get(ipc)
        ref = (f"{paper[1]} / {paper[3]} | {paper[1] / paper[3]:.1f}x | {paper[0]:.2f} / {paper[2]:.2f}"
               if paper else "- | - | -")
        lines.append(
            f"| {ipc} | {closed['seconds']:.1f} | {kip_row['seconds']:.1f} | {kip_row['seconds'] / closed['seconds']:.1f}x | "
            f"{kip_row['extrapolated_paper_seconds']:.0f} | {kip_row['extrapolated_paper_seconds'] / closed['seconds']:.0f}x | {ref} |"
        )
    lines += [
        "",
        "Extrapolation: (KIP wall time - steps x mean step time) + 30,000 x mean step time, i.e. the fixed cost "
        "(loading, features of the pool, final refit and test) plus the measured per-step cost, assumed constant. "
        f"KIP accuracies here are after {steps} steps, not 30,000, so they are not comparable with the paper's KIP "
        "column. The paper's times are GPU seconds on an A5000, ours CPU seconds; compare ratios, not seconds.",
        "",
    ]
    return "\n".join(lines)


def readme(payload: dict) -> str:
    rows, meta = payload["runs"], payload["meta"]
    ipcs, steps = meta["ipcs"], meta["kip_steps"]
    closed = [r for r in rows if r["method"] == "closed form"]
    names = {"closed form": f"closed form, {harness.span([r['seconds'] for r in closed], '.1f')} s",
             "KIP": f"KIP, {steps} steps", "herding": "herding", "random": "random"}
    lines = [f"MNIST with FCNN features, IPC {' / '.join(map(str, ipcs))}, all evaluated by refitting a KRR head on "
             f"the set: `{payload['command']}` on {payload['machine']}.",
             "", "| method | " + " | ".join(f"IPC {i}" for i in ipcs) + " |", "|---|" + "---|" * len(ipcs)]
    for method in ("closed form", "KIP", "herding", "random"):
        cells = [next((f"{100 * r['test_accuracy']:.2f}" for r in rows if r["method"] == method and r["ipc"] == i), "-")
                 for i in ipcs]
        lines.append(f"| {names[method]} | " + " | ".join(cells) + " |")
    pairs = [(c, k) for c in closed for k in rows if k["method"] == "KIP" and k["ipc"] == c["ipc"]]
    if pairs:
        measured = [k["seconds"] / c["seconds"] for c, k in pairs]
        extrapolated = [k["extrapolated_paper_seconds"] / c["seconds"] for c, k in pairs]
        lines += [
            "",
            f"- At {steps} steps the closed form is {harness.span(measured, '.0f')}× faster than KIP.",
            f"- Extrapolated from the measured cost per step to the paper's {KIP_PAPER_STEPS:,} steps, the speed-up "
            f"would be {harness.span([float(f'{x:.2g}') for x in extrapolated], ',.0f')}×. This figure is an extrapolation, not a measurement.",
        ]
    return "\n".join(lines)


def measure(args) -> dict:
    total_start = time.perf_counter()
    load_before = os.getloadavg()
    # The original model (as in run_protocol), fitted once to measure every set's weight error; not timed.
    print("fitting the original model ...", flush=True)
    data = load_dataset("mnist", args.data)
    fmap = make_feature_map("fcnn", data.n_features, args.seed)
    teacher = KRR(fmap, reg="auto", seed=args.seed, refit=False, n_classes=data.n_classes).fit(data.x_train, data.y_train)
    original = harness.accuracy(teacher.predict(data.x_test), data.y_test)
    print(f"original model: lambda {teacher.reg_:.3g}, test accuracy {100 * original:.2f}%", flush=True)
    del data

    rows = []
    for ipc, method in harness.progress([(i, m) for i in args.ipcs for m in METHODS], "runs"):
        if method == "closed form":
            row = run_closed_form(args.data, ipc, args.seed)
        else:
            row = run_baseline(method, args.data, ipc, args.seed, teacher, args.kip_steps)
        rows.append(row)
        extra = f"  {row['step_seconds']:.3f} s/step" if method == "KIP" else ""
        print(f"ipc {ipc:>3} {method:>11}: test {100 * row['test_accuracy']:.2f}%  {row['seconds']:.1f} s  "
              f"weight error {row['recovery_error']:.2e}{extra}", flush=True)

    kip_rows = [r for r in rows if r["method"] == "KIP"]
    meta = {
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "seed": args.seed,
        "ipcs": args.ipcs,
        "n_pool": teacher.n_samples_,
        "teacher_reg": teacher.reg_,
        "original_accuracy": original,
        "kip_steps": args.kip_steps,
        "kip_paper_steps": KIP_PAPER_STEPS,
        "kip_lr": kip_rows[0]["lr"] if kip_rows else None,
        "kip_batch_size": kip_rows[0]["batch_size"] if kip_rows else None,
        "kip_dtype": kip_rows[0]["dtype"] if kip_rows else None,
        "total_seconds": time.perf_counter() - total_start,
    }
    return {"meta": meta, "runs": rows}


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n\n")[0], data="MNIST: a .npz file, an IDX folder or a torchvision root")
    parser.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kip-steps", type=int, default=DEFAULT_STEPS)
    args = parser.parse_args(argv)
    if not args.report_only:
        harness.require_data(parser, args, "MNIST")
    report = harness.Report(__file__, "kip_comparison", args.out, argv)
    return report.run(args.report_only, lambda: measure(args), markdown, readme)


if __name__ == "__main__":
    sys.exit(main())
