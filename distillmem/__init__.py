"""distillmem: exact closed-form dataset distillation for kernel ridge regression.

Data -> feature map -> KRR -> distillation -> DistilledSet. Importing this
package does not import avalanche or flwr.
"""

from . import data, features
from .distill import KRRDistiller, distill
from .distilled_set import DistilledSet
from .krr import KRR

__version__ = "0.1.0"

__all__ = ["KRR", "DistilledSet", "KRRDistiller", "data", "distill", "features", "__version__"]
