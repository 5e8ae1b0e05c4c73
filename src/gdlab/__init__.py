"""gdlab: see gradient descent work.

Config-driven experiments that train an objective with the manual-SGD loop the autograd
tutorial teaches, and log every run to TensorBoard.
"""

from gdlab.errors import GdlabError

__version__ = "0.1.0"
__all__ = ["GdlabError", "__version__"]
