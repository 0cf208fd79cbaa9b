"""The estimators: scikit-learn's estimator checks, and what they learn."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import sparse_infer as si
from sparse_infer import SparseAutoencoder, SparseCoding

ESTIMATORS = [
    SparseAutoencoder(max_iter=200),
    # k=1: several checks force n_components=1.
    SparseAutoencoder(architecture="topk", n_components=8, k=1, max_iter=200),
    SparseAutoencoder(architecture="batchtopk", n_components=8, k=1, max_iter=200),
    SparseAutoencoder(architecture="jumprelu", n_components=8, max_iter=200),
    SparseCoding(max_iter=20),
    SparseCoding(max_iter=20, transform_algorithm="omp"),
]

# Every check passes; scikit-learn itself skips the array-API checks unless
# SCIPY_ARRAY_API=1 (the estimators take numpy input only). Checks that force
# n_components=1 are why the TopK instances use k=1.
EXPECTED_FAILED = {}


def expected_failed(estimator):
    return EXPECTED_FAILED.get(type(estimator).__name__, {})


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_sparse_autoencoder_learns_the_dictionary_and_round_trips_params():
    X, Z, D = si.make_sparse_data(1024, 16, 8, 3, seed=0)
    est = SparseAutoencoder(16, architecture="topk", k=3, learning_rate=3e-3, max_iter=3000, random_state=0)
    codes = est.fit(X).transform(X)
    assert codes.shape == (1024, 16) and codes.dtype == np.float32
    assert ((codes != 0).sum(axis=1) <= 3).all()
    assert est.components_.shape == (16, 8)
    assert si.dictionary_mcc(D, est.components_) > 0.8
    recon = est.inverse_transform(codes)
    assert np.mean((recon - X) ** 2) < 0.2 * np.mean(X**2)
    assert est.get_params()["k"] == 3
    est2 = clone(est).set_params(k=2)
    assert est2.get_params()["k"] == 2 and not hasattr(est2, "components_")
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(X), codes)


def test_sparse_coding_learns_the_dictionary_and_encodes_with_each_solver():
    X, Z, D = si.make_sparse_data(1024, 16, 8, 3, seed=1)
    est = SparseCoding(16, alpha=0.1, max_iter=100, random_state=0).fit(X)
    assert si.dictionary_mcc(D, est.components_) > 0.9
    fista_codes = est.transform(X)
    assert si.mcc(Z, fista_codes) > 0.8
    for algo in ["ista", "omp", "mp"]:
        codes = est.set_params(transform_algorithm=algo, transform_n_nonzero_coefs=3).transform(X)
        assert codes.shape == (1024, 16) and (codes >= 0).all()
    # fista on components_ is exactly si.fista with the same settings
    est.set_params(transform_algorithm="fista")
    np.testing.assert_array_equal(fista_codes, si.fista(X, est.components_, 0.1))


def test_estimators_work_in_pipelines_and_reject_bad_parameters():
    X, _, _ = si.make_sparse_data(64, 16, 8, 3, seed=2)
    pipe = make_pipeline(StandardScaler(), SparseAutoencoder(12, max_iter=50))
    assert pipe.fit_transform(X).shape == (64, 12)
    with pytest.raises(ValueError, match="architecture \"gated\" is not supported"):
        SparseAutoencoder(architecture="gated").fit(X)
    with pytest.raises(ValueError, match="needs k"):
        SparseAutoencoder(architecture="topk").fit(X)
    with pytest.raises(ValueError, match="k = 9"):
        SparseAutoencoder(8, architecture="topk", k=9).fit(X)
    with pytest.raises(ValueError, match="transform_algorithm"):
        SparseCoding(transform_algorithm="lars").fit(X)
    with pytest.raises(ValueError, match="n_components"):
        SparseCoding(n_components=0).fit(X)
