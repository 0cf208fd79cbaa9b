"""Type stubs of the Rust extension module ``sparse_infer._native``."""

from os import PathLike
from typing import Any, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
F32Array = npt.NDArray[np.float32]
StrPath = Union[str, "PathLike[str]"]

__version__: str

def fista(
    x: ArrayLike,
    dictionary: ArrayLike,
    lam: float = 0.1,
    *,
    max_iter: int = 1000,
    tol: float = 1e-6,
    nonnegative: bool = True,
) -> F32Array:
    """FISTA on ``argmin_z 0.5*||x - z @ D||^2 + lam*||z||_1`` per row of ``x``
    (``z >= 0`` when ``nonnegative``). Stops when the relative change of the
    codes over the batch falls below ``tol`` (0 runs ``max_iter`` iterations).
    Returns codes ``(n_samples, n_latents)``."""

def ista(
    x: ArrayLike,
    dictionary: ArrayLike,
    lam: float = 0.1,
    *,
    max_iter: int = 1000,
    tol: float = 1e-6,
    nonnegative: bool = True,
) -> F32Array:
    """ISTA (FISTA without momentum) on the same lasso."""

def omp(
    x: ArrayLike,
    dictionary: ArrayLike,
    k: int,
    *,
    tol: Optional[float] = None,
    nonnegative: bool = True,
) -> F32Array:
    """Orthogonal matching pursuit: at most ``k`` atoms per row, least-squares
    coefficients on the support (non-negative least squares when ``nonnegative``)."""

def matching_pursuit(
    x: ArrayLike, dictionary: ArrayLike, k: int, *, nonnegative: bool = True
) -> F32Array:
    """Matching pursuit: ``k`` greedy steps per row (an atom may be chosen again)."""

def mcc(true_codes: ArrayLike, pred_codes: ArrayLike) -> float:
    """Code MCC in [0, 1]: mean over true latents of |Pearson correlation|
    with the optimally matched (Hungarian) predicted latent."""

def dictionary_mcc(true_dictionary: ArrayLike, pred_dictionary: ArrayLike) -> float:
    """Dictionary MCC in [0, 1]: the same on atoms (rows), mean-centred over ``dim``."""

def make_sparse_data(
    n_samples: int,
    n_latents: int,
    dim: int,
    k: int,
    *,
    seed: int = 0,
    noise: float = 0.0,
) -> Tuple[F32Array, F32Array, F32Array]:
    """The paper's synthetic data ``(X, Z, D)``: exactly-``k``-sparse half-normal
    codes ``Z``, a unit-norm random dictionary ``D``, ``X = Z @ D`` (+ noise)."""

def load_saelens(path: StrPath) -> dict[str, Any]:
    """Reads a SAELens folder; keys: architecture, d_in, d_sae, W_enc, b_enc,
    W_dec, b_dec, threshold (jumprelu), k and rescale_acts_by_decoder_norm
    (topk), apply_b_dec_to_input, normalize_activations, metadata_json."""

def save_saelens(
    path: StrPath,
    w_enc: ArrayLike,
    b_enc: ArrayLike,
    w_dec: ArrayLike,
    b_dec: ArrayLike,
    architecture: str,
    *,
    k: Optional[int] = None,
    threshold: Optional[ArrayLike] = None,
    apply_b_dec_to_input: bool = True,
    rescale_acts_by_decoder_norm: bool = False,
    normalize_activations: str = "none",
    metadata_json: str = "{}",
) -> None:
    """Writes a SAELens folder (cfg.json + sae_weights.safetensors, float32)."""

def sae_encode(
    x: ArrayLike,
    w_enc: ArrayLike,
    b_enc: ArrayLike,
    w_dec: ArrayLike,
    b_dec: ArrayLike,
    architecture: str,
    *,
    k: Optional[int] = None,
    threshold: Optional[ArrayLike] = None,
    apply_b_dec_to_input: bool = True,
    rescale_acts_by_decoder_norm: bool = False,
) -> F32Array:
    """SAELens' encode: feature activations ``(n_samples, d_sae)``."""

def fit_sae(
    x: ArrayLike,
    architecture: str,
    n_latents: int,
    *,
    steps: int,
    seed: int = 0,
    l1: Optional[float] = None,
    lr: Optional[float] = None,
    k: Optional[int] = None,
) -> dict[str, Any]:
    """Full-batch training of a standard/topk/batchtopk/jumprelu SAE; returns
    it in the layout of :func:`load_saelens`."""

def fit_sparse_coding(
    x: ArrayLike,
    n_latents: int,
    *,
    steps: int,
    seed: int = 0,
    lam: float = 0.1,
    fista_iters: int = 50,
) -> F32Array:
    """Alternating sparse coding (FISTA codes, MOD update); returns ``D``."""
