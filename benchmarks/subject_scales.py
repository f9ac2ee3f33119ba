"""Subject-level residual scales (``noise_df``): calibration on simulated data and cost on real data.

    python benchmarks/subject_scales.py [--part sim real] [--runs 3] [--datasets blackmore pbcseq uti autism]

``sim``: straight lines plus a bump, 400 subjects with 8 visits each, two of them held out per
subject; subject i's residual variance is 0.05 v_i with v_i ~ IG(nu/2, nu/2) (nu = 3, 10, and
Gaussian noise). ``MixtureLMM(1)`` with ``noise_df=None`` and ``"auto"``: the nu learned, sigma2_,
the coverage of the 50 / 80 / 95 % observation bands at the held-out visits and the held-out log
score per observation.

``real``: the accuracy harness's held-out splits (benchmarks/accuracy_data.py), ``DeepMixtureLMM()``
over the study window with ``noise_df=None`` and ``"auto"``, one after the other in each run (BLAS
on one thread): median fit seconds, iterations, and the seconds of ``predict_trajectory`` (all
subjects, 50 times, observation bands) and of the held-out ``score``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dmlmm import DeepMixtureLMM, MixtureLMM, SplineBasis  # noqa: E402

LEVELS = (0.5, 0.8, 0.95)


def noisy_frame(n_subjects: int, seed: int, df: float | None) -> pd.DataFrame:
    """Curves ``a_i + c_i t + sin(t / 2)``, 8 visits on [0, 10]; residual variance 0.05 v_i (v_i = 1 for df None)."""
    rng = np.random.default_rng(seed)
    v = np.ones(n_subjects) if df is None else 1.0 / rng.gamma(df / 2, 2 / df, n_subjects)
    rows = []
    for i in range(n_subjects):
        t = np.sort(rng.uniform(0, 10, 8))
        f = rng.normal(1, 0.5) + rng.normal(0.3, 0.1) * t + np.sin(t / 2)
        rows.append(pd.DataFrame({"subject": i, "time": t, "y": f + np.sqrt(0.05 * v[i]) * rng.normal(size=8)}))
    return pd.concat(rows, ignore_index=True)


def coverage(model, train: pd.DataFrame, held: pd.DataFrame, level: float) -> float:
    hits = []
    for s, rows in held.groupby("subject"):
        p = model.predict_trajectory(train[train.subject == s], times=rows["time"].to_numpy(), kind="observation",
                                     interval=level)
        hits.append(((rows["y"].to_numpy() >= p["lower"].to_numpy()) & (rows["y"].to_numpy() <= p["upper"].to_numpy())))
    return float(np.concatenate(hits).mean())


def run_sim() -> None:
    print("| truth | noise_df | nu learned | sigma2_ | coverage 50 / 80 / 95 % | held-out log score / obs |")
    print("|---|---|---|---|---|---|")
    for seed, df in ((2, 3.0), (4, 10.0), (5, None)):
        data = noisy_frame(400, seed, df)
        held_idx = data.groupby("subject").sample(2, random_state=3).index
        train, held = data.drop(held_idx), data.loc[held_idx]
        for nd in (None, "auto"):
            m = MixtureLMM(1, noise_df=nd, response_transform=None, random_state=0).fit(train)
            cov = " / ".join(f"{coverage(m, train, held, lev):.3f}" for lev in LEVELS)
            score = m.score_samples(held, condition_on=train).sum() / len(held)
            truth = "Gaussian" if df is None else f"nu = {df:g}"
            nu = "-" if m.noise_df_ is None else f"{m.noise_df_:.1f}"
            print(f"| {truth} | {nd} | {nu} | {m.sigma2_:.4f} | {cov} | {score:.3f} |", flush=True)


def run_real(datasets: list[str], runs: int) -> None:
    import accuracy_data

    rows = []
    for name in datasets:
        ds = accuracy_data.load(name)
        train, held = accuracy_data.heldout_visits(ds.data, 0.2, random_state=0)
        lo, hi = ds.window
        for run in range(runs):
            for nd in (None, "auto"):
                m = DeepMixtureLMM(basis=SplineBasis(lower=lo, upper=hi), random_state=0, noise_df=nd)
                m.fit(train, "subject", "time", "y")
                t0 = time.perf_counter()
                m.predict_trajectory(train, times=np.linspace(lo, hi, 50), kind="observation")
                tp = time.perf_counter() - t0
                t0 = time.perf_counter()
                m.score(held, condition_on=train)
                ts = time.perf_counter() - t0
                rows.append((name, str(nd), m.fit_seconds_, m.n_iter_, tp, ts))
                print(name, nd, run, f"{m.fit_seconds_:.2f} s", m.n_iter_, f"predict {tp:.2f} s", f"score {ts:.2f} s",
                      flush=True)
    df = pd.DataFrame(rows, columns=["data", "noise_df", "fit_s", "iterations", "predict_s", "score_s"])
    med = df.groupby(["data", "noise_df"], sort=False).median()
    print(med.round(2).to_string())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", nargs="+", choices=("sim", "real"), default=["sim", "real"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=["blackmore", "pbcseq", "uti", "autism"])
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if "sim" in args.part:
        run_sim()
    if "real" in args.part:
        run_real(args.datasets, args.runs)


if __name__ == "__main__":
    main()
