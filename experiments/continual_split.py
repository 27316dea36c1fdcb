"""Split benchmarks with continual/: KRRStrategy against joint KRR, and the distilled buffer against random replay.

Part 1: KRRStrategy (RandomFCNN(d, seed=0), lambda = 1) after each experience
against KRR fitted jointly on everything seen: relative weight error, test
accuracy of both, memory bytes; the same with a budget of r points (moment
memory; Gram sketch with exact cross moments) and with the paper's per-class
memory.

Part 2: an MLP trained by Avalanche's Naive strategy with ReplayPlugin, at
equal points: Avalanche's ClassBalancedBuffer (random real exemplars) against
DistilledBuffer; plus Naive without replay. Final accuracy on the whole test
stream, and the share of the wall time spent distilling.

    python experiments/continual_split.py                       # split digits, embedded
    python experiments/continual_split.py --dataset mnist --data path/to/mnist.npz
    python experiments/continual_split.py --report-only

Writes experiments/results/continual_split_<dataset>.{md,json}.
"""

from __future__ import annotations

import platform
import sys
import time
import warnings

import harness
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from torch import nn

import distillmem as dm
from continual import DistilledBuffer, KRRStrategy, split_benchmark
from continual.data import read_experience

ACC = "Top1_Acc_Stream/eval_phase/test_stream"


def evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])


def stream_accuracy(results: dict) -> float:
    return next(v for k, v in results.items() if k.startswith(ACC))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def krr_part(bench, d: int, reg: float, budget: int, ipc: int) -> dict:
    data = [read_experience(e.dataset) for e in bench.train_stream]
    test = [read_experience(e.dataset) for e in bench.test_stream]
    x_test = torch.cat([t.x for t in test]).reshape(-1, d).double()
    y_test = torch.cat([t.y for t in test])
    runs = {
        "exact": KRRStrategy(feature_map=dm.features.RandomFCNN(d, seed=0), reg=reg, evaluator=evaluator()),
        f"moments r={budget}": KRRStrategy(
            feature_map=dm.features.RandomFCNN(d, seed=0), reg=reg, max_points=budget, evaluator=evaluator()
        ),
        f"sketch r={budget}": KRRStrategy(
            feature_map=dm.features.RandomFCNN(d, seed=0), reg=reg, memory="sketch", max_points=budget,
            evaluator=evaluator(),
        ),
        f"per-class ipc={ipc}": KRRStrategy(
            feature_map=dm.features.RandomFCNN(d, seed=0), reg=reg, memory="per-class", ipc=ipc, evaluator=evaluator()
        ),
    }
    rows = []
    for i, exp in enumerate(bench.train_stream):
        x = torch.cat([t.x for t in data[: i + 1]]).reshape(-1, d).double()
        y = torch.cat([t.y for t in data[: i + 1]])
        joint = dm.KRR(dm.features.RandomFCNN(d, seed=0), reg=reg, n_classes=bench.n_classes).fit(x, y)
        joint_acc = joint.score(x_test, y_test)
        for name, strategy in runs.items():
            start = time.perf_counter()
            strategy.train(exp)
            seconds = time.perf_counter() - start
            rows.append({
                "experience": i, "method": name, "weight_error": rel_err(strategy.model.weights, joint.weights_),
                "accuracy": stream_accuracy(strategy.eval(bench.test_stream)), "joint_accuracy": joint_acc,
                "points": strategy.memory_points, "bytes": strategy.memory_nbytes, "train_seconds": seconds,
            })
    return {"rows": rows}


class MLP(nn.Module):
    def __init__(self, d: int, k: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def neural_run(bench, d: int, policy, args, seed: int) -> dict:
    torch.manual_seed(seed)
    model = MLP(d, bench.n_classes, args.hidden)
    plugins = [] if policy is None else [ReplayPlugin(mem_size=policy.max_size, storage_policy=policy)]
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9),
        criterion=nn.CrossEntropyLoss(), train_mb_size=args.batch, train_epochs=args.epochs, eval_mb_size=1024,
        plugins=plugins, evaluator=evaluator(),
    )
    start = time.perf_counter()
    for exp in bench.train_stream:
        strategy.train(exp)
    seconds = time.perf_counter() - start
    result = {"accuracy": stream_accuracy(strategy.eval(bench.test_stream)), "train_seconds": seconds}
    if policy is not None:
        result["points"] = len(policy.buffer)
    if isinstance(policy, DistilledBuffer):
        result["bytes"] = policy.nbytes
        result["distill_seconds"] = policy.update_seconds
    return result


def neural_part(bench, d: int, args) -> dict:
    rows = []
    for seed in args.seeds:
        rows.append({"method": "naive, no replay", "mem": 0, "seed": seed, **neural_run(bench, d, None, args, seed)})
        for mem in args.mem_sizes:
            rows.append({"method": "random real (ClassBalancedBuffer)", "mem": mem, "seed": seed,
                         **neural_run(bench, d, ClassBalancedBuffer(mem, adaptive_size=True), args, seed)})
            for reg in args.buffer_regs:
                policy = DistilledBuffer(max_size=mem, reg=reg, seed=seed)
                rows.append({"method": f"distilled (identity, lambda={reg:g})", "mem": mem, "seed": seed,
                             **neural_run(bench, d, policy, args, seed)})
    return {"rows": rows}


def markdown(result: dict) -> str:
    lines = [f"# Split {result['dataset']} with continual/", "", f"Command: `{result['command']}` "
             f"({result['seconds']:.0f} s, torch {result['torch']}).", "",
             f"{result['n_experiences']} experiences, class order {result['class_order']}."]
    if result["krr"]["rows"]:
        lines += ["", f"## KRRStrategy against joint KRR (RandomFCNN(d, seed=0), lambda = {result['args']['reg']:g})", "",
                  "| experience | method | weight error vs joint | accuracy | joint accuracy | points | bytes |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["krr"]["rows"]:
            lines.append(f"| {r['experience'] + 1} | {r['method']} | {r['weight_error']:.1e} | {100 * r['accuracy']:.2f} | "
                         f"{100 * r['joint_accuracy']:.2f} | {r['points']} | {r['bytes']} |")
    if not result["neural"]["rows"]:
        return "\n".join(lines) + "\n"
    lines += ["", f"## MLP with Naive + ReplayPlugin, equal points ({result['args']['epochs']} epochs, "
              f"SGD lr {result['args']['lr']}, batch {result['args']['batch']} + memory batch, seeds {result['args']['seeds']})", "",
              "| method | memory points (max) | final accuracy | distillation share of train time |", "|---|---|---|---|"]
    groups: dict[tuple, list] = {}
    for r in result["neural"]["rows"]:
        groups.setdefault((r["method"], r["mem"]), []).append(r)
    for (method, mem), rs in groups.items():
        acc = torch.tensor([r["accuracy"] for r in rs]) * 100
        spread = f" ± {float(acc.std()):.2f}" if len(rs) > 1 else ""
        share = ""
        if "distill_seconds" in rs[0]:
            share = f"{100 * sum(r['distill_seconds'] for r in rs) / sum(r['train_seconds'] for r in rs):.1f}%"
        lines.append(f"| {method} | {mem} | {float(acc.mean()):.2f}{spread} | {share} |")
    return "\n".join(lines) + "\n"


def measure(args) -> dict:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="No loggers specified")
    start = time.perf_counter()
    bench = split_benchmark(args.dataset, args.data, n_experiences=args.n_experiences, seed=args.seed)
    d = int(torch.tensor(bench.train_stream[0].dataset[0][0].shape).prod())
    result = {
        "dataset": args.dataset, "n_experiences": args.n_experiences, "class_order": list(bench.classes_order),
        "args": {k: v for k, v in vars(args).items() if k not in ("data", "out", "report_only")},
        "torch": torch.__version__, "python": platform.python_version(),
        "krr": krr_part(bench, d, args.reg, args.budget, args.ipc) if "krr" in args.parts else {"rows": []},
        "neural": neural_part(bench, d, args) if "neural" in args.parts else {"rows": []},
    }
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.splitlines()[0], data="the dataset: a .npz file, an IDX folder or a torchvision "
                            "root (not needed for digits)", seeds=(0,))
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--n-experiences", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="class order")
    parser.add_argument("--reg", type=float, default=1.0)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--mem-sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--buffer-regs", type=float, nargs="+", default=[1.0, 100.0, 1e4])
    parser.add_argument("--parts", nargs="+", default=["krr", "neural"], choices=["krr", "neural"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args(argv)
    if not args.report_only and args.dataset != "digits":
        harness.require_data(parser, args, args.dataset)
    report = harness.Report(__file__, f"continual_split_{args.dataset}", args.out, argv)
    return report.run(args.report_only, lambda: measure(args), markdown)


if __name__ == "__main__":
    sys.exit(main())
