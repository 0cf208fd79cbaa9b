"""sparse_infer: sparse inference and dictionary learning from Rust, for numpy.

Per-sample solvers on a fixed dictionary ``D`` (``n_latents x dim``, atoms as
rows), metrics, the paper's synthetic data, SAELens folders and
scikit-learn-style estimators. Data ``X`` is ``(n_samples, dim)`` and codes
``Z`` are ``(n_samples, n_latents)`` with ``X ~ Z @ D``.

Functions take any array-like of real numbers (numpy converts it to float32
where it is not already; the Rust core then copies it once into its own
row-major buffer) and return float32 arrays handed over without a copy. The
computation runs with the GIL released. Invalid input raises ``ValueError``
with a one-line message.

>>> import sparse_infer as si
>>> X, Z, D = si.make_sparse_data(256, n_latents=16, dim=8, k=3, seed=0)
>>> Zhat = si.fista(X, D, lam=0.01)
>>> si.mcc(Z, Zhat) > 0.9
True
"""

from ._native import (
    __version__,
    dictionary_mcc,
    fista,
    ista,
    make_sparse_data,
    matching_pursuit,
    mcc,
    omp,
)
from . import saelens
from .estimators import SparseAutoencoder, SparseCoding

__all__ = [
    "__version__",
    "dictionary_mcc",
    "fista",
    "ista",
    "make_sparse_data",
    "matching_pursuit",
    "mcc",
    "omp",
    "saelens",
    "SparseAutoencoder",
    "SparseCoding",
]
