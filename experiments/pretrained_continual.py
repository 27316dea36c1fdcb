"""Continual learning on a frozen pretrained backbone: KRR memories, NCM, replay and GDumb on the same features.

Split CIFAR-10 (``--n-experiences 5``: 5 x 2 classes; ``10``: 10 x 1) over the
pooled features of a frozen EfficientNet-Lite (``distillmem.features.Pretrained``),
computed once through the feature cache (``split_benchmark(...,
feature_map=..., feature_cache=...)``). Every learner sees the same float32
features, one experience at a time, in the class order drawn from each seed:

- joint ridge: KRR on all training data seen so far (the upper bound), with
  lambda chosen on a held-out 10% of the full training set (never the test
  set) and that lambda used by every KRR row;
- ``KRRStrategy`` with the exact moments memory at that lambda, with its
  relative weight error and accuracy difference to joint ridge after every
  experience, and with ``reg="auto"`` (lambda by GCV from the memory alone
  after every experience, what a continual learner can do without a held-out set);
- ``KRRStrategy`` with compressed memories (``sketch``, ``moments`` with
  ``max_points``) of at most ``--budgets`` times the exact memory's bytes;
- ``NCMStrategy`` (class means; cosine is SimpleCIL's prototype head);
- Avalanche's Naive (no memory), replay (``ClassBalancedBuffer``: random
  class-balanced exemplars) and GDumb with a linear head on the features, at
  the bytes of each compressed budget and of the exact memory (an exemplar is
  p float32 features and an int64 label).

After each experience t, A_t is the accuracy on the test images of the classes
seen so far, with the argmax over those classes (heads of unseen classes are
masked, as when a head grows with the classes); A_last is A_t after the last
experience, A_avg the mean of A_t over experiences.

    python experiments/pretrained_continual.py --data path/to/cifar10.npz --cache path/to/cache --n-experiences 5
    python experiments/pretrained_continual.py --data path/to/cifar10.npz --cache path/to/cache --n-experiences 10
    python experiments/pretrained_continual.py --report-only --n-experiences 5

Writes experiments/results/pretrained_continual_cifar10_<n>x<k/n>.{md,json,png}.
"""

from __future__ import annotations

import io
import sys
import time
import warnings
from pathlib import Path

import harness
import torch
from pretrained_features import DEFAULT_CACHE
from pretrained_federated import subset_file
from torch import nn

import distillmem as dm
from distillmem.data import load_dataset
from distillmem.files import atomic_write_bytes
from continual import KRRStrategy, NCMStrategy, split_benchmark
from continual.data import read_experience

LABEL_BYTES = 8  # an int64 label per exemplar
FLOAT64 = 8


def exemplar_bytes(p: int) -> int:
    """Bytes of one real exemplar: p float32 features and an int64 label."""
    return 4 * p + LABEL_BYTES


def sketch_rank(budget_bytes: int, p: int, k: int) -> int:
    """The most eigen-rows r (``max_points``) whose folded GramSketch fits in ``budget_bytes``:
    (r + k + 1) p + 1 float64 (eigen-rows, the k rows of R - C, the diagonal, Delta)."""
    return (budget_bytes // FLOAT64 - 1) // p - k - 1


def moments_rank(budget_bytes: int, p: int, k: int) -> int:
    """The most points r whose moments memory (r (p + k) float64) fits in ``budget_bytes``."""
    return budget_bytes // (FLOAT64 * (p + k))


# -- evaluation ----------------------------------------------------------------------------------


class Seen:
    """The test set restricted to the classes seen after each experience."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, k: int) -> None:
        self.x, self.y, self.k = x, y, k

    def accuracy(self, scores_of, classes: list[int]) -> float:
        """Accuracy on the test samples of ``classes``, argmax over those classes only."""
        keep = torch.isin(self.y, torch.tensor(classes))
        with torch.no_grad():
            scores = scores_of(self.x[keep]).to(torch.float64)
        mask = torch.full((self.k,), -torch.inf, dtype=torch.float64)
        mask[classes] = 0
        return harness.accuracy((scores + mask).argmax(dim=1), self.y[keep])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def curve_row(method: str, curve: list[float], seconds: float, points: int, nbytes: int, **extra) -> dict:
    return {"method": method, "curve": curve, "a_last": curve[-1], "a_avg": sum(curve) / len(curve),
            "seconds": seconds, "points": points, "bytes": nbytes, **extra}


# -- closed-form learners ---------------------------------------------------------------------------


def closed_form(strategy, data, seen: Seen, classes: list[list[int]]) -> tuple[list[float], float]:
    """A_t of a strategy driven by ``absorb`` (what ``train`` does after reading the experience), and its seconds."""
    curve, seconds = [], 0.0
    for i, exp in enumerate(data):
        start = time.perf_counter()
        strategy.absorb(exp)
        seconds += time.perf_counter() - start
        curve.append(seen.accuracy(strategy.model, classes[i]))
    return curve, seconds


def krr_rows(data, seen: Seen, classes, p: int, k: int, reg: float, budgets: list[float]) -> tuple[list[dict], dict]:
    fmap = dm.features.Identity(p)
    exact = KRRStrategy(feature_map=fmap, reg=reg, n_classes=k, evaluator=None)
    checks, curve, joint_curve, seconds, joint_seconds = [], [], [], 0.0, 0.0
    for i, exp in enumerate(data):
        start = time.perf_counter()
        exact.absorb(exp)
        seconds += time.perf_counter() - start
        start = time.perf_counter()
        x = torch.cat([t.x for t in data[: i + 1]]).double()
        y = torch.cat([t.y for t in data[: i + 1]])
        joint = dm.KRR(fmap, reg=reg, n_classes=k).fit(x, y)
        joint_curve.append(seen.accuracy(joint.decision_function, classes[i]))
        joint_seconds += time.perf_counter() - start
        curve.append(seen.accuracy(exact.model, classes[i]))
        checks.append({"experience": i, "weight_error": rel_err(exact.model.weights, joint.weights_),
                       "accuracy_difference": abs(curve[-1] - joint_curve[-1]), "bytes": exact.memory_nbytes})
    exact_bytes = exact.memory_nbytes
    rows = [curve_row("joint ridge", joint_curve, joint_seconds, sum(len(t.y) for t in data),
                      sum(len(t.y) for t in data) * exemplar_bytes(p)),
            curve_row("KRRStrategy, moments, exact", curve, seconds, exact.memory_points, exact_bytes, checks=checks)]
    auto = KRRStrategy(feature_map=fmap, reg="auto", n_classes=k, evaluator=None)
    auto_curve, auto_seconds = closed_form(auto, data, seen, classes)
    rows.append(curve_row("KRRStrategy, moments, exact, λ by GCV", auto_curve, auto_seconds, auto.memory_points,
                          auto.memory_nbytes, reg=auto.reg_))
    for share in budgets:
        budget = int(share * exact_bytes)
        for memory, rank in (("sketch", sketch_rank(budget, p, k)), ("moments", moments_rank(budget, p, k))):
            if rank <= 0:
                continue  # the budget holds no more than the memory's fixed part
            strategy = KRRStrategy(feature_map=fmap, reg=reg, n_classes=k, memory=memory, max_points=rank, evaluator=None)
            c, s = closed_form(strategy, data, seen, classes)
            rows_held = f"{rank + k} rows ({rank} eigenpairs + {k} of R - C)" if memory == "sketch" else f"{rank} points"
            rows.append(curve_row(f"KRRStrategy, {memory}, {rows_held}", c, s, strategy.memory_points,
                                  strategy.memory_nbytes, budget=share))
    for metric in ("cosine", "euclidean"):
        ncm = NCMStrategy(feature_map=fmap, metric=metric, n_classes=k, evaluator=None)
        c, s = closed_form(ncm, data, seen, classes)
        rows.append(curve_row(f"NCM, {metric}" + (" (SimpleCIL)" if metric == "cosine" else ""), c, s, k,
                              ncm.memory_nbytes))
    return rows, {"exact_bytes": exact_bytes}


# -- neural heads through Avalanche -----------------------------------------------------------------


def neural_row(bench, seen: Seen, classes, p: int, method: str, n_exemplars: int, args, seed: int, share) -> dict:
    from avalanche.training import GDumb, Naive
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ClassBalancedBuffer

    torch.manual_seed(seed)
    model = nn.Linear(p, bench.n_classes)
    common = dict(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=args.lr),
                  criterion=nn.CrossEntropyLoss(), train_mb_size=args.batch, eval_mb_size=4096,
                  evaluator=EvaluationPlugin(loggers=[]))
    policy = None
    if method == "gdumb":
        learner = GDumb(mem_size=n_exemplars, train_epochs=args.gdumb_epochs, **common)
    elif method == "replay":
        policy = ClassBalancedBuffer(n_exemplars, adaptive_size=True)
        learner = Naive(train_epochs=args.epochs, plugins=[ReplayPlugin(mem_size=n_exemplars, storage_policy=policy)],
                        **common)
    else:
        learner = Naive(train_epochs=args.epochs, **common)
    curve, seconds = [], 0.0
    for i, exp in enumerate(bench.train_stream):
        start = time.perf_counter()
        learner.train(exp)
        seconds += time.perf_counter() - start
        learner.model.eval()  # GDumb replaces the strategy's model by a fresh copy before each experience
        curve.append(seen.accuracy(learner.model, classes[i]))
    if method == "gdumb":
        policy = next(pl for pl in learner.plugins if hasattr(pl, "storage_policy")).storage_policy
    points = 0 if policy is None else len(policy.buffer)
    label = {"naive": "Naive, linear head, no memory", "replay": "replay, linear head, random class-balanced exemplars",
             "gdumb": "GDumb, linear head"}[method]
    return curve_row(label, curve, seconds, points, points * exemplar_bytes(p), budget=share)


# -- one class order ---------------------------------------------------------------------------------


def run_seed(args, fmap, seed: int) -> dict:
    bench = split_benchmark("cifar10", args.data, n_experiences=args.n_experiences, seed=seed, feature_map=fmap,
                            feature_cache=args.cache)
    data = [read_experience(e.dataset) for e in bench.train_stream]
    test = [read_experience(e.dataset) for e in bench.test_stream]
    k, p = bench.n_classes, data[0].x.shape[1]
    seen = Seen(torch.cat([t.x for t in test]), torch.cat([t.y for t in test]), k)
    order = [int(c) for c in bench.classes_order]
    steps = [sorted(int(c) for e in bench.train_stream[: i + 1] for c in e.classes_in_this_experience)
             for i in range(len(data))]
    # lambda from a held-out 10% of the whole training set, never the test set.
    x_all, y_all = torch.cat([t.x for t in data]).double(), torch.cat([t.y for t in data])
    chooser = dm.KRR(dm.features.Identity(p), reg="auto", val_fraction=0.1, seed=seed, n_classes=k).fit(x_all, y_all)
    reg = chooser.reg_
    rows, sizes = krr_rows(data, seen, steps, p, k, reg, args.budgets)
    if "neural" in args.parts:
        rows.append(neural_row(bench, seen, steps, p, "naive", 0, args, seed, None))
        for share in args.neural_budgets:
            n_exemplars = int(share * sizes["exact_bytes"]) // exemplar_bytes(p)
            for method in ("replay", "gdumb"):
                rows.append(neural_row(bench, seen, steps, p, method, n_exemplars, args, seed, share))
    return {"seed": seed, "class_order": order, "p": p, "reg": reg,
            "reg_validation_accuracy": max(chooser.val_accuracy_.values()), **sizes, "rows": rows}


# -- rendering -----------------------------------------------------------------------------------------


def grouped(payload: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for run in payload["seeds"]:
        for row in run["rows"]:
            groups.setdefault(row["method"] + ("" if row.get("budget") is None else f"@{row['budget']}"), []).append(row)
    return groups


def mean_std(values: list[float]) -> str:
    t = torch.tensor(values, dtype=torch.float64) * 100
    return f"{float(t.mean()):.2f} ± {float(t.std()):.2f}" if len(values) > 1 else f"{float(t.mean()):.2f}"


def label(rows: list[dict]) -> str:
    share = rows[0].get("budget")
    if share is None:
        return rows[0]["method"]
    return f"{rows[0]['method']} ({'the exact memory' if share == 1 else f'≤ {100 * share:g}% of the exact memory'}'s bytes)"


def table(payload: dict) -> list[str]:
    lines = ["| method | memory (points) | memory (bytes) | A_last (%) | A_avg (%) | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for rows in grouped(payload).values():
        points = rows[0]["points"]
        held = "all data seen" if rows[0]["method"] == "joint ridge" else f"{points:,}"
        nbytes = "–" if rows[0]["method"] == "joint ridge" else f"{rows[0]['bytes']:,}"
        seconds = sum(r["seconds"] for r in rows) / len(rows)
        lines.append(f"| {label(rows)} | {held} | {nbytes} | {mean_std([r['a_last'] for r in rows])} | "
                     f"{mean_std([r['a_avg'] for r in rows])} | {seconds:.1f} |")
    return lines


def verdicts(payload: dict) -> list[str]:
    groups = grouped(payload)
    checks = [c for rows in groups.values() for r in rows for c in r.get("checks", [])]
    worst_gap = max(c["accuracy_difference"] for c in checks)
    lines = [f"- Exact memory against joint ridge, {len(checks)} checks (experiences × seeds): relative weight error at "
             f"most {harness.sci(max(c['weight_error'] for c in checks))}, accuracy difference at most "
             f"{100 * worst_gap:.2f} points (target 0.05: {'met' if 100 * worst_gap <= 0.05 else 'not met'})."]
    joint_by_seed = {run["seed"]: next(r for r in run["rows"] if r["method"] == "joint ridge") for run in payload["seeds"]}
    for rows in groups.values():
        share = rows[0].get("budget")
        if share is None or share > 0.1 or not rows[0]["method"].startswith("KRRStrategy"):
            continue
        gaps = [max(j - a for j, a in zip(joint_by_seed[run["seed"]]["curve"], r["curve"]))
                for run, r in zip(payload["seeds"], rows)]
        last = [joint_by_seed[run["seed"]]["a_last"] - r["a_last"] for run, r in zip(payload["seeds"], rows)]
        share_bytes = max(r["bytes"] for r in rows) / payload["seeds"][0]["exact_bytes"]
        lines.append(f"- {rows[0]['method']} ({100 * share_bytes:.1f}% of the exact memory's bytes): A_last at most "
                     f"{100 * max(last):.2f} points below joint ridge, at most {100 * max(gaps):.2f} after any "
                     f"experience (target 2: {'met' if 100 * max(gaps) <= 2 else 'not met'}).")
    return lines


def setting(payload: dict) -> str:
    seeds = ", ".join(str(run["seed"]) for run in payload["seeds"])
    regs = ", ".join(f"{run['reg']:g}" for run in payload["seeds"])
    n = payload["n_experiences"]
    runs = (f"mean ± std over the class orders of seeds {seeds}" if len(payload["seeds"]) > 1
            else f"one run, the class order of seed {seeds}")
    data = ("CIFAR-10" if payload["subset"] is None else
            f"CIFAR-10, a seeded class-balanced subset of {payload['subset'][0]:,} training and {payload['subset'][1]:,} "
            f"test images")
    return (f"Class-incremental {data}, {n} experiences of {10 // n} class{'es' if 10 // n > 1 else ''}, {runs}. "
            f"Backbone: {payload['backbone']} (frozen; features p = {payload['seeds'][0]['p']}). "
            f"λ of the KRR rows chosen on a held-out 10% of the training set: {regs}. Linear heads: Adam lr "
            f"{payload['args']['lr']}, batch {payload['args']['batch']}, {payload['args']['epochs']} epochs per "
            f"experience (GDumb: {payload['args']['gdumb_epochs']} on its memory).")


def markdown(payload: dict) -> str:
    return "\n".join([f"# {payload['title']}", "", f"Command: `{payload['command']}`", "",
                      f"Machine: {payload['machine']}; {payload['seconds']:.0f} s in all (a shared, loaded machine: "
                      f"wall times are inflated).", "", setting(payload), "", *verdicts(payload), "", *table(payload),
                      "", "A_t after each experience (%, first seed):", "", *curves(payload)]) + "\n"


def curves(payload: dict) -> list[str]:
    run = payload["seeds"][0]
    n = payload["n_experiences"]
    lines = ["| method | " + " | ".join(str(i + 1) for i in range(n)) + " |", "|---" * (n + 1) + "|"]
    for row in run["rows"]:
        name = label([row])
        lines.append(f"| {name} | " + " | ".join(f"{100 * a:.2f}" for a in row["curve"]) + " |")
    return lines


def readme(payload: dict) -> str:
    return "\n".join([setting(payload), "", *verdicts(payload), "", *table(payload), "",
                      f"(`{payload['command']}`; full table in `experiments/results/{payload['name']}.md`; wall "
                      f"times from a shared, loaded machine)"]) + "\n"


def plot(payload: dict, out: Path) -> Path:
    """A_t after each experience (left) and A_last against memory bytes (right), mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.get_cmap("tab20").colors
    for i, rows in enumerate(grouped(payload).values()):
        curve = torch.tensor([r["curve"] for r in rows], dtype=torch.float64).mean(dim=0) * 100
        style = {"color": colors[i % len(colors)], "marker": "osD^v<>px*"[i % 10]}
        left.plot(range(1, len(curve) + 1), curve.tolist(), label=label(rows), **style)
        if rows[0]["method"] != "joint ridge" and rows[0]["bytes"]:
            right.scatter([rows[0]["bytes"]], [float(curve[-1])], **style)
    left.set_xticks(range(1, payload["n_experiences"] + 1))
    left.set_xlabel("experience")
    left.set_ylabel("accuracy on the classes seen (%)")
    right.set_xscale("log")
    right.set_xlabel("memory (bytes)")
    right.set_ylabel("A_last (%)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.legend(*left.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=2, bbox_to_anchor=(0.5, -0.28))
    fig.suptitle(payload["title"], fontsize=10)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(out / f"{payload['name']}.png", image.getvalue())


# -- entry point ---------------------------------------------------------------------------------------


def result_name(n_experiences: int, subset: list[int] | None) -> str:
    tail = "" if subset is None else f"_subset{subset[0]}"
    return f"pretrained_continual_cifar10_{n_experiences}x{10 // n_experiences}{tail}"


def measure(args) -> dict:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="No loggers specified")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.subset is not None:  # the subset and its cache folder of pretrained_federated.py: one extraction serves both
        args.cache = args.cache / f"subset-{args.subset[0]}-{args.subset[1]}"
        args.data = subset_file(args.data, *args.subset, args.cache)
    fmap = dm.features.Pretrained.for_dataset(load_dataset("cifar10", args.data), args.backbone, image_size=args.image_size)
    n_parameters = sum(t.numel() for t in fmap.parameters())
    runs = [run_seed(args, fmap, seed) for seed in args.seeds]
    subset = "" if args.subset is None else f", {args.subset[0]:,}-image subset"
    return {"title": f"Class-incremental CIFAR-10 ({args.n_experiences} experiences{subset}) on frozen {args.backbone} features",
            "name": result_name(args.n_experiences, args.subset), "n_experiences": args.n_experiences,
            "subset": args.subset,
            "backbone": f"{args.backbone} (ImageNet-1k, {n_parameters / 1e6:.2f} M parameters) at {args.image_size} px",
            "feature_map": fmap.spec(),
            "args": {"lr": args.lr, "batch": args.batch, "epochs": args.epochs, "gdumb_epochs": args.gdumb_epochs,
                     "budgets": args.budgets, "neural_budgets": args.neural_budgets, "parts": args.parts},
            "seeds": runs, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n\n")[0], data="CIFAR-10: a .npz file or a torchvision root", seeds=(0, 1, 2))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder of the feature cache (default: %(default)s)")
    parser.add_argument("--subset", nargs=2, type=int, default=None, metavar=("N_TRAIN", "N_TEST"),
                        help="a seeded class-balanced subset of the .npz, drawn as by pretrained_federated.py "
                             "(its features cached in a subfolder of --cache)")
    parser.add_argument("--n-experiences", type=int, choices=[5, 10], default=5)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.02],
                        help="compressed memories, as shares of the exact memory's bytes")
    parser.add_argument("--neural-budgets", type=float, nargs="+", default=[0.1, 1.0],
                        help="replay and GDumb memories, as shares of the exact memory's bytes")
    parser.add_argument("--parts", nargs="+", choices=["krr", "neural"], default=["krr", "neural"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine more threads contend and run slower)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--gdumb-epochs", type=int, default=30)
    args = parser.parse_args(argv)
    if not args.report_only:
        harness.require_data(parser, args, "CIFAR-10")
    report = harness.Report(__file__, result_name(args.n_experiences, args.subset), args.out, argv)
    code = report.run(args.report_only, lambda: measure(args), markdown, readme)
    if not args.report_only:  # --report-only writes the markdown and the README block, nothing else
        print(f"wrote {plot(report.load(), args.out)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
