"""Reading an experience's dataset into checked tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import math

import torch
from torch.utils.data import DataLoader

from distillmem.features import FeatureMap

_READ_BATCH = 4096


@dataclass(frozen=True)
class ExperienceData:
    """An experience's samples: x (n, *input_shape) float, y (n,) int64, one task label."""

    x: torch.Tensor
    y: torch.Tensor
    task_label: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def read_experience(dataset, *, classes: Sequence[int] | None = None) -> ExperienceData:
    """Read every ``(x, y, t, ...)`` item of an Avalanche dataset (its eval transforms), checked.

    Raises ValueError, naming the problem, for: no samples, non-finite
    inputs, a declared class (in ``classes``) without samples, a label outside
    ``classes``, or more than one task label.
    """
    view = dataset.eval() if hasattr(dataset, "eval") else dataset
    loader = DataLoader(view, batch_size=_READ_BATCH, shuffle=False, collate_fn=getattr(view, "collate_fn", None))
    xs, ys, ts = [], [], []
    for batch in loader:
        if len(batch) < 3:
            raise ValueError(f"dataset items must be (x, y, t, ...) as in Avalanche benchmarks, got {len(batch)} fields")
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
        ts.append(torch.as_tensor(batch[2]))
    if not xs:
        raise ValueError("the experience has no samples: nothing to learn or distil")
    x, y, t = torch.cat(xs), torch.cat(ys).to(torch.int64).flatten(), torch.cat(ts).flatten()
    if not x.is_floating_point():
        raise ValueError(f"inputs must be floating point (normalised), got {x.dtype}")
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"the experience has {int((~finite).sum())} of {x.shape[0]} samples with NaN or Inf inputs")
    if classes is not None:
        declared = {int(c) for c in classes}
        present = set(torch.unique(y).tolist())
        if present - declared:
            raise ValueError(
                f"the experience has labels {sorted(present - declared)} outside its declared classes {sorted(declared)}"
            )
        if declared - present:
            raise ValueError(f"the experience declares classes {sorted(declared - present)} that have no samples")
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, found {int(y.min())}")
    tasks = torch.unique(t).tolist()
    if len(tasks) != 1:
        raise ValueError(f"an experience must carry one task label, found {tasks}")
    return ExperienceData(x, y, int(tasks[0]))


def check_fits(feature_map: FeatureMap, data: ExperienceData) -> None:
    """Raise ValueError, naming the map and the inputs' shape, if the map does not take the flattened inputs."""
    width = math.prod(data.input_shape)
    try:
        feature_map.check_input(data.x[:1].reshape(1, width))
    except ValueError as err:
        raise ValueError(
            f"feature_map {feature_map!r} does not fit the experience's inputs of shape "
            f"{data.input_shape} (flattened width {width}): {err}"
        ) from None
