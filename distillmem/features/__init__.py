"""Seeded, frozen feature maps phi: R^d -> R^p with preimages.

Every map is rebuilt exactly from its ``spec()`` by ``from_spec``, except
``ModuleMap`` (a user's module), whose spec only describes the module.
"""

from .base import FeatureMap, from_spec
from .conv import RandomConv
from .fcnn import RandomFCNN
from .fourier import RandomFourier
from .identity import Identity
from .linear import RandomLinear
from .module import ModuleMap
from .pretrained import Pretrained

__all__ = ["FeatureMap", "Identity", "ModuleMap", "Pretrained", "RandomConv", "RandomFCNN", "RandomFourier", "RandomLinear", "from_spec"]
