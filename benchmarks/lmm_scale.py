"""LinearMixedModel at scale: ML, REML and variational fits on 1,000 to 100,000 subjects.

Data: the DGP 1-like two-group curves of ``benchmarks/scale.py`` (``g sin(4 pi t)`` plus four
smooth subject deviations, noise SD 0.3; each subject seen at 10-20 distinct times of
{0.01, ..., 0.99}). Model: ``LinearMixedModel(method=..., basis=SplineBasis(10, lower=0, upper=1))``
in the longitudinal form (fixed and random effects on the same 10 spline columns, unstructured
10 x 10 covariance: 55 covariance parameters).

Each fit runs in its own process, so its peak RSS is its own (data generation included; where
the kernel allows, the mark is reset once the data exist, so "peak" is the fit's high-water
mark plus the data already held). Wall time is ``fit`` alone: design, statistics, optimisation,
BLUPs / posterior. The median over ``--runs`` fits is reported (``--runs-large`` at 100,000).

Run:  python benchmarks/lmm_scale.py [--subjects 1000 10000 100000] [--methods ml reml vb]
                                     [--runs 3] [--runs-large 1] [--limit 600] [--label after]
Writes benchmarks/results/lmm_scale_<label>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def one_fit(n: int, method: str, seed: int) -> dict:
    sys.path.insert(0, str(HERE))
    from scale import _peak_mb, _reset_peak, two_groups

    from dmlmm.basis import SplineBasis
    from dmlmm.lmm import LinearMixedModel

    df, _ = two_groups(n, random_state=seed)
    reset = _reset_peak()
    m = LinearMixedModel(method=method, basis=SplineBasis(10, lower=0, upper=1))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.fit(df, subject="subject", time="time", response="y")
    wall = time.perf_counter() - t0
    return {"method": method, "subjects": n, "observations": len(df), "seed": seed, "wall_s": wall,
            "peak_rss_mb": round(_peak_mb(), 1), "peak_reset_after_data": reset,
            "n_iter": int(m.n_iter_), "converged": bool(m.converged_), "loglik": float(m.loglik_),
            "sigma2": float(m.sigma2_), "elbo": float(m.elbo_) if method == "vb" else None,
            "warnings": sorted({str(w.message)[:120] for w in caught})}


def _child(method: str, n: int, seed: int, limit: float) -> dict:
    env = dict(os.environ)
    for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(k, "1")
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--method", method, "--seed", str(seed)],
                             capture_output=True, text=True, env=env, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"method": method, "subjects": n, "seed": seed, "finished": False,
                "error": f"did not finish within {limit:.0f} s (killed)", "wall_s": time.perf_counter() - t0}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"method": method, "subjects": n, "seed": seed, "finished": False, "error": out.stderr[-2000:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, nargs="*", default=[1000, 10000, 100000])
    p.add_argument("--methods", nargs="*", default=["ml", "reml", "vb"])
    p.add_argument("--runs", type=int, default=3, help="fits per size below 100,000 (median reported)")
    p.add_argument("--runs-large", type=int, default=1, help="fits at 100,000 subjects and above")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=float, default=600.0, help="seconds allowed to each fit (process killed after)")
    p.add_argument("--label", default="after")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--method", default="ml", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(one_fit(args.one, args.method, args.seed)), flush=True)
        return
    rows = []
    print(f"{'method':6} {'subjects':>8} {'obs':>9} {'median s':>9} {'runs s':>24} {'iter':>5} {'conv':>5} "
          f"{'peak MB':>8} {'loglik':>14}  load before/after", flush=True)
    for n in args.subjects:
        for method in args.methods:
            k = args.runs if n < 100_000 else args.runs_large
            recs, loads = [], []
            for _ in range(k):
                before = _load()
                rec = _child(method, n, args.seed, args.limit)
                loads.append((before, _load()))
                recs.append(rec)
                if rec.get("finished") is False:
                    break
            ok = [r for r in recs if r.get("finished", True)]
            walls = [r["wall_s"] for r in recs]
            row = {"method": method, "subjects": n, "runs": recs, "loads": loads,
                   "median_s": float(np.median(walls)) if ok and len(ok) == len(recs) else None}
            if ok:
                last = ok[-1]
                row.update({key: last[key] for key in ("observations", "n_iter", "converged", "loglik", "sigma2", "elbo")})
                row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
            rows.append(row)
            med = f"{row['median_s']:9.2f}" if row["median_s"] is not None else "     >lim"
            runs = " ".join(f"{w:.1f}" for w in walls)
            if ok:
                print(f"{method:6} {n:8d} {row['observations']:9d} {med} {runs:>24} {row['n_iter']:5d} "
                      f"{str(row['converged']):>5} {row['peak_rss_mb']:8.0f} {row['loglik']:14.3f}  "
                      f"{loads[0][0]} / {loads[-1][1]}", flush=True)
            else:
                print(f"{method:6} {n:8d} {'':9} {med} {runs:>24}  {recs[-1].get('error', '')[:200]}  "
                      f"{loads[0][0]} / {loads[-1][1]}", flush=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "label": args.label}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"lmm_scale_{args.label}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
