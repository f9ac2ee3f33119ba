"""Speed and accuracy of dmlmm's ML fit of a spline linear mixed model, against statsmodels' MixedLM.

Data: 600 subjects x 10 irregular times on [0, 1], simulated (seeded) from a spline
LMM: y_ij = B(t_ij)'(w + b_i) + e_ij, with B a cubic B-spline basis of 10 functions,
b_i ~ N(0, Sigma) for a random 10 x 10 covariance Sigma and e ~ N(0, 0.3^2).

Model fitted by both: fixed effects = the 10 spline columns, random effects = the
same 10 columns per subject with an unstructured 10 x 10 covariance, ML.

Note: n = 6000 observations equals N q = 600 x 10 random effects, exactly lme4's
"nobs <= nRE" limit, so dmlmm warns (IdentifiabilityWarning); the warning is
silenced here. The model is still identified through the shared Sigma (subjects
have different times), but weakly, which makes the optimisation slow for both.

Run:  python benchmarks/lmm_speed.py  [--subjects 600] [--runs 5] [--sm-runs 1]
Writes benchmarks/results/lmm_speed.json and prints the same numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from dmlmm._linalg import cholesky
from dmlmm.basis import SplineBasis
from dmlmm.data import sufficient_stats
from dmlmm.exceptions import IdentifiabilityWarning
from dmlmm.lmm import LinearMixedModel
from dmlmm.lmm.profiled import evaluate

RESULTS = Path(__file__).resolve().parent / "results"


def simulate(n_subjects: int = 600, n_times: int = 10, n_basis: int = 10, sigma: float = 0.3, seed: int = 2024
             ) -> pd.DataFrame:
    """Long frame (id, t, y) from a cubic-spline LMM with a random unstructured covariance."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 1.0, (n_subjects, n_times)), axis=1).reshape(-1)
    ids = np.repeat(np.arange(n_subjects), n_times)
    basis = SplineBasis(n_basis=n_basis, lower=0.0, upper=1.0).fit()
    X = basis.transform(t)
    A = rng.normal(size=(n_basis, n_basis))
    Sigma = A @ A.T / n_basis + 0.05 * np.eye(n_basis)
    b = rng.multivariate_normal(np.zeros(n_basis), Sigma, size=n_subjects)
    w = rng.normal(size=n_basis)
    y = X @ w + np.einsum("nq,nq->n", X, b[ids]) + sigma * rng.normal(size=t.size)
    return pd.DataFrame({"id": ids, "t": t, "y": y})


def fit_dmlmm(df: pd.DataFrame, n_basis: int) -> LinearMixedModel:
    model = LinearMixedModel(basis=SplineBasis(n_basis=n_basis, lower=0.0, upper=1.0), method="ml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IdentifiabilityWarning)
        return model.fit(df, subject="id", time="t", response="y")


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=600)
    ap.add_argument("--times", type=int, default=10)
    ap.add_argument("--basis", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5, help="timed dmlmm fits (median reported)")
    ap.add_argument("--sm-runs", type=int, default=0,
                    help="timed statsmodels fits; 0 = one run if it takes over 20 s, else 3")
    ap.add_argument("--skip-statsmodels", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "lmm_speed.json")
    args = ap.parse_args()

    df = simulate(args.subjects, args.times, args.basis)
    res: dict = {"n_subjects": args.subjects, "n_obs": len(df), "n_random": args.basis, "n_fixed": args.basis,
                 "method": "ML", "python": platform.python_version(), "machine": platform.machine()}

    ours = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        model = fit_dmlmm(df, args.basis)
        ours.append(time.perf_counter() - t0)
    res.update(dmlmm_seconds=float(np.median(ours)), dmlmm_runs=ours, dmlmm_loglik=model.loglik_,
               dmlmm_iterations=model.n_iter_, dmlmm_converged=model.converged_,
               dmlmm_sigma=float(np.sqrt(model.sigma2_)))
    print(f"dmlmm       : {res['dmlmm_seconds']:8.3f} s (median of {args.runs}), loglik {model.loglik_:.4f}, "
          f"{model.n_iter_} iterations, converged={model.converged_}")

    if not args.skip_statsmodels:
        from statsmodels.regression.mixed_linear_model import MixedLM

        Z = model.builder_.basis_.transform(df["t"].to_numpy())
        y, g = df["y"].to_numpy(), df["id"].to_numpy()
        times, r = [], None
        n_sm = args.sm_runs or 1
        k = 0
        while k < n_sm:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = MixedLM(y, Z, g, exog_re=Z).fit(reml=False)
            times.append(time.perf_counter() - t0)
            k += 1
            if args.sm_runs == 0 and k == 1 and times[0] < 20.0:
                n_sm = 3
        # statsmodels' estimate, evaluated by dmlmm's exact likelihood (same model, same data)
        cov_re = np.asarray(r.cov_re)
        try:
            lam = cholesky(cov_re / r.scale, "statsmodels' relative covariance")
        except np.linalg.LinAlgError:
            lam = None
        res.update(statsmodels_seconds=float(np.median(times)), statsmodels_runs=times,
                   statsmodels_loglik=float(r.llf), statsmodels_converged=bool(r.converged),
                   statsmodels_sigma=float(np.sqrt(r.scale)))
        if lam is not None:
            codes = np.unique(g, return_inverse=True)[1]
            st = sufficient_stats(y, Z, Z, codes, len(np.unique(g)))
            res["statsmodels_estimate_loglik_by_dmlmm"] = float(evaluate(st, lam, reml=False)[0].loglik)
        res["speedup"] = res["statsmodels_seconds"] / res["dmlmm_seconds"]
        res["loglik_difference"] = res["dmlmm_loglik"] - res["statsmodels_loglik"]
        print(f"statsmodels : {res['statsmodels_seconds']:8.3f} s (median of {len(times)}), loglik "
              f"{r.llf:.4f}, converged={r.converged}")
        print(f"speed-up    : {res['speedup']:.1f}x; loglik dmlmm - statsmodels = {res['loglik_difference']:+.4f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"results written to {args.out}")
    return res


if __name__ == "__main__":
    main()
