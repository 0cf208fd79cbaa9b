"""How many (sample, atom) pairs the Gap Safe rule would screen in the
benchmark's FISTA case: the measurement behind our choice not to screen in
`encoders::fista` (docs/benchmarks.md, "Screening").

Gap Safe screening (Fercoq, Gramfort & Salmon, ICML 2015), for the
non-negative lasso min_z ½‖x − zD‖² + λ·Σz, z ≥ 0, that FISTA solves per
sample: from any codes z, the residual r = x − zD scaled to
θ = r / max(λ, max_j d_j·r) is dual feasible (d_j·θ ≤ 1 for every atom);
the dual ½‖x‖² − ½‖x − λθ‖² is λ²-strongly concave, so the optimal θ* lies
within sqrt(2·gap)/λ of θ; and an atom with d_j·θ + ‖d_j‖·sqrt(2·gap)/λ < 1
has d_j·θ* < 1, hence z*_j = 0 (KKT). A solver may drop such pairs.

Runs FISTA (f64, the same step, momentum and prox as ours) on the first
`--samples` rows of the case's inputs and prints, at each checkpoint, the
median duality gap, the median sphere radius and the fraction of pairs
screened. Checks on the way: the dual points are feasible and the gaps
non-negative.

Usage (inputs as `sparse-infer bench` writes them):
    target/bench-venv/bin/python bench/screening.py \
        results/bench-s11/inputs/fista-4096x768x16384-100it --samples 256
"""

import argparse
import json
import os

import numpy as np


def gap_safe(x, d, z, lam, atom_norms):
    """Per-sample duality gap and sphere radius, and the screened pairs."""
    r = x - z @ d
    corr = r @ d.T
    scale = np.maximum(lam, corr.max(axis=1))
    theta_corr = corr / scale[:, None]
    assert theta_corr.max() <= 1.0 + 1e-12, "dual point not feasible"
    primal = 0.5 * (r * r).sum(axis=1) + lam * z.sum(axis=1)
    theta = r / scale[:, None]
    dual = 0.5 * (x * x).sum(axis=1) - 0.5 * ((x - lam * theta) ** 2).sum(axis=1)
    gap = primal - dual
    assert gap.min() >= -1e-9 * max(1.0, primal.max()), "negative duality gap"
    radius = np.sqrt(2.0 * np.maximum(gap, 0.0)) / lam
    screened = theta_corr + radius[:, None] * atom_norms[None, :] < 1.0
    return gap, radius, screened


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", help="folder with x.npy and d.npy")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--lam", type=float, default=0.1, help="the bench's λ")
    parser.add_argument("--checkpoints", default="10,25,50,100,200")
    args = parser.parse_args()
    d = np.load(os.path.join(args.inputs, "d.npy")).astype(np.float64)
    x = np.load(os.path.join(args.inputs, "x.npy"))[: args.samples].astype(np.float64)
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    lam = args.lam
    small = d.T @ d if d.shape[0] > d.shape[1] else d @ d.T
    inv_l = 1.0 / float(np.linalg.eigvalsh(small)[-1])
    atom_norms = np.linalg.norm(d, axis=1)
    z = np.zeros((x.shape[0], d.shape[0]))
    y, t = z.copy(), 1.0
    for it in range(1, checkpoints[-1] + 1):
        z_new = np.maximum(y + inv_l * ((x - y @ d) @ d.T) - lam * inv_l, 0.0)
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * t * t))
        y = z_new + (t - 1.0) / t_next * (z_new - z)
        z, t = z_new, t_next
        if it in checkpoints:
            gap, radius, screened = gap_safe(x, d, z, lam, atom_norms)
            print(json.dumps({
                "iteration": it,
                "median_gap": float(np.median(gap)),
                "median_radius": float(np.median(radius)),
                "screened_fraction": float(screened.mean()),
                "nonzeros_per_sample": float((z > 0).sum(axis=1).mean()),
            }))


if __name__ == "__main__":
    main()
