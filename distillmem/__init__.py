"""distillmem: exact closed-form dataset distillation for kernel ridge regression.

Data -> feature map -> KRR -> distillation -> DistilledSet. Importing this
package does not import avalanche or flwr.
"""

from . import data, features
from .baselines import herding, kip, random_subset
from .distill import KRRDistiller, distill
from .distilled_set import DistilledSet
from .feature_cache import FeatureCache, cached_features
from .krr import KRR
from .label_only import distill_labels
from .memory import MomentMemory
from .nonsurjective import distill_approximate, distill_deep_linear
from .privacy import distill_private
from .provenance import Provenance, installed_version
from .sketch import GramSketch

__version__ = installed_version()

__all__ = [
    "KRR",
    "DistilledSet",
    "FeatureCache",
    "KRRDistiller",
    "MomentMemory",
    "GramSketch",
    "Provenance",
    "data",
    "distill",
    "cached_features",
    "features",
    "herding",
    "kip",
    "random_subset",
    "distill_labels",
    "distill_deep_linear",
    "distill_approximate",
    "distill_private",
    "__version__",
]
