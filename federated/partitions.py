"""Client partitions of a training split with flwr-datasets' partitioners, on local data.

Only indices and labels enter the Arrow dataset (the images stay in numpy),
the result is cached per process, and every partitioner is seeded, so every
worker that asks for partition i gets the same indices.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=8)
def partition_indices(
    labels: tuple[int, ...], num_partitions: int, partition: str, alpha: float, classes_per_client: int, seed: int
) -> tuple[np.ndarray, ...]:
    """Positions (into ``labels``) of each of ``num_partitions`` clients; together exactly all positions.

    ``partition``: "iid" (shuffled, then contiguous shards), "dirichlet"
    (per-class Dir(alpha) proportions) or "pathological" (``classes_per_client``
    classes each, the first one assigned round-robin so every class is held).
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    y = np.asarray(labels, dtype=np.int64)
    n = y.shape[0]
    if num_partitions > n:
        raise ValueError(f"num-clients={num_partitions} exceeds the {n} training samples")
    order = np.arange(n)
    if partition == "iid":
        # IidPartitioner shards contiguously without shuffling; shuffle first, seeded.
        order = np.random.default_rng(seed).permutation(n)
        partitioner = IidPartitioner(num_partitions)
    elif partition == "dirichlet":
        # At least one sample each; 10 (the library's default) when the data allows it.
        partitioner = DirichletPartitioner(
            num_partitions, "label", alpha, min_partition_size=max(1, min(10, n // (4 * num_partitions))), seed=seed
        )
    elif partition == "pathological":
        n_classes = int(y.max()) + 1
        if num_partitions < n_classes:
            # The first class of partition i is i mod k, so every class is held only with k clients or more.
            raise ValueError(
                f"pathological partitions need num-clients >= the {n_classes} classes so that every class is held, "
                f"got {num_partitions}"
            )
        partitioner = PathologicalPartitioner(
            num_partitions, "label", classes_per_client, class_assignment_mode="first-deterministic", seed=seed
        )
    else:
        raise ValueError(f"partition={partition!r}: must be one of ('iid', 'dirichlet', 'pathological')")
    partitioner.dataset = Dataset.from_dict({"idx": order, "label": y[order]})
    try:
        with warnings.catch_warnings():
            # The library warns at every Dirichlet redraw; a split that fails for good raises below instead.
            warnings.filterwarnings("ignore", category=UserWarning, module="flwr_datasets")
            parts = tuple(np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)) for i in range(num_partitions))
    except ValueError as err:
        raise ValueError(
            f"partition={partition!r} with alpha={alpha} cannot split {n} samples over {num_partitions} clients ({err}); "
            "use fewer clients, a larger alpha or another partition"
        ) from None
    covered = np.concatenate(parts)
    if covered.shape[0] != n or np.unique(covered).shape[0] != n:
        raise ValueError(
            f"the {partition} partitioner covered {np.unique(covered).shape[0]} of {n} samples "
            f"({covered.shape[0]} with repeats); the clients' partitions must be the whole training split"
        )
    return parts
