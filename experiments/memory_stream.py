"""Class-incremental MNIST / Fashion-MNIST with a bounded moment memory (distillmem.MomentMemory).

FCNN features (RandomFCNN(784, seed=0)), lambda = 1. Five tasks of two classes
({0,1}, {2,3}, ...) stream through a memory of at most 100 points, recompressed
after each task; the KRR head is fitted on the memory alone. Compared with 100
random real points (10 per class) and with KRR on all 60k points. A second
table sweeps the memory size r for the non-incremental memory (all data, then
compressed) against random real subsets of r points and against Chen et al.'s
per-class closed-form set of r points.

    python experiments/memory_stream.py --data path/to/mnist.npz
    python experiments/memory_stream.py --dataset fashion-mnist --data path/to/fashion-mnist   # an IDX folder
    python experiments/memory_stream.py --dataset digits --budget 20 --out /tmp/x              # embedded, seconds
    python experiments/memory_stream.py --report-only

Writes experiments/results/memory_stream_<dataset>.{md,json}; the README block of that name.
"""

from __future__ import annotations

import platform
import sys
import time

import harness
import torch

import distillmem as dm
from distillmem.memory import SHRINKS

TASKS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
SIZES = (10, 20, 50, 100, 200, 400, 784)


def accuracy(weights: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the linear head ``weights`` (k, p) on ``features`` (n, p)."""
    return harness.accuracy((features @ weights.T).argmax(dim=1), labels)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def balanced_subset(labels: torch.Tensor, size: int, k: int, seed: int) -> torch.Tensor:
    """size indices, size // k per class and the remainder to the first classes."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(k):
        members = (labels == c).nonzero().flatten()
        take = size // k + (1 if c < size % k else 0)
        picks.append(members[torch.randperm(members.numel(), generator=gen)[:take]])
    return torch.cat(picks)


def feature_only_fd(memory: dm.MomentMemory, r: int, rescale: bool) -> dm.MomentMemory:
    """Ablation: frequent directions on the feature rows alone, targets kept or rescaled by s_i / s'_i."""
    features, targets = memory.features_, memory.targets_
    if features.shape[0] <= r:
        return memory
    sing = features.norm(dim=1)
    shrunk = (sing[:r] ** 2 - sing[r] ** 2).sqrt()
    keep = shrunk > 0
    factor = (shrunk / sing[:r])[keep, None]
    new_targets = targets[:r][keep] / factor if rescale else targets[:r][keep]
    return dm.MomentMemory.from_features(
        memory.feature_map, memory.n_classes, features[:r][keep] * factor, new_targets, n_seen=memory.n_seen_
    )


def joint_truncation(memory: dm.MomentMemory, r: int) -> dm.MomentMemory:
    """Ablation: keep the top r directions of [Phi_S, c T_S] (c = ||Phi_S|| / ||T_S||) without shrinking."""
    features, targets = memory.features_, memory.targets_
    if features.shape[0] <= r:
        return memory
    c = float(features.norm() / targets.norm())
    _, sing, right_t = torch.linalg.svd(torch.cat([features, c * targets], dim=1), full_matrices=False)
    rows = sing[:r, None] * right_t[:r]
    p = features.shape[1]
    return dm.MomentMemory.from_features(
        memory.feature_map, memory.n_classes, rows[:, :p], rows[:, p:] / c, n_seen=memory.n_seen_
    )


def run_stream(make_memory, recompress, x, y, f_test, y_test, reg, batch) -> dict:
    """Feed the tasks (in updates of ``batch`` samples, or one update per task); test after each task."""
    memory = make_memory()
    per_task, max_seen = [], 0
    start = time.perf_counter()
    for classes in TASKS:
        index = torch.isin(y, torch.tensor(classes)).nonzero().flatten()
        step = index.numel() if batch is None else batch
        for first in range(0, index.numel(), step):
            part = index[first : first + step]
            memory = recompress(memory.update(x[part], y[part]))
            max_seen = max(max_seen, memory.n_points)
        weights = memory.fit_krr(reg).weights_
        seen = torch.isin(y_test, torch.tensor([c for t in TASKS[: len(per_task) + 1] for c in t]))
        per_task.append(
            {
                "classes_seen": int(max(classes) + 1),
                "n_points": memory.n_points,
                "acc_seen": accuracy(weights, f_test[seen], y_test[seen]),
                "acc_all": accuracy(weights, f_test, y_test),
            }
        )
    return {"per_task": per_task, "final_acc": per_task[-1]["acc_all"], "max_points_held": max_seen,
            "weights": memory.fit_krr(reg).weights_, "seconds": time.perf_counter() - start}


def measure(args) -> dict:
    """The stream, the ablations and the size sweep; the summary that the JSON records."""
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    # Load the data; features of the test set once, in float64.
    ds = dm.data.load_dataset(args.dataset, args.data)
    x = ds.x_train.reshape(len(ds.x_train), -1).to(torch.float64)
    y = ds.y_train
    x_test = ds.x_test.reshape(len(ds.x_test), -1).to(torch.float64)
    y_test = ds.y_test
    fmap = dm.features.RandomFCNN(ds.n_features, seed=0)
    f_test = fmap(x_test)
    k, reg, budget = ds.n_classes, args.reg, args.budget
    # Memory sizes up to the rank p = d, where the memory becomes exact.
    sizes = sorted({size for size in SIZES[:-1] if size < ds.n_features} | {ds.n_features})

    # (b) KRR on all the data, and the exact (unbudgeted) memory of all of it.
    start = time.perf_counter()
    full = dm.KRR(fmap, reg=reg, n_classes=k, chunk_size=args.chunk_size).fit(x, y)
    krr_seconds = time.perf_counter() - start
    w_full = full.weights_
    start = time.perf_counter()
    exact = dm.MomentMemory(fmap, k, chunk_size=args.chunk_size).update(x, y)
    exact_seconds = time.perf_counter() - start
    exact_err = rel_err(exact.fit_krr(reg).weights_, w_full)
    print(f"KRR on all data: {accuracy(w_full, f_test, y_test):.4f} ({krr_seconds:.1f}s); exact memory: "
          f"{exact.n_points} points, weight error {exact_err:.2e} ({exact_seconds:.1f}s)", flush=True)

    # The class-incremental stream, per task and online, for both shrink modes; then the ablations.
    def budgeted(shrink):
        return lambda: dm.MomentMemory(fmap, k, max_points=budget, shrink=shrink, chunk_size=args.chunk_size)

    def unbudgeted():
        return dm.MomentMemory(fmap, k, chunk_size=args.chunk_size)

    runs = {}
    plan = [(shrink, name, batch) for shrink in SHRINKS
            for name, batch in (("per task", None), (f"online ({args.online_batch})", args.online_batch))]
    for shrink, name, batch in harness.progress(plan, "streams"):
        runs[f"{shrink}, {name}"] = run_stream(budgeted(shrink), lambda m: m, x, y, f_test, y_test, reg, batch)
        print(f"  {shrink:20s} {name:14s} final {runs[f'{shrink}, {name}']['final_acc']:.4f}", flush=True)
    ablations = {
        "FD on features only, targets kept": lambda m: feature_only_fd(m, budget, rescale=False),
        "FD on features only, targets rescaled (R kept on the kept directions)":
            lambda m: feature_only_fd(m, budget, rescale=True),
        "truncation of [Phi, cT] (joint, no shrink)": lambda m: joint_truncation(m, budget),
    }
    for name, recompress in ablations.items():
        runs[f"ablation: {name}"] = run_stream(unbudgeted, recompress, x, y, f_test, y_test, reg, None)
        print(f"  ablation {name}: final {runs[f'ablation: {name}']['final_acc']:.4f}", flush=True)

    # (a) Random real points, and the size sweep.
    random_real = {}
    for size in harness.progress(sorted(set(sizes) | {budget}), "random subsets"):
        accs, errs = [], []
        for seed in args.seeds:
            index = balanced_subset(y, size, k, seed)
            weights = dm.KRR(fmap, reg=reg, n_classes=k).fit(x[index], y[index]).weights_
            accs.append(accuracy(weights, f_test, y_test))
            errs.append(rel_err(weights, w_full))
        acc = torch.tensor(accs, dtype=torch.float64)
        random_real[size] = {"acc_mean": float(acc.mean()), "acc_std": float(acc.std(unbiased=False)),
                             "weight_err_mean": sum(errs) / len(errs)}
    sweep = []
    views = {s: dm.MomentMemory.from_features(fmap, k, exact.features_, exact.targets_, n_seen=exact.n_seen_, shrink=s)
             for s in SHRINKS}
    for size in harness.progress(sizes, "sizes"):
        row = {"r": size, "random_real": random_real[size],
               "predicted_truncation_error": views["truncate"].truncation_error(size, reg)}
        if size % k == 0:
            # Chen et al.'s per-class set of the same size: exact, but only at this lambda.
            weights = dm.distill(None, None, ipc=size // k, teacher=full, seed=0).fit_krr().weights_
            row["per_class"] = {"acc": accuracy(weights, f_test, y_test), "weight_err": rel_err(weights, w_full)}
        for shrink, view in views.items():
            weights = view.compress(size).fit_krr(reg).weights_
            row[shrink] = {"acc": accuracy(weights, f_test, y_test), "weight_err": rel_err(weights, w_full)}
        sweep.append(row)
    total = time.perf_counter() - t0

    return {
        "setup": {"dataset": args.dataset, "n_train": len(y), "n_test": len(y_test), "feature_map": fmap.spec(), "reg": reg,
                  "budget": budget, "tasks": TASKS, "online_batch": args.online_batch, "chunk_size": args.chunk_size,
                  "random_seeds": len(args.seeds), "torch": torch.__version__, "python": platform.python_version(),
                  "threads": torch.get_num_threads(), "seconds_total": total},
        "krr_all_data": {"acc": accuracy(w_full, f_test, y_test), "seconds": krr_seconds},
        "exact_memory": {"n_points": exact.n_points, "weight_err_vs_krr": exact_err, "seconds": exact_seconds,
                         "acc": accuracy(exact.fit_krr(reg).weights_, f_test, y_test)},
        "random_real_budget": random_real[budget],
        "stream": {name: {key: value for key, value in run.items() if key != "weights"} | {
            "weight_err": rel_err(run["weights"], w_full)} for name, run in runs.items()},
        "size_sweep": sweep,
    }


def markdown(s: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    setup = s["setup"]
    rr = s["random_real_budget"]
    lines = [
        f"# Class-incremental {setup['dataset']} with a moment memory",
        "",
        f"Command: `{s['command']}` ({setup['seconds_total']:.0f} s; machine: {s['machine']}).",
        "",
        f"{setup['dataset']}, {setup['n_train']} train / {setup['n_test']} test, "
        f"`RandomFCNN({setup['feature_map']['params']['in_features']}, seed={setup['feature_map']['seed']})` features, lambda = {setup['reg']:g}. Tasks "
        f"{setup['tasks']}; the memory holds at most {setup['budget']} points, recompressed after each update "
        f"(one update per task, or updates of {setup['online_batch']} samples), and the KRR head is fitted on the "
        "memory alone. Accuracy in %; weight error = ||W - W_all||_F / ||W_all||_F.",
        "",
        "## Final test accuracy (all 10 classes)",
        "",
        "| Method | Points | Accuracy | Weight error |",
        "|---|---|---|---|",
        f"| KRR on all data | {setup['n_train']} | {pct(s['krr_all_data']['acc'])} | 0 |",
        f"| Exact memory (no budget) | {s['exact_memory']['n_points']} | {pct(s['exact_memory']['acc'])} | "
        f"{s['exact_memory']['weight_err_vs_krr']:.1e} |",
        f"| Random real points, {setup['budget'] // 10} per class ({setup['random_seeds']} seeds) | {setup['budget']} | "
        f"{pct(rr['acc_mean'])} ± {pct(rr['acc_std'])} | {rr['weight_err_mean']:.3f} |",
    ]
    for name, run in s["stream"].items():
        lines.append(f"| Memory: {name} | ≤ {run['max_points_held']} | {pct(run['final_acc'])} | {run['weight_err']:.3f} |")
    lines += ["", "## After each task (accuracy on the classes seen so far / on all 10)", "",
              "| Method | " + " | ".join(f"task {i + 1}" for i in range(len(setup["tasks"]))) + " |",
              "|---|" + "---|" * len(setup["tasks"])]
    for name, run in s["stream"].items():
        cells = [f"{pct(t['acc_seen'])} / {pct(t['acc_all'])}" for t in run["per_task"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Memory size r, non-incremental (all data, then compressed to r points)", "",
              "Per-class set: Chen et al.'s closed form with r / k points per class, exact at this lambda only "
              "(the memory is exact at every lambda once r reaches the rank).",
              "",
              "| r | truncate acc | truncate W err (predicted) | frequent-directions acc | FD W err | "
              "random real acc | random real W err | per-class set acc | per-class W err |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in s["size_sweep"]:
        t, f, r = row["truncate"], row["frequent-directions"], row["random_real"]
        lines.append(
            f"| {row['r']} | {pct(t['acc'])} | {t['weight_err']:.3f} ({row['predicted_truncation_error']:.3f}) | "
            f"{pct(f['acc'])} | {f['weight_err']:.3f} | {pct(r['acc_mean'])} ± {pct(r['acc_std'])} | "
            f"{r['weight_err_mean']:.3f} | "
            + (f"{pct(row['per_class']['acc'])} | {row['per_class']['weight_err']:.1e} |" if "per_class" in row else "- | - |")
        )
    return "\n".join(lines) + "\n"


def readme(s: dict) -> str:
    """The figures of the README's continual quickstart."""
    setup, rr, exact = s["setup"], s["random_real_budget"], s["exact_memory"]
    fd = s["stream"]["frequent-directions, per task"]
    name = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(setup["dataset"], setup["dataset"])
    return (
        f"Without a budget the memory is exact for every λ. On {name} (FCNN, λ = {setup['reg']:g}), "
        f"{exact['n_points']} points reproduce KRR on all {setup['n_train']:,} images to a weight error of "
        f"{harness.sci(exact['weight_err_vs_krr'])}. With a budget of {setup['budget']} points, over "
        f"{len(setup['tasks'])} class-incremental tasks, it reaches {100 * fd['final_acc']:.2f}% test accuracy. "
        f"{setup['budget']} random real points reach {100 * rr['acc_mean']:.2f} ± {100 * rr['acc_std']:.2f}%, and KRR "
        f"on all the data {100 * s['krr_all_data']['acc']:.2f}% (`{s['command']}`)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.splitlines()[0], data="the dataset: a .npz file, an IDX folder or a torchvision "
                            "root (not needed for digits)", seeds=range(5))
    parser.add_argument("--dataset", default="mnist", choices=("digits", "mnist", "fashion-mnist"))
    parser.add_argument("--reg", type=float, default=1.0)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--online-batch", type=int, default=1000, help="update size of the online variant")
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.report_only and args.dataset != "digits":
        harness.require_data(parser, args, args.dataset)
    report = harness.Report(__file__, f"memory_stream_{args.dataset}", args.out, argv)
    return report.run(args.report_only, lambda: measure(args), markdown, readme)


if __name__ == "__main__":
    sys.exit(main())
