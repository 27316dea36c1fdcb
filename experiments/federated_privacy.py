"""Differentially private federated uploads: test accuracy against epsilon, next to the non-private runs.

Every run is one run of the federated app (``federated.simulate`` on Flower's
in-process grid) on MNIST with 10 clients and a Dirichlet partition (alpha
0.5); seeds change the partition and lambda's validation split.

- ``moments`` and ``stats`` with the identity map and FCNN features
  (``RandomFCNN(784, seed=0)``): each client releases its (G_i, R_i, n_i)
  through the Gaussian mechanism (``dp-epsilon``, ``dp-delta`` = 1e-5,
  ``dp-clip`` = B; docs/math.md §8.4), calibrated by the analytic Gaussian
  mechanism, which holds for every epsilon. B = 1 is fixed without looking at
  the data: every feature row is scaled to unit norm. ``moments`` sends the
  points of each client's PSD part; ``stats`` sends the noisy statistics and
  the server projects their sum. lambda is chosen after the upload on a
  validation split the server carves from the training split (10%; it is not
  client data and is used without noise). Beside each: the same run at
  epsilon = 1e8 (sigma about 1e-4: the cost of clipping alone) and without
  privacy (no clipping, no noise), whose centralized KRR on the pooled data is
  the non-private reference.
- ``ipc`` with ``distill_private`` (Theorem 6.2): identity map, lambda = 0,
  ipc = 10, B = 1, and only epsilon < 1, where its classical calibration holds.
  A client whose inputs are rank deficient is refused with the reason.

    nice -n 10 python experiments/federated_privacy.py --data path/to/mnist.npz
    python experiments/federated_privacy.py --data path/to/mnist.npz --seeds 0 --epsilons 1 8 --out /tmp/x
    python experiments/federated_privacy.py --report-only

Writes experiments/results/federated_privacy_mnist.{json,md} and its README block.
"""

from __future__ import annotations

import sys
import time
from statistics import mean, stdev

import harness
import torch

#: label -> (mode, feature map). The tables' order.
CELLS: dict[str, tuple[str, str]] = {
    "moments, identity": ("moments", "identity"),
    "moments, FCNN": ("moments", "fcnn"),
    "stats, identity": ("stats", "identity"),
    "stats, FCNN": ("stats", "fcnn"),
}
#: The epsilon of the "clipping alone" column.
CLIP_ONLY = 1e8
NAME = "federated_privacy_mnist"


def _run(args, mode: str, fmap: str, seed: int, epsilon: float, **options) -> dict:
    from federated import simulate

    start = time.monotonic()
    common = dict(dataset="mnist", data=str(args.data), num_clients=args.clients, partition="dirichlet", alpha=args.alpha,
                  mode=mode, feature_map=fmap, seed=seed, engine="inprocess", min_clients=1)
    row = {"mode": mode, "feature_map": fmap, "seed": seed, "epsilon": epsilon}
    try:
        result = simulate(**common, **options, dp_epsilon=epsilon, dp_delta=args.delta, dp_clip=args.clip,
                          centralized=epsilon == 0)
    except RuntimeError as err:  # quorum not met: every upload was refused
        return {**row, "error": str(err), "seconds": time.monotonic() - start}
    privacy = result["privacy"]
    row.update(accuracy=result["accuracy"], reg=result["reg"], accepted=len(result["clients"]["accepted"]),
               rejected=sorted(set(result["clients"]["rejected"].values())), seconds=time.monotonic() - start,
               sigma=privacy.get("sigma") if epsilon else None)
    if epsilon == 0:
        row["centralized_accuracy"] = result["centralized_accuracy"]
    return row


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    runs = []
    epsilons = [0.0, CLIP_ONLY, *sorted(args.epsilons, reverse=True)]
    jobs = [(label, seed, eps) for label in CELLS for seed in args.seeds for eps in epsilons]
    for label, seed, eps in harness.progress(jobs, "runs"):
        mode, fmap = CELLS[label]
        runs.append({"cell": label, **_run(args, mode, fmap, seed, eps, reg="auto", reg_select="server")})
    for seed in args.seeds:
        for eps in sorted(e for e in args.epsilons if e < 1):
            runs.append({"cell": "ipc", **_run(args, "ipc", "identity", seed, eps, reg=0.0, ipc=args.ipc)})
    return {"dataset": "mnist", "clients": args.clients, "alpha": args.alpha, "delta": args.delta, "clip": args.clip,
            "ipc": args.ipc, "epsilons": sorted(args.epsilons), "clip_only_epsilon": CLIP_ONLY, "seeds": list(args.seeds),
            "runs": runs}


def _cell(runs: list[dict]) -> str:
    accs = [100 * r["accuracy"] for r in runs if "accuracy" in r]
    if not accs:
        return "refused"
    text = f"{mean(accs):.2f}" + (f" ± {stdev(accs):.2f}" if len(accs) > 1 else "")
    return text if len(accs) == len(runs) else f"{text} ({len(accs)} of {len(runs)} runs)"


def _table(payload: dict) -> list[str]:
    runs = payload["runs"]
    epsilons = sorted(payload["epsilons"], reverse=True)
    head = ["setting", "no privacy", f"ε = {payload['clip_only_epsilon']:.0e} (clipping only)", *(f"ε = {e:g}" for e in epsilons)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in CELLS:
        cells = [_cell([r for r in runs if r["cell"] == label and r["epsilon"] == e])
                 for e in (0.0, payload["clip_only_epsilon"], *epsilons)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    central = {label: [100 * r["centralized_accuracy"] for r in runs if r["cell"] == label and "centralized_accuracy" in r]
               for label in CELLS}
    lines.append("")
    lines.append("Centralized non-private KRR on the pooled clients' data, same λ rule: "
                 + "; ".join(f"{label} {mean(v):.2f}%" for label, v in central.items() if v) + ".")
    sigmas = {r["epsilon"]: r["sigma"] for r in runs if r.get("sigma") is not None and r["cell"] in CELLS}
    lines.append("")
    lines.append(f"Noise σ per entry of (G, R, n) (Δ = √(B⁴ + B² + 1) = {(payload['clip'] ** 4 + payload['clip'] ** 2 + 1) ** 0.5:.3f}): "
                 + ", ".join(f"ε = {e:g}: {sigmas[e]:.3g}" for e in sorted(sigmas, reverse=True) if e != payload["clip_only_epsilon"]) + ".")
    return lines


def _ipc_line(payload: dict) -> str:
    runs = [r for r in payload["runs"] if r["cell"] == "ipc"]
    if not runs:
        return "ipc was not measured."
    parts = []
    for eps in sorted({r["epsilon"] for r in runs}, reverse=True):
        group = [r for r in runs if r["epsilon"] == eps]
        parts.append(f"ε = {eps:g}: {_cell(group)}")
    reasons = sorted({r.get("error") or "; ".join(r.get("rejected", [])) for r in runs} - {""})
    why = f" Reason given: {_short(reasons[0])}" if reasons else ""
    return (f"`ipc` with `distill_private` (Theorem 6.2, identity map, λ = 0, ipc = {payload['ipc']}, B = {payload['clip']:g}): "
            + "; ".join(parts) + "." + why)


def _short(reason: str) -> str:
    """The first client's reason of a quorum error, without the list of every node."""
    start = reason.find("ValueError: ")
    if start < 0:
        return reason[:300]
    end = reason.find("'", start)
    return reason[start + len("ValueError: "): end if end > 0 else None]


def markdown(payload: dict) -> str:
    lines = [
        f"# Differentially private uploads, MNIST, {payload['clients']} clients, Dirichlet α = {payload['alpha']:g}",
        "",
        f"Test accuracy % (mean ± std over seeds {payload['seeds']}); δ = {payload['delta']:g}, feature rows clipped to "
        f"B = {payload['clip']:g}, analytic Gaussian calibration, λ chosen on a server-held validation split.",
        "",
        *_table(payload),
        "",
        _ipc_line(payload),
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Machine: {payload['machine']}",
        "",
        "| cell | seed | ε | accuracy | λ | σ | accepted | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["runs"]:
        acc = f"{100 * r['accuracy']:.2f}" if "accuracy" in r else "refused"
        sigma = f"{r['sigma']:.3g}" if r.get("sigma") is not None else "-"
        reg = f"{r['reg']:g}" if "reg" in r else "-"
        lines.append(f"| {r['cell']} | {r['seed']} | {r['epsilon']:g} | {acc} | {reg} | {sigma} | {r.get('accepted', 0)} | {r['seconds']:.1f} |")
    lines.append("")
    lines.append("Seconds are wall times on a shared, loaded machine.")
    return "\n".join(lines) + "\n"


def readme(payload: dict) -> str:
    return "\n".join([
        f"MNIST, {payload['clients']} clients, Dirichlet α = {payload['alpha']:g}, {len(payload['seeds'])} seeds; test accuracy %, "
        f"δ = {payload['delta']:g}, B = {payload['clip']:g}, λ chosen on a server-held validation split.",
        "",
        *_table(payload),
        "",
        _ipc_line(payload),
        "",
        f"(`{payload['command']}`; full table in `experiments/results/{NAME}.md`)",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n\n")[0], data="MNIST: a .npz file, an IDX folder or a torchvision root", seeds=(0, 1, 2))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.5, 1.0, 2.0, 8.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip", type=float, default=1.0, help="B, the bound on feature-row norms (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1; faster on a busy machine)")
    args = parser.parse_args(argv)
    if not args.report_only:
        harness.require_data(parser, args, "MNIST")
    report = harness.Report(__file__, NAME, args.out, argv)
    return report.run(args.report_only, lambda: measure(args), markdown, readme)


if __name__ == "__main__":
    sys.exit(main())
