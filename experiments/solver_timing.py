"""Wall time of the engine's linear-algebra kernels against the factorisations they replace, on random matrices.

Each row times one kernel of ``distillmem._solvers`` and the call it stands in
for, on the same float64 matrix, median of ``--repeats`` calls after one
warm-up, on ``--threads`` threads (torch's, which SciPy's BLAS follows):

- ``pinv`` of a full-rank matrix (QR) and of a rank-deficient one (LAPACK gelsy)
  against ``torch.linalg.pinv`` (SVD), with the relative difference of the results;
- ``eigh`` (SciPy's divide-and-conquer driver) against ``torch.linalg.eigh``;
- ``solve_dual`` (Cholesky of the n x n kernel, KRR's ``solver="dual"``) against
  the SVD path ``Spectral.svd`` at the same lambda.

    python experiments/solver_timing.py --threads 1 --repeats 5

Writes experiments/results/solver_timing.{md,json}.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import harness
import torch

from distillmem._solvers import Spectral, eigh, pinv, solve_dual


def _median_seconds(call: Callable[[], torch.Tensor | tuple], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _low_rank(rows: int, cols: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    left = torch.randn(rows, rank, generator=gen, dtype=torch.float64)
    return left @ torch.randn(rank, cols, generator=gen, dtype=torch.float64)


def _svd_pinv(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.pinv(matrix, rtol=max(matrix.shape) * torch.finfo(matrix.dtype).eps)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []

    def row(kernel: str, shape: str, ours: Callable, theirs: Callable, baseline: str, difference: float) -> None:
        rows.append({"kernel": kernel, "shape": shape, "baseline": baseline, "difference": difference,
                     "ours_s": _median_seconds(ours, args.repeats), "baseline_s": _median_seconds(theirs, args.repeats)})
        print(rows[-1], flush=True)

    for shape, rank in (((500, 784), 500), ((250, 784), 250), ((500, 784), 450)):
        a = _low_rank(*shape, rank, gen)
        kind = "full rank" if rank == min(shape) else f"rank {rank}"
        row(f"pinv, {kind}", f"{shape[0]} x {shape[1]}", lambda: pinv(a), lambda: _svd_pinv(a),
            "torch.linalg.pinv (SVD)", _rel(pinv(a), _svd_pinv(a)))
    f = torch.randn(args.eigh_size, args.eigh_size, generator=gen, dtype=torch.float64)
    gram = f @ f.T
    row("eigh", f"{args.eigh_size} x {args.eigh_size}", lambda: eigh(gram), lambda: torch.linalg.eigh(gram),
        "torch.linalg.eigh", _rel(eigh(gram)[0], torch.linalg.eigh(gram)[0]))
    features = torch.randn(1000, 3072, generator=gen, dtype=torch.float64)
    targets = torch.nn.functional.one_hot(torch.arange(1000) % 2, 2).to(torch.float64)
    dual = lambda: solve_dual(features, targets, 1e4)  # noqa: E731
    svd = lambda: Spectral.svd(features, targets).weights_t(1e4)  # noqa: E731
    row("KRR head, solve_dual", "1000 x 3072, lambda 1e4", dual, svd, "Spectral.svd", _rel(dual(), svd()))
    return {"threads": args.threads, "repeats": args.repeats, "rows": rows}


def markdown(payload: dict) -> str:
    lines = [
        "# The engine's linear-algebra kernels against what they replace", "",
        f"Command: `{payload['command']}`; machine: {payload['machine']}.", "",
        f"Median of {payload['repeats']} calls after a warm-up, {payload['threads']} thread(s), float64 random matrices.", "",
        "| kernel | matrix | engine (ms) | baseline | baseline (ms) | speed-up | relative difference |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['kernel']} | {r['shape']} | {1e3 * r['ours_s']:.1f} | {r['baseline']} | {1e3 * r['baseline_s']:.1f} | "
              f"{r['baseline_s'] / r['ours_s']:.1f}x | {harness.sci(r['difference'])} |" for r in payload["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, which SciPy follows (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per kernel (default: %(default)s)")
    parser.add_argument("--eigh-size", type=int, default=1500, help="order of the symmetric matrix (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("threads", "repeats", "eigh_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    report = harness.Report(__file__, "solver_timing", args.out, argv)
    return report.run(args.report_only, lambda: measure(args), markdown)


if __name__ == "__main__":
    sys.exit(main())
