"""Distilled and moment memories in Avalanche: a storage policy, a replay plugin, a KRR strategy, benchmarks.

Depends on ``distillmem`` and avalanche-lib; ``distillmem`` never imports this package.
"""

from .benchmarks import split_benchmark
from .buffer import DistilledBuffer
from .ncm import NCMStrategy
from .plugin import DistilledReplayPlugin
from .strategy import KRRStrategy

__all__ = ["DistilledBuffer", "DistilledReplayPlugin", "KRRStrategy", "NCMStrategy", "split_benchmark"]
