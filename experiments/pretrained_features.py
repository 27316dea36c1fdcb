"""Pretrained EfficientNet-Lite features of CIFAR-10: extraction time, cached load time, joint ridge accuracy.

The training and test images, as ``load_dataset("cifar10", ...)`` gives
them, go through ``distillmem.features.Pretrained`` (frozen ImageNet
weights, resized to ``--image-size``) once, into feature caches in
``--cache-dir`` (``distillmem.cached_features``); later runs and other
experiments load them. Reported per split: the extraction's wall time (as
recorded in the cache when it was made), the time of a cached call (the
data's sha256 plus reading the file) and of ``FeatureCache.load`` alone.
Then joint ridge regression on all 50,000 training features (``KRR`` with
the identity map on the features, lambda by the engine's ``reg="auto"``: a
seeded 95/5 split of the training set, then a refit on all of it), scored on
the 10,000 test images.

    python experiments/pretrained_features.py --data path/to/cifar10.npz --cache-dir path/to/cache
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import harness
import torch

import distillmem as dm
from distillmem.data import load_dataset

DEFAULT_CACHE = Path.home() / ".cache" / "distillmem" / "features"


def cache_path(cache_dir: Path, backbone: str, image_size: int, split: str) -> Path:
    """Where the features of CIFAR-10's ``split`` under that backbone and size are cached."""
    return Path(cache_dir) / f"cifar10-{split}-{backbone}-{image_size}.dmf"


def result_name(backbone: str, image_size: int) -> str:
    return f"pretrained_features_cifar10_{backbone.removeprefix('efficientnet-')}_{image_size}"


def measure(args) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    data = load_dataset("cifar10", args.data)
    data_seconds = time.perf_counter() - start
    fmap = dm.features.Pretrained.for_dataset(data, args.backbone, image_size=args.image_size)
    splits, features = {}, {}
    for split, x in (("train", data.x_train), ("test", data.x_test)):
        path = cache_path(args.cache_dir, args.backbone, args.image_size, split)
        computed_now = not path.exists()
        dm.cached_features(fmap, x, path, chunk_size=args.chunk_size, dataset=f"cifar10-{split}")
        start = time.perf_counter()
        features[split] = dm.cached_features(fmap, x, path, progress=False)
        cached_seconds = time.perf_counter() - start
        start = time.perf_counter()
        cache = dm.FeatureCache.load(path)
        splits[split] = {
            "n": len(x), "file": path.name, "bytes": path.stat().st_size, "computed_in_this_run": computed_now,
            "extract_seconds": cache.compute_seconds, "cached_call_seconds": cached_seconds,
            "load_seconds": time.perf_counter() - start,
        }
    start = time.perf_counter()
    model = dm.KRR(dm.features.Identity(), reg="auto", seed=0).fit(features["train"], data.y_train)
    ridge_seconds = time.perf_counter() - start
    return {
        "dataset": "cifar10", "feature_map": fmap.spec(), "p": features["train"].shape[1],
        "data_load_seconds": data_seconds, "splits": splits,
        "load_average": [load_before, os.getloadavg()[0]],
        "ridge": {
            "reg": model.reg_, "val_accuracy": model.val_accuracy_, "seconds": ridge_seconds,
            "train_accuracy": model.score(features["train"], data.y_train),
            "test_accuracy": model.score(features["test"], data.y_test),
        },
    }


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def markdown(payload: dict) -> str:
    spec, ridge = payload["feature_map"]["params"], payload["ridge"]
    lines = [
        f"# Pretrained {spec['backbone']} features of CIFAR-10 at {spec['image_size']} px",
        "",
        f"`{payload['command']}`",
        "",
        f"{payload['machine']}. {harness.load_note(payload['load_average'])}",
        "",
        f"Weights sha256 `{spec['weights_sha256']}`; p = {payload['p']} pooled features.",
        "",
        "| split | images | extraction (recorded when the cache was made) | made in this run | images/s "
        "| cached call (hash + read) | read alone | file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, row in payload["splits"].items():
        lines.append(
            f"| {split} | {row['n']:,} | {_minutes(row['extract_seconds'])} | {'yes' if row['computed_in_this_run'] else 'no'} "
            f"| {row['n'] / row['extract_seconds']:.0f} "
            f"| {row['cached_call_seconds']:.1f} s | {row['load_seconds']:.1f} s | {row['bytes'] / 1e6:.0f} MB |"
        )
    lines += [
        "",
        "| joint ridge on all training features | value |",
        "|---|---|",
        f"| lambda (reg=\"auto\", seeded 95/5 split) | {harness.sci(ridge['reg'])} |",
        f"| held-out accuracy at that lambda | {100 * ridge['val_accuracy'][str(float(ridge['reg']))]:.2f}% |",
        f"| training accuracy | {100 * ridge['train_accuracy']:.2f}% |",
        f"| **test accuracy** | **{100 * ridge['test_accuracy']:.2f}%** |",
        f"| fit time | {ridge['seconds']:.1f} s |",
    ]
    return "\n".join(lines) + "\n"


def readme(payload: dict) -> str:
    spec, ridge, splits = payload["feature_map"]["params"], payload["ridge"], payload["splits"]
    extract = sum(row["extract_seconds"] for row in splits.values())
    cached = sum(row["cached_call_seconds"] for row in splits.values())
    n = sum(row["n"] for row in splits.values())
    if all(row["computed_in_this_run"] for row in splits.values()):
        timing = harness.load_note(payload["load_average"], sentence=False)
    else:
        timing = "as recorded when the caches were made, under a load this run did not record"
    return (
        f"Joint ridge on the {spec['backbone']} features ({spec['image_size']} px) of all {splits['train']['n']:,} "
        f"CIFAR-10 training images: **{100 * ridge['test_accuracy']:.2f}%** test accuracy "
        f"(λ = {harness.sci(ridge['reg'])} by `reg=\"auto\"`). Extracting the features of all {n:,} images took "
        f"{_minutes(extract)} on {payload['machine'].split(', torch')[0]} ({timing}); a later run gets them from "
        f"the cache in {cached:.1f} s, hashing the images included (`{payload['command']}`)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__.split("\n\n")[0], data="cifar10.npz or a torchvision root")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="folder of the feature caches (default: %(default)s)")
    parser.add_argument("--backbone", default="efficientnet-lite0", choices=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
    parser.add_argument("--image-size", type=int, default=160, help="side of the images the backbone sees (default: %(default)s)")
    parser.add_argument("--chunk-size", type=int, default=256, help="images per cache chunk (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); 1 is faster on a CPU that other jobs keep busy")
    args = parser.parse_args(argv)
    if not args.report_only:
        harness.require_data(parser, args)
    report = harness.Report(__file__, result_name(args.backbone, args.image_size), args.out, argv)
    return report.run(args.report_only, lambda: measure(args), markdown, readme)


if __name__ == "__main__":
    sys.exit(main())
