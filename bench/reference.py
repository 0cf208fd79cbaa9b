"""Reference implementations for `sparse-infer bench`: the same algorithms as
sparse-infer's kernels, written the way a user of PyTorch (CPU), numpy or
scikit-learn would write them, on the same inputs (`.npy` files the harness
writes). One process runs one case with one implementation and prints one
JSON line: the wall time of each timed repetition, the peak resident memory
and a number to compare results by.

Usage (the harness calls it; set it up with scripts/bench-setup):
    python bench/reference.py --impl torch --case-json '{"case":"sae-step",...}' --dir DIR --reps 3
"""

import argparse
import json
import os
import resource
import time

import numpy as np

LAMBDA_FISTA = 0.1


def load(d, name):
    return np.load(os.path.join(d, name))


def time_reps(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def lasso_objective(x, d, z, lam):
    x, d, z = (a.astype(np.float64) for a in (x, d, z))
    r = x - z @ d
    return float((0.5 * (r * r).sum() + lam * np.abs(z).sum()) / x.shape[0])


# ---------------------------------------------------------------- numpy


def numpy_gemm(case, d, reps):
    a, b = load(d, "a.npy"), load(d, "b.npy")
    c = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
    return time_reps(lambda: np.matmul(a, b, out=c), 1, reps), None


def numpy_fista(x, dic, iters, lam, nonneg):
    """FISTA on ½‖x − zD‖² + λ‖z‖₁ (residual form, preallocated buffers)."""
    small = dic.T @ dic if dic.shape[0] > dic.shape[1] else dic @ dic.T
    lip = float(np.linalg.eigvalsh(small.astype(np.float64))[-1])
    n, nl = x.shape[0], dic.shape[0]
    z = np.zeros((n, nl), np.float32)
    y = np.zeros_like(z)
    z_new = np.empty_like(z)
    grad = np.empty_like(z)
    resid = np.empty_like(x)
    t = 1.0
    thr = np.float32(lam / lip)
    inv_l = np.float32(1.0 / lip)
    for _ in range(iters):
        np.matmul(y, dic, out=resid)
        np.subtract(x, resid, out=resid)
        np.matmul(resid, dic.T, out=grad)
        # z_new = prox(y + grad / L)
        np.multiply(grad, inv_l, out=z_new)
        z_new += y
        if nonneg:
            z_new -= thr
            np.maximum(z_new, 0.0, out=z_new)
        else:
            np.sign(z_new, out=grad)
            np.abs(z_new, out=z_new)
            z_new -= thr
            np.maximum(z_new, 0.0, out=z_new)
            z_new *= grad
        t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
        beta = np.float32((t - 1.0) / t_next)
        # y = z_new + beta (z_new − z)
        np.subtract(z_new, z, out=y)
        y *= beta
        y += z_new
        z, z_new = z_new, z
        t = t_next
    return z


def numpy_fista_case(case, d, reps):
    x, dic = load(d, "x.npy"), load(d, "d.npy")
    numpy_fista(x, dic, 2, LAMBDA_FISTA, True)
    out = {}
    times = time_reps(
        lambda: out.__setitem__("z", numpy_fista(x, dic, case["iterations"], LAMBDA_FISTA, True)), 0, reps
    )
    return times, lasso_objective(x, dic, out["z"], LAMBDA_FISTA)


# ---------------------------------------------------------------- torch


def torch_setup():
    import torch

    torch.set_num_threads(os.cpu_count())
    return torch


def torch_gemm(case, d, reps):
    torch = torch_setup()
    a, b = torch.from_numpy(load(d, "a.npy")), torch.from_numpy(load(d, "b.npy"))
    c = torch.empty(a.shape[0], b.shape[1])
    return time_reps(lambda: torch.matmul(a, b, out=c), 1, reps), None


def torch_fista_case(case, d, reps):
    torch = torch_setup()
    x, dic = torch.from_numpy(load(d, "x.npy")), torch.from_numpy(load(d, "d.npy"))

    def run(iters):
        with torch.no_grad():
            small = dic.T @ dic if dic.shape[0] > dic.shape[1] else dic @ dic.T
            lip = float(torch.linalg.eigvalsh(small.double())[-1])
            z = torch.zeros(x.shape[0], dic.shape[0])
            y = z.clone()
            t = 1.0
            for _ in range(iters):
                grad = (x - y @ dic) @ dic.T
                z_new = torch.clamp(y + grad / lip - LAMBDA_FISTA / lip, min=0.0)
                t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
                y = z_new + ((t - 1.0) / t_next) * (z_new - z)
                z, t = z_new, t_next
            return z

    run(2)
    out = {}
    times = time_reps(lambda: out.__setitem__("z", run(case["iterations"])), 0, reps)
    return times, lasso_objective(x.numpy(), dic.numpy(), out["z"].numpy(), LAMBDA_FISTA)


def torch_sae(torch, dim, latents):
    """Parameters of a SAELens-style SAE: W_enc (d × N), b_enc, W_dec (N × d) unit rows, b_dec."""
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(latents, dim, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = {
        "W_enc": torch.nn.Parameter(w_dec.T.clone()),
        "b_enc": torch.nn.Parameter(torch.zeros(latents)),
        "W_dec": torch.nn.Parameter(w_dec),
        "b_dec": torch.nn.Parameter(torch.zeros(dim)),
    }
    return params, torch.optim.Adam(params.values(), lr=1e-4)


def torch_unit_norm_step(torch, params, opt):
    """Remove ∂L/∂W_dec's component along each atom, step, renormalise the atoms."""
    w = params["W_dec"]
    with torch.no_grad():
        w.grad -= (w.grad * w).sum(dim=1, keepdim=True) * w
    opt.step()
    with torch.no_grad():
        w /= w.norm(dim=1, keepdim=True)


def torch_sae_step(case, d, reps):
    """From the parameters the harness wrote (ours starts from the same ones)."""
    torch = torch_setup()
    x = torch.from_numpy(load(d, "x.npy"))
    params = {
        name: torch.nn.Parameter(torch.from_numpy(load(d, f"{name.lower()}.npy")).reshape(shape))
        for name, shape in [
            ("W_enc", (case["dim"], case["latents"])),
            ("b_enc", (case["latents"],)),
            ("W_dec", (case["latents"], case["dim"])),
            ("b_dec", (case["dim"],)),
        ]
    }
    opt = torch.optim.Adam(params.values(), lr=1e-4)
    lam = 0.01
    out = {}

    def step():
        opt.zero_grad(set_to_none=True)
        z = torch.relu(x @ params["W_enc"] + params["b_enc"])
        x_hat = z @ params["W_dec"] + params["b_dec"]
        loss = ((x_hat - x) ** 2).mean() + lam * z.abs().mean()
        loss.backward()
        torch_unit_norm_step(torch, params, opt)
        out["loss"] = float(loss)

    return time_reps(step, 1, reps), out["loss"]


def torch_topk_step(case, d, reps):
    torch = torch_setup()
    x = torch.from_numpy(load(d, "x.npy"))
    params, opt = torch_sae(torch, case["dim"], case["latents"])
    k = case["k"]
    out = {}

    def step():
        opt.zero_grad(set_to_none=True)
        pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        vals, idx = pre.topk(k, dim=1)
        z = torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))
        x_hat = z @ params["W_dec"] + params["b_dec"]
        loss = ((x_hat - x) ** 2).mean()
        loss.backward()
        torch_unit_norm_step(torch, params, opt)
        out["loss"] = float(loss)

    return time_reps(step, 1, reps), out["loss"]


def code_mcc(z_true, z_pred):
    """Pearson correlations matched one-to-one (Hungarian), averaged over the true latents."""
    from scipy.optimize import linear_sum_assignment

    a = z_true - z_true.mean(0)
    b = z_pred - z_pred.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    c = (a.T @ b) / np.maximum(np.outer(na, nb), 1e-30)
    c[np.outer(na, nb) == 0] = 0.0
    rows, cols = linear_sum_assignment(-np.abs(c))
    return float(np.abs(c[rows, cols]).sum() / z_true.shape[1])


def torch_known_dictionary(case, d, reps):
    """A PyTorch port of the paper's known-dictionary procedure (one seed):
    SAE and MLP-32 encoders against the frozen true D, full-batch Adam
    (lr 1e-3) on mean squared error + 0.01 · mean |z|, then per-sample
    inference z = exp(u) by Adam (lr 3e-3) from u = −10."""
    torch = torch_setup()
    # 8 × 16 models: thread dispatch costs more than it saves (measured).
    torch.set_num_threads(1)
    dic = torch.from_numpy(load(d, "d.npy"))
    x_train = torch.from_numpy(load(d, "x_train.npy"))
    x_test = torch.from_numpy(load(d, "x_test.npy"))
    z_test = load(d, "z_test.npy")
    lam, n_lat, dim = 0.01, dic.shape[0], dic.shape[1]
    out = {}

    def loss_of(z, x):
        return ((z @ dic - x) ** 2).mean() + lam * z.abs().mean()

    def run():
        torch.manual_seed(0)
        sae = torch.nn.Sequential(torch.nn.Linear(dim, n_lat, bias=False), torch.nn.ReLU())
        mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, 32, bias=False),
            torch.nn.ReLU(),
            torch.nn.Linear(32, n_lat, bias=False),
            torch.nn.ReLU(),
        )
        for model in (sae, mlp):
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            for _ in range(case["steps"]):
                opt.zero_grad()
                loss = loss_of(model(x_train), x_train)
                loss.backward()
                opt.step()
        with torch.no_grad():
            z_sae = sae(x_test)
            mlp(x_test)
        u = torch.full((x_test.shape[0], n_lat), -10.0, requires_grad=True)
        opt = torch.optim.Adam([u], lr=3e-3)
        for _ in range(case["inference_steps"]):
            opt.zero_grad()
            loss = loss_of(torch.exp(u), x_test)
            loss.backward()
            opt.step()
        out["mcc"] = code_mcc(z_test, z_sae.numpy())

    return time_reps(run, 0, reps), out["mcc"]


# ---------------------------------------------------------------- scikit-learn


def sklearn_omp(case, d, reps):
    from sklearn.linear_model import orthogonal_mp_gram

    x, dic = load(d, "x.npy"), load(d, "d.npy")
    out = {}

    def run():
        gram = dic @ dic.T
        xy = dic @ x.T
        out["z"] = orthogonal_mp_gram(gram, xy, n_nonzero_coefs=case["k"]).T

    times = time_reps(run, 1, reps)
    return times, 2.0 * lasso_objective(x, dic, out["z"], 0.0)


def sklearn_lasso(case, d, reps):
    from sklearn.decomposition import sparse_encode

    x, dic = load(d, "x.npy"), load(d, "d.npy")
    lam = case["lambda"]
    out = {}

    def run():
        # sparse_encode's lasso_cd minimises ½‖x − zD‖² + alpha‖z‖₁ per sample.
        out["z"] = sparse_encode(x, dic, algorithm="lasso_cd", alpha=lam, n_jobs=os.cpu_count())

    times = time_reps(run, 1, reps)
    return times, lasso_objective(x, dic, out["z"], lam)


TABLE = {
    ("numpy", "gemm"): numpy_gemm,
    ("numpy", "fista"): numpy_fista_case,
    ("torch", "gemm"): torch_gemm,
    ("torch", "fista"): torch_fista_case,
    ("torch", "sae-step"): torch_sae_step,
    ("torch", "topk-step"): torch_topk_step,
    ("torch", "known-dictionary"): torch_known_dictionary,
    ("sklearn", "omp"): sklearn_omp,
    ("sklearn", "lasso"): sklearn_lasso,
}


def versions(impl):
    info = {"numpy": np.__version__, "threads": os.cpu_count()}
    if impl == "torch":
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    if impl == "sklearn":
        import sklearn

        info["sklearn"] = sklearn.__version__
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE")
    return info


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--impl", required=True, choices=["numpy", "torch", "sklearn"])
    p.add_argument("--case-json", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    case = json.loads(a.case_json)
    fn = TABLE.get((a.impl, case["case"]))
    if fn is None:
        raise SystemExit(f"no {a.impl} reference for case {case['case']}")
    times, check = fn(case, a.dir, a.reps)
    print(
        json.dumps(
            {
                "case": case["case"],
                "implementation": a.impl,
                "times_s": times,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0,
                "check": check,
                "info": versions(a.impl),
            }
        )
    )


if __name__ == "__main__":
    main()
