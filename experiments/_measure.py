"""Run one experiment in a fresh process and read its own peak memory."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def peak_rss_gb() -> float:
    """VmHWM, the peak resident memory of this process image, in GB (10^9 bytes).

    Not ru_maxrss: a spawned child is forked from the parent before it execs the
    new interpreter, and Linux carries the forked image's size over in ru_maxrss.
    VmHWM belongs to the memory map that exec created, so it counts this run only.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9  # the kernel's "kB" are KiB
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def _call_and_measure(job: tuple[Callable[..., Any], dict]) -> tuple[Any, float]:
    function, kwargs = job
    result = function(**kwargs)
    return result, peak_rss_gb()


def run_isolated(function: Callable[..., Any], **kwargs: Any) -> tuple[Any, float]:
    """``function(**kwargs)`` in a fresh spawned process: (its result, its peak RSS in GB)."""
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply(_call_and_measure, ((function, kwargs),))
    finally:
        # close + join lets the worker exit cleanly (terminate() leaks a semaphore warning).
        pool.close()
        pool.join()
