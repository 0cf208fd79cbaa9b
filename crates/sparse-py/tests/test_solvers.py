"""Solvers, metrics and data against independent references (scikit-learn, scipy, numpy)."""

import threading
import time

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.linear_model import Lasso, orthogonal_mp

import sparse_infer as si


def lasso_objective(x, z, D, lam):
    """0.5*||x - z @ D||^2 + lam*||z||_1 per row, in float64."""
    x, z, D = (np.asarray(a, dtype=np.float64) for a in (x, z, D))
    r = x - z @ D
    return 0.5 * np.sum(r * r, axis=1) + lam * np.sum(np.abs(z), axis=1)


def unit_rows(rng, n, m):
    D = rng.standard_normal((n, m))
    return D / np.linalg.norm(D, axis=1, keepdims=True)


@pytest.mark.parametrize("nonnegative", [True, False])
@pytest.mark.parametrize("shape", [(16, 8), (24, 32)])
def test_fista_objective_matches_sklearn_lasso(nonnegative, shape):
    """sklearn's Lasso minimises (1/(2 n)) ||y - A w||^2 + alpha ||w||_1 with n = len(y)
    rows of A = D.T, so our lam (0.5 ||x - z D||^2 + lam ||z||_1) is alpha = lam / dim."""
    n_latents, dim = shape
    rng = np.random.default_rng(7)
    D = unit_rows(rng, n_latents, dim)
    Z = np.abs(rng.standard_normal((12, n_latents))) * (rng.random((12, n_latents)) < 0.2)
    if not nonnegative:
        Z *= rng.choice([-1.0, 1.0], size=Z.shape)
    X = Z @ D + 0.05 * rng.standard_normal((12, dim))
    lam = 0.05
    ours = si.fista(X, D, lam, max_iter=20000, tol=0.0, nonnegative=nonnegative)
    assert ours.dtype == np.float32 and ours.shape == (12, n_latents)
    if nonnegative:
        assert (ours >= 0).all()
    for i in range(len(X)):
        sk = Lasso(alpha=lam / dim, fit_intercept=False, positive=nonnegative, tol=1e-12, max_iter=200000)
        sk.fit(D.T, X[i])
        ref = lasso_objective(X[i : i + 1], sk.coef_[None, :], D, lam)[0]
        got = lasso_objective(X[i : i + 1], ours[i : i + 1], D, lam)[0]
        assert abs(got - ref) <= 1e-4 * abs(ref), (i, got, ref)


def test_ista_reaches_the_fista_objective():
    X, _, D = si.make_sparse_data(32, 16, 8, 3, seed=1)
    f = si.fista(X, D, 0.05, max_iter=5000, tol=0.0)
    i = si.ista(X, D, 0.05, max_iter=50000, tol=0.0)
    of, oi = lasso_objective(X, f, D, 0.05), lasso_objective(X, i, D, 0.05)
    np.testing.assert_allclose(oi, of, rtol=1e-4)


def exactly_recoverable(seed, n_latents=48, dim=32, k=3, n=40, signed=True):
    """k-sparse codes with magnitudes >= 0.5 on a random unit-norm dictionary (low coherence for k=3)."""
    rng = np.random.default_rng(seed)
    D = unit_rows(rng, n_latents, dim)
    Z = np.zeros((n, n_latents))
    for row in Z:
        idx = rng.choice(n_latents, size=k, replace=False)
        row[idx] = (0.5 + rng.random(k)) * (rng.choice([-1.0, 1.0], size=k) if signed else 1.0)
    return Z @ D, Z, D


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_omp_supports_equal_sklearn_on_exactly_recoverable_cases(seed):
    X, Z, D = exactly_recoverable(seed)
    k = 3
    ours = si.omp(X, D, k, nonnegative=False)
    ref = orthogonal_mp(D.T, X.T, n_nonzero_coefs=k).T  # (n, n_latents)
    true_support = Z != 0
    np.testing.assert_array_equal(ref != 0, true_support)  # the case is exactly recoverable
    np.testing.assert_array_equal(ours != 0, ref != 0)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_nonnegative_omp_and_mp_recover_nonnegative_supports():
    X, Z, D = exactly_recoverable(3, signed=False)
    # Non-negative OMP (no sklearn counterpart) finds the true support of nearly every sample.
    exact = np.all((si.omp(X, D, 3) != 0) == (Z != 0), axis=1)
    assert exact.mean() >= 0.95, exact.mean()
    mp = si.matching_pursuit(X, D, 3)
    assert mp.shape == Z.shape and (mp >= 0).all()
    assert ((mp != 0).sum(axis=1) <= 3).all()


def test_mcc_matches_an_independent_hungarian_implementation():
    rng = np.random.default_rng(0)
    Z = rng.random((200, 6))
    P = Z[:, [3, 0, 5, 1, 4, 2]] * np.array([2.0, -1.0, 0.5, 3.0, 1.0, -2.0])
    assert si.mcc(Z, P) == pytest.approx(1.0, abs=1e-6)
    Q = rng.random((200, 8))
    C = np.abs(np.corrcoef(Z.T, Q.T)[:6, 6:])
    r, c = linear_sum_assignment(-C)
    assert si.mcc(Z, Q) == pytest.approx(C[r, c].sum() / 6, abs=1e-5)


def test_dictionary_mcc_is_one_for_a_permuted_rescaled_dictionary():
    _, _, D = si.make_sparse_data(1, 16, 8, 3, seed=0)
    perm = np.random.default_rng(1).permutation(16)
    assert si.dictionary_mcc(D, -3.0 * D[perm]) == pytest.approx(1.0, abs=1e-6)
    other = unit_rows(np.random.default_rng(2), 16, 8)
    assert si.dictionary_mcc(D, other) < 0.95


def test_make_sparse_data_is_exact_and_seeded():
    X, Z, D = si.make_sparse_data(100, 16, 8, 3, seed=4)
    assert X.shape == (100, 8) and Z.shape == (100, 16) and D.shape == (16, 8)
    assert all(a.dtype == np.float32 for a in (X, Z, D))
    assert ((Z != 0).sum(axis=1) == 3).all() and (Z >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(X, Z @ D, atol=1e-5)
    X2, _, _ = si.make_sparse_data(100, 16, 8, 3, seed=4)
    np.testing.assert_array_equal(X, X2)
    Xn, _, _ = si.make_sparse_data(100, 16, 8, 3, seed=4, noise=0.1)
    assert 0.05 < np.std(Xn - X) < 0.2


def test_inputs_of_any_layout_and_dtype_give_the_same_codes():
    X, _, D = si.make_sparse_data(20, 16, 8, 3, seed=5)
    base = si.fista(X, D, 0.05)
    np.testing.assert_array_equal(si.fista(X.astype(np.float64), D.astype(np.float64), 0.05), base)
    np.testing.assert_array_equal(si.fista(np.asfortranarray(X), D, 0.05), base)
    np.testing.assert_array_equal(si.fista(X.tolist(), D, 0.05), base)
    Xw = np.zeros((20, 16), dtype=np.float32)
    Xw[:, ::2] = X
    np.testing.assert_array_equal(si.fista(Xw[:, ::2], D, 0.05), base)  # strided view
    Xr = X.copy()
    Xr.setflags(write=False)
    np.testing.assert_array_equal(si.fista(Xr, D, 0.05), base)


def test_bad_input_raises_value_error_with_the_shapes():
    X, _, D = si.make_sparse_data(10, 16, 8, 3, seed=0)
    with pytest.raises(ValueError, match=r"data: expected shape \(n, 8\), found \(10, 7\)"):
        si.fista(X[:, :7], D)
    bad = X.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        si.omp(bad, D, 2)
    with pytest.raises(ValueError, match="k"):
        si.omp(X, D, 17)
    with pytest.raises(ValueError, match="lambda"):
        si.fista(X, D, -1.0)
    with pytest.raises(ValueError, match="pred_codes"):
        si.mcc(np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises((ValueError, TypeError)):
        si.fista(np.zeros(8), D)  # 1-D


def test_the_gil_is_released_while_solving():
    X, _, D = si.make_sparse_data(4000, 64, 32, 4, seed=0)
    done = threading.Event()

    def work():
        si.fista(X, D, 0.01, max_iter=300, tol=0.0)
        done.set()

    t = threading.Thread(target=work)
    start = time.perf_counter()
    t.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    elapsed = time.perf_counter() - start
    # With the GIL held, this thread could not run at all until the solve ended.
    assert elapsed > 0.05, "solve too short to tell"
    assert ticks >= 10, (ticks, elapsed)


def test_the_package_docstring_example_runs():
    import doctest

    assert doctest.testmod(si).failed == 0
