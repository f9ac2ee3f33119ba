"""DGP 1 benchmark of the deep mixture: fit time and accuracy, side by side with the research code.

    python benchmarks/dgp1_speed.py [--runs 5] [--reference benchmarks/results/ref_dgp1_seed0.json]

Fits DeepMixtureLMM(K=(10,5), D=(10,4,1)) with 10 cubic B-splines on [0, 1] to DGP 1
(seed 0, N = 600), soft and hard local steps, for both knot layouts (our default
"uniform" and the research code's "reference"), and reports the median fit time of
``--runs`` runs with the accuracy metrics of model.md section 7. The research code
is not part of this repository; if a JSON with its measured numbers on the same
replicate is given (train_seconds, log_rmse_mean, log_score_mean, ari, coverage),
it is printed alongside and speed ratios are computed from it. Results go to
benchmarks/results/dgp1_speed.json.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from dmlmm import DeepMixtureLMM, SplineBasis
from dmlmm.exceptions import ConvergenceWarning
from dmlmm.metrics import adjusted_rand_index, coverage, log_rmse
from dmlmm.simulate import dgp1


def one(sim, knots: str, hard: bool) -> tuple[float, DeepMixtureLMM]:
    model = DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(10, lower=0, upper=1, knots=knots),
                           random_state=0, hard_assignment=hard)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        model.fit(sim.data, "subject", "time", "y")
        return time.perf_counter() - t0, model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--reference", default="benchmarks/results/ref_dgp1_seed0.json")
    ap.add_argument("--out", default="benchmarks/results/dgp1_speed.json")
    args = ap.parse_args()
    sim = dgp1(random_state=0)
    grid = np.unique(sim.truth["time"])
    ref = json.loads(Path(args.reference).read_text()) if Path(args.reference).exists() else None
    results = {}
    for knots in ("uniform", "reference"):
        for hard in (False, True):
            times, model = [], None
            for _ in range(args.runs):
                sec, model = one(sim, knots, hard)
                times.append(sec)
            pred = model.predict_trajectory(sim.data, times=grid)
            lr = log_rmse(sim.truth, pred)
            row = {
                "fit_seconds_median": float(np.median(times)),
                "fit_seconds_all": times,
                "iterations": model.n_iter_,
                "components": model.n_components_,
                "log_rmse_mean": float(lr.mean()),
                "log_rmse_median": float(lr.median()),
                "log_score_mean": float(model.score(sim.data)),
                "ari": float(adjusted_rand_index(sim.labels, model.labels_)),
                "coverage95": float(coverage(sim.truth, pred)),
            }
            if ref is not None and ref.get("train_seconds"):
                row["speedup_vs_research_code"] = ref["train_seconds"] / row["fit_seconds_median"]
            name = f"{knots} knots, {'hard' if hard else 'soft'} assignment"
            results[name] = row
            print(name, json.dumps(row), flush=True)
    out = {"dmlmm": results, "research_code": ref}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    if ref is not None:
        print("research code (same replicate):", json.dumps(ref))


if __name__ == "__main__":
    main()
