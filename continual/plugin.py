"""DistilledReplayPlugin: Avalanche's ReplayPlugin with a DistilledBuffer."""

from __future__ import annotations

from typing import Any

from avalanche.training.plugins import ReplayPlugin

from .buffer import DistilledBuffer


class DistilledReplayPlugin(ReplayPlugin):
    """``ReplayPlugin(mem_size, storage_policy=DistilledBuffer(max_size=mem_size, **buffer_params))``.

    ``batch_size``, ``batch_size_mem`` and ``task_balanced_dataloader`` are
    ReplayPlugin's; every other keyword goes to ``DistilledBuffer``.
    """

    def __init__(
        self,
        mem_size: int = 200,
        *,
        batch_size: int | None = None,
        batch_size_mem: int | None = None,
        task_balanced_dataloader: bool = False,
        **buffer_params: Any,
    ) -> None:
        super().__init__(
            mem_size=mem_size,
            batch_size=batch_size,
            batch_size_mem=batch_size_mem,
            task_balanced_dataloader=task_balanced_dataloader,
            storage_policy=DistilledBuffer(max_size=mem_size, **buffer_params),
        )
