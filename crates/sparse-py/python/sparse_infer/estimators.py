"""Estimators in scikit-learn's style: ``__init__`` only stores parameters,
``fit(X)`` returns ``self``, ``transform(X)`` returns codes, learned
attributes end in ``_`` and ``components_`` is the dictionary
``D (n_components, n_features)`` (atoms as rows, ``X ~ Z @ D``).

With scikit-learn installed they derive from ``BaseEstimator`` and
``TransformerMixin`` (``get_params``, ``set_params``, ``clone``, pipelines,
``fit_transform``) and pass ``sklearn.utils.estimator_checks`` (see the
package tests for the checks that do not apply). Without it, a minimal
``get_params``/``set_params``/``fit_transform`` is provided.

``random_state=None`` means seed 0: results are reproducible by default.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Dict, Optional, Union

import numpy as np
import numpy.typing as npt

from . import _native
from . import saelens as _saelens

__all__ = ["SparseAutoencoder", "SparseCoding"]

try:  # pragma: no cover - exercised by whichever environment runs the tests
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.exceptions import NotFittedError
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_is_fitted

    try:
        from sklearn.utils.validation import validate_data as _sk_validate_data
    except ImportError:  # scikit-learn < 1.6
        _sk_validate_data = None
    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover
    HAVE_SKLEARN = False

    class NotFittedError(ValueError, AttributeError):  # type: ignore[no-redef]
        """Raised by ``transform`` before ``fit``."""

    class BaseEstimator:  # type: ignore[no-redef]
        """``get_params``/``set_params`` from the ``__init__`` signature."""

        @classmethod
        def _get_param_names(cls) -> list:
            sig = inspect.signature(cls.__init__)
            return sorted(p for p in sig.parameters if p != "self")

        def get_params(self, deep: bool = True) -> Dict[str, Any]:
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params: Any) -> "BaseEstimator":
            valid = self._get_param_names()
            for name, value in params.items():
                if name not in valid:
                    raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {valid}")
                setattr(self, name, value)
            return self

        def __repr__(self) -> str:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    class TransformerMixin:  # type: ignore[no-redef]
        """``fit_transform`` = ``fit`` then ``transform``."""

        def fit_transform(self, X: npt.ArrayLike, y: Any = None, **fit_params: Any) -> np.ndarray:
            return self.fit(X, y, **fit_params).transform(X)

    def check_is_fitted(estimator: Any, attributes: Any = None) -> None:
        if not any(k.endswith("_") and not k.startswith("__") for k in vars(estimator)):
            raise NotFittedError(f"This {type(estimator).__name__} instance is not fitted yet; call fit first.")

    def check_random_state(seed: Any) -> np.random.RandomState:
        if isinstance(seed, np.random.RandomState):
            return seed
        return np.random.RandomState(seed)

    _sk_validate_data = None


def _seed(random_state: Any) -> int:
    """``None`` -> 0; an int -> itself; a ``RandomState`` -> a draw from it."""
    if random_state is None:
        return 0
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise ValueError(f"random_state must be non-negative, got {random_state}")
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


class _Base(TransformerMixin, BaseEstimator):
    """Input validation shared by the estimators."""

    def _validate(self, X: Any, reset: bool) -> np.ndarray:
        if HAVE_SKLEARN:
            if _sk_validate_data is not None:
                return _sk_validate_data(self, X, reset=reset, dtype=[np.float32, np.float64])
            return self._validate_data(X, reset=reset, dtype=[np.float32, np.float64])  # type: ignore[attr-defined]
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise ValueError(f"expected real numbers, got dtype {X.dtype}")
        X = X.astype(np.float32, copy=False)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array (n_samples, n_features), got shape {X.shape}")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"found array with shape {X.shape}; at least one sample and one feature are required")
        if not np.all(np.isfinite(X)):
            raise ValueError("Input contains NaN or infinity.")
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} features as input"
            )
        return X

    def _n_components(self, n_features: int) -> int:
        n = self.n_components if self.n_components is not None else n_features
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n_components must be a positive integer or None, got {n!r}")
        return int(n)

    def _positive_int(self, name: str, value: Any) -> int:
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return int(value)

    def inverse_transform(self, Z: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Reconstruction ``Z @ components_ (+ b_dec_)`` of codes ``Z (n_samples, n_components)``."""
        check_is_fitted(self)
        Z = np.asarray(Z, dtype=np.float32)
        if Z.ndim != 2 or Z.shape[1] != self.components_.shape[0]:
            raise ValueError(f"codes: expected shape (n_samples, {self.components_.shape[0]}), found {Z.shape}")
        out = Z @ self.components_
        b = getattr(self, "b_dec_", None)
        return (out + b if b is not None else out).astype(np.float32)

    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def _more_tags(self) -> Dict[str, Any]:  # scikit-learn < 1.6
        return {"preserves_dtype": [np.float32]}


class SparseAutoencoder(_Base):
    """A sparse autoencoder with a learned unit-norm dictionary, trained
    full-batch with Adam in Rust, stored in SAELens' terms.

    Parameters
    ----------
    n_components : int or None
        Number of latents ``d_sae`` (None: ``n_features``).
    architecture : {"standard", "topk", "batchtopk", "jumprelu"}
        ``standard``: ReLU encoder with L1 penalty (weight ``l1_coefficient``
        on the paper's scale, default 0.01); ``topk``: the ``k`` largest
        pre-activations per sample; ``batchtopk``: ``k`` per sample on average
        during training, a learned threshold at inference (saved as SAELens
        ``jumprelu``); ``jumprelu``: learned thresholds, L0 penalty weight
        ``l1_coefficient`` (default 1).
    k : int or None
        Active latents (``topk``, ``batchtopk``; required there).
    l1_coefficient : float or None
        Sparsity weight (``standard``, ``jumprelu``); None for the default.
    learning_rate : float
        Adam learning rate.
    max_iter : int
        Full-batch Adam steps.
    random_state : int, RandomState or None
        Seed of the initialisation (None: 0).

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
        The dictionary ``W_dec``, unit-norm rows.
    W_enc_ : ndarray (n_features, n_components)
    b_enc_ : ndarray (n_components,)
    b_dec_ : ndarray (n_features,)
    threshold_ : ndarray (n_components,) or None
        JumpReLU thresholds (``jumprelu``, ``batchtopk``).
    saelens_architecture_ : str
        The SAELens inference architecture (``batchtopk`` is ``jumprelu``).
    apply_b_dec_to_input_ : bool
        Whether ``b_dec`` is subtracted from the input before encoding.
    n_iter_ : int
        Training steps taken.
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components: Optional[int] = None,
        *,
        architecture: str = "standard",
        k: Optional[int] = None,
        l1_coefficient: Optional[float] = None,
        learning_rate: float = 1e-3,
        max_iter: int = 1000,
        random_state: Any = None,
    ) -> None:
        self.n_components = n_components
        self.architecture = architecture
        self.k = k
        self.l1_coefficient = l1_coefficient
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: npt.ArrayLike, y: Any = None) -> "SparseAutoencoder":
        """Trains on ``X (n_samples, n_features)``; returns ``self``."""
        X = self._validate(X, reset=True)
        n = self._n_components(X.shape[1])
        steps = self._positive_int("max_iter", self.max_iter)
        k = None if self.k is None else self._positive_int("k", self.k)
        sae = _native.fit_sae(
            X,
            self.architecture,
            n,
            steps=steps,
            seed=_seed(self.random_state),
            l1=None if self.l1_coefficient is None else float(self.l1_coefficient),
            lr=float(self.learning_rate),
            k=k,
        )
        self._set_from_saelens(dict(sae))
        self.n_iter_ = steps
        return self

    def _set_from_saelens(self, sae: Dict[str, Any]) -> None:
        self.W_enc_ = np.asarray(sae["W_enc"], dtype=np.float32)
        self.b_enc_ = np.asarray(sae["b_enc"], dtype=np.float32)
        self.components_ = np.asarray(sae["W_dec"], dtype=np.float32)
        self.b_dec_ = np.asarray(sae["b_dec"], dtype=np.float32)
        t = sae.get("threshold")
        self.threshold_ = None if t is None else np.asarray(t, dtype=np.float32)
        self.saelens_architecture_ = sae["architecture"]
        self.k_ = sae.get("k")
        self.rescale_acts_by_decoder_norm_ = bool(sae.get("rescale_acts_by_decoder_norm", False))
        self.apply_b_dec_to_input_ = bool(sae["apply_b_dec_to_input"])
        self.n_features_in_ = self.W_enc_.shape[0]

    def _saelens_dict(self) -> Dict[str, Any]:
        return {
            "architecture": self.saelens_architecture_,
            "W_enc": self.W_enc_,
            "b_enc": self.b_enc_,
            "W_dec": self.components_,
            "b_dec": self.b_dec_,
            "threshold": self.threshold_,
            "k": self.k_,
            "rescale_acts_by_decoder_norm": self.rescale_acts_by_decoder_norm_,
            "apply_b_dec_to_input": self.apply_b_dec_to_input_,
            "metadata": (
                {"training_architecture": self.architecture, "training_architecture_details": {"k": self.k}}
                if self.architecture != self.saelens_architecture_
                else {}
            ),
        }

    def transform(self, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Codes ``(n_samples, n_components)``, float32, by SAELens' inference math."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        return _saelens.encode(self._saelens_dict(), X)

    def save_saelens(self, path: Union[str, "os.PathLike[str]"], *, hook_name: Optional[str] = None) -> None:
        """Writes the fitted SAE as a SAELens folder (``sae_lens.SAE.load_from_disk`` loads it)."""
        check_is_fitted(self)
        _saelens.save(path, self._saelens_dict(), hook_name=hook_name)

    @classmethod
    def from_saelens(cls, path: Union[str, "os.PathLike[str]"]) -> "SparseAutoencoder":
        """A fitted estimator from a SAELens folder (for ``transform`` and
        ``inverse_transform``; refitting trains a fresh SAE of that shape)."""
        sae = _saelens.load(path)
        md = sae.get("metadata", {})
        arch = md.get("training_architecture") if md.get("training_architecture") == "batchtopk" else sae["architecture"]
        k = sae.get("k") or (md.get("training_architecture_details") or {}).get("k")
        est = cls(n_components=int(sae["d_sae"]), architecture=arch, k=k)
        est._set_from_saelens(sae)
        return est


class SparseCoding(_Base):
    """Dictionary learning by alternating sparse coding (FISTA codes on the
    lasso, MOD dictionary update, dead atoms resampled), and sparse codes on
    the learned dictionary by FISTA, ISTA, OMP or matching pursuit.

    Parameters
    ----------
    n_components : int or None
        Number of atoms (None: ``n_features``).
    alpha : float
        Lasso weight on the scale ``0.5*||x - z @ D||^2 + alpha*||z||_1`` (fit).
    max_iter : int
        Alternating steps (each: FISTA codes, then a dictionary update).
    fit_fista_iters : int
        FISTA iterations per step during fit.
    transform_algorithm : {"fista", "ista", "omp", "mp"}
    transform_alpha : float or None
        Lasso weight of fista/ista in ``transform`` (None: ``alpha``).
    transform_n_nonzero_coefs : int or None
        Atoms per sample for omp/mp (None: ``max(1, n_features // 10)``, at most ``n_components``).
    transform_max_iter : int
        Iteration cap of fista/ista in ``transform``.
    positive_code : bool
        Non-negative codes.
    random_state : int, RandomState or None
        Seed of the initial dictionary (None: 0).

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
        The dictionary, unit-norm rows.
    n_iter_ : int
        Alternating steps taken.
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components: Optional[int] = None,
        *,
        alpha: float = 0.1,
        max_iter: int = 100,
        fit_fista_iters: int = 50,
        transform_algorithm: str = "fista",
        transform_alpha: Optional[float] = None,
        transform_n_nonzero_coefs: Optional[int] = None,
        transform_max_iter: int = 1000,
        positive_code: bool = True,
        random_state: Any = None,
    ) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.max_iter = max_iter
        self.fit_fista_iters = fit_fista_iters
        self.transform_algorithm = transform_algorithm
        self.transform_alpha = transform_alpha
        self.transform_n_nonzero_coefs = transform_n_nonzero_coefs
        self.transform_max_iter = transform_max_iter
        self.positive_code = positive_code
        self.random_state = random_state

    def fit(self, X: npt.ArrayLike, y: Any = None) -> "SparseCoding":
        """Learns ``components_`` from ``X (n_samples, n_features)``; returns ``self``."""
        X = self._validate(X, reset=True)
        if self.transform_algorithm not in ("fista", "ista", "omp", "mp"):
            raise ValueError(f"transform_algorithm must be one of fista, ista, omp, mp; got {self.transform_algorithm!r}")
        self.components_ = _native.fit_sparse_coding(
            X,
            self._n_components(X.shape[1]),
            steps=self._positive_int("max_iter", self.max_iter),
            seed=_seed(self.random_state),
            lam=float(self.alpha),
            fista_iters=self._positive_int("fit_fista_iters", self.fit_fista_iters),
        )
        self.n_iter_ = int(self.max_iter)
        return self

    def transform(self, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Codes ``(n_samples, n_components)``, float32, on ``components_``."""
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        D = self.components_
        algo = self.transform_algorithm
        if algo in ("fista", "ista"):
            lam = self.alpha if self.transform_alpha is None else self.transform_alpha
            solver = _native.fista if algo == "fista" else _native.ista
            return solver(
                X,
                D,
                float(lam),
                max_iter=self._positive_int("transform_max_iter", self.transform_max_iter),
                nonnegative=bool(self.positive_code),
            )
        k = self.transform_n_nonzero_coefs
        if k is None:
            k = min(max(1, X.shape[1] // 10), D.shape[0])
        k = self._positive_int("transform_n_nonzero_coefs", k)
        if algo == "omp":
            return _native.omp(X, D, k, nonnegative=bool(self.positive_code))
        if algo == "mp":
            return _native.matching_pursuit(X, D, k, nonnegative=bool(self.positive_code))
        raise ValueError(f"transform_algorithm must be one of fista, ista, omp, mp; got {algo!r}")
