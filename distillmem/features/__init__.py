"""Seeded, frozen feature maps phi: R^d -> R^p with preimages.

Every map is rebuilt exactly from its ``spec()`` by ``from_spec``.
"""

from .base import FeatureMap, from_spec
from .fcnn import RandomFCNN
from .fourier import RandomFourier
from .identity import Identity

__all__ = ["FeatureMap", "Identity", "RandomFCNN", "RandomFourier", "from_spec"]
