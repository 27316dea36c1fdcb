"""Command line: ``distillmem distill | eval | show``.

A user error (a bad argument, a missing, unreadable or malformed file, an
output that would overwrite an input or another output) is one line on stderr
and exit status 2; outputs are checked before any work starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .files import output_target
from ._validation import check_int, check_real, resolve_device
from .data import DATASETS, dataset_files
from .viz import CONTRASTS

# What a user's input or environment can cause; anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)


class _UsageError(Exception):
    """A command-line argument argparse rejected."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints the usage and exits; report it as one line like every other error.
        raise _UsageError(f"{message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return args.command(args)
    except (_UsageError, *_USER_ERRORS) as exc:
        print(f"distillmem: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def _check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse outputs that cannot be written, that exist (unless ``overwrite``), that are an input, or
    that are the same file as each other.

    Paths are compared after following symlinks, and existing files by inode, so
    a link or a hard link to an input is refused too.
    """
    targets: list[tuple[Path, Path]] = []
    for out in outputs:
        target = output_target(out)
        for source in inputs:
            if _same_file(target, source):
                raise ValueError(f"output {out} is the input {source}; refusing to overwrite it")
        for other, other_target in targets:
            if _same_file(target, other_target):
                raise ValueError(f"outputs {other} and {out} are the same file; give them different paths")
        targets.append((out, target))
    for out, target in targets:
        if target.exists() and not overwrite:
            raise ValueError(f"{out} exists; pass --overwrite to replace it, or choose another path")


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _distill(args: argparse.Namespace) -> int:
    from .protocol import run_protocol
    from .viz import save_image_grid

    outputs = [args.out] if args.png is None else [args.out, args.png]
    _check_outputs(outputs, dataset_files(args.dataset, args.data), args.overwrite)
    resolve_device(args.device)
    result = run_protocol(
        args.dataset, args.data, feature_map=args.feature_map, ipc=args.ipc, seed=args.seed, init=args.init,
        reg=args.reg, reg_s=args.reg_s, device=args.device, progress=not args.quiet,
    )
    distilled = result.distilled
    distilled.save(args.out)
    written = [str(args.out)]
    if args.png is not None:
        contrast = "clip" if args.init == "real" else "minmax"
        save_image_grid(distilled.images(), args.png, distilled.n_classes, contrast)
        written.append(f"{args.png} ({contrast} contrast)")
    rows = [
        ("dataset", f"{result.dataset}: {result.n_train} training points (95% split), {result.n_test} test points"),
        ("feature map", f"{result.feature_map} (seed {result.seed}), lambda = {result.reg:.3g}"),
        ("original", f"test accuracy {100 * result.original_accuracy:.2f}%"),
        ("distilled", f"test accuracy {100 * result.distilled_accuracy:.2f}% from {len(distilled)} points "
                      f"({result.ipc} per class, {result.init} init)"),
        ("agreement", f"{100 * result.agreement:.2f}% of test predictions identical"),
        ("recovery", f"||W_S - W|| / ||W|| = {result.recovery_error:.2e}"),
        ("time", f"{result.seconds:.2f} s from loading the data to the distilled model's accuracy"),
        ("wrote", ", ".join(written)),
    ]
    _print_rows(rows)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .distilled_set import DistilledSet

    resolve_device(args.device)
    distilled = DistilledSet.load(args.file)
    name = args.dataset or distilled.provenance.dataset
    if name is None:
        raise ValueError(f"{args.file} does not record its dataset; pass --dataset")
    data = load_dataset(name, args.data)
    if data.n_features != distilled.x.shape[1]:
        raise ValueError(f"{args.file} has {distilled.x.shape[1]} features per point, {name} has {data.n_features}")
    accuracy = distilled.fit_krr(device=args.device).score(data.x_test, data.y_test)
    _print_rows([
        ("file", f"{args.file}: {len(distilled)} points, {distilled.n_classes} classes"),
        ("feature map", f"{distilled.feature_map_spec['name']}, lambda = {distilled.reg:.3g}"),
        ("test accuracy", f"{100 * accuracy:.2f}% on {name} ({len(data.y_test)} test points)"),
        ("recovery", f"{distilled.recovery_error:.2e} when distilled" if distilled.recovery_error is not None else "not recorded"),
    ])
    return 0


def _show(args: argparse.Namespace) -> int:
    from .distilled_set import DistilledSet
    from .viz import save_image_grid

    out = args.out or args.file.with_suffix(".png")
    _check_outputs([out], [args.file], args.overwrite)
    distilled = DistilledSet.load(args.file)
    save_image_grid(distilled.images(), out, distilled.n_classes, args.contrast)
    print(f"wrote {out}: {len(distilled)} points, one column per class, {args.contrast} contrast")
    return 0


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _lambda(word: str):
    """An argparse type for a lambda: a finite number >= 0, or ``word``."""

    def parse(text: str) -> float | str:
        if text == word:
            return text
        try:
            return check_real(float(text), "lambda", minimum=0.0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number >= 0 or {word!r}, got {text!r}") from None

    return parse


def _ipc(text: str) -> int:
    try:
        return check_int(int(text), "ipc", minimum=1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ipc must be an integer >= 1, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distillmem", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="command")

    distill = commands.add_parser("distill", help="distil a dataset and report the original and distilled accuracy")
    distill.add_argument("--dataset", default="digits", choices=DATASETS, help="default: digits, embedded, no network")
    distill.add_argument("--data", metavar="PATH", help="a .npz file, a folder of IDX files or a torchvision root")
    distill.add_argument("--feature-map", default="fcnn", choices=("identity", "fcnn", "rff"))
    distill.add_argument("--ipc", type=_ipc, default=10, help="points per class (default 10)")
    distill.add_argument("--init", default="real", choices=("noise", "real"),
                         help="start from real points (default; they stay close to them) or from noise")
    distill.add_argument("--reg", type=_lambda("auto"), default="auto", help="lambda of the original model, or 'auto' (default)")
    distill.add_argument("--reg-s", type=_lambda("bound"), default=0.0, help="lambda of the distilled model, or 'bound' (default 0)")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--device", default=None, help="cpu (default) or cuda")
    distill.add_argument("--out", type=Path, default=Path("distilled.dm"), help="default: distilled.dm")
    distill.add_argument("--png", type=Path, default=Path("distilled.png"), help="picture of the points (default: distilled.png)")
    distill.add_argument("--quiet", action="store_true", help="no progress bars")
    distill.add_argument("--overwrite", action="store_true", help="replace --out and --png if they exist")
    distill.set_defaults(command=_distill)

    evaluate = commands.add_parser("eval", help="fit KRR on a distilled set and report its test accuracy")
    evaluate.add_argument("file", type=Path)
    evaluate.add_argument("--dataset", choices=DATASETS, help="default: the dataset recorded in the file")
    evaluate.add_argument("--data", metavar="PATH")
    evaluate.add_argument("--device", default=None)
    evaluate.set_defaults(command=_eval)

    show = commands.add_parser("show", help="write a PNG grid of the distilled points, un-normalised")
    show.add_argument("file", type=Path)
    show.add_argument("--out", type=Path, help="default: FILE with a .png suffix")
    show.add_argument("--contrast", default="clip", choices=CONTRASTS,
                      help="clip to the pixel range (default) or stretch each image (for noise init)")
    show.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    show.set_defaults(command=_show)
    return parser


if __name__ == "__main__":
    sys.exit(main())
