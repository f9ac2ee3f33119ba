"""Cost and accuracy against the number of subjects: the deep mixture (minibatch above 5,000) and the LMM.

Data: DGP 1-like two-group curves (``g sin(4 pi t)`` plus four smooth subject deviations, noise
SD 0.3, :func:`dmlmm.simulate.dgp1_curves`), each subject observed at 10-20 distinct times drawn
from {0.01, ..., 0.99}; the true clustering is g. Generated here without DGP 1's dense truth
frame (N x 250 rows), which nothing here scores and which would dominate memory at 10^5 subjects.

Each size runs in its own process (peak RSS is that process's high-water mark, data
generation and imports included; the "fit" peak is measured after resetting the mark
once the data exist, where the kernel allows it):

- ``DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(20, lower=0, upper=1))`` with the default
  ``batch_size="auto"`` (full batch up to 5,000 subjects, the stochastic fit above): wall
  seconds, peak RSS, iterations, converged flag, components left, ARI of the first-layer groups and of the clusters (paths, ``labels_``)
  against g;
- ``LinearMixedModel`` with 10 spline functions (random effects on the same columns),
  variational and ``method="ml"``: wall seconds, iterations.

Run:  python benchmarks/scale.py [--subjects 1000 10000 100000] [--lmm-subjects 100000] [--seed 0] [--limit 600]
Writes benchmarks/results/scale.json (one record per run; re-running a size replaces it).
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
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def two_groups(n_subjects: int, visits: tuple[int, int] = (10, 20), random_state: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """DGP 1-like long data: (frame with subject, time, y; true group (N,) in {-1, +1}).

    Each subject gets ``n_i ~ U{visits}`` distinct times of {0.01, ..., 0.99} (one argsort of
    uniform keys per subject, batched), ``y = f_i(t) + N(0, 0.3^2)``.
    """
    from dmlmm.simulate import DGP1_NOISE_SD, DGP1_OBS_GRID, DGP1_SCORE_VARIANCES, dgp1_curves

    rng = np.random.default_rng(random_state)
    n, G = int(n_subjects), DGP1_OBS_GRID.size
    group = np.where(rng.random(n) < 0.5, 1, -1)
    scores = rng.normal(size=(n, DGP1_SCORE_VARIANCES.size)) * np.sqrt(DGP1_SCORE_VARIANCES)
    n_i = rng.integers(visits[0], visits[1] + 1, size=n)
    ranks = np.argsort(np.argsort(rng.random((n, G)), axis=1), axis=1)
    rows, cols = np.nonzero(ranks < n_i[:, None])
    del ranks
    f = dgp1_curves(DGP1_OBS_GRID, group, scores)  # (N, G)
    y = f[rows, cols] + rng.normal(scale=DGP1_NOISE_SD, size=rows.size)
    del f
    df = pd.DataFrame({"subject": rows.astype(np.int64), "time": DGP1_OBS_GRID[cols], "y": y})
    return df, group


def _reset_peak() -> bool:
    """Reset this process's peak-RSS mark (Linux /proc/self/clear_refs); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_deep(n: int, seed: int) -> dict:
    """One deep-mixture fit on ``n`` subjects (this process)."""
    from dmlmm import DeepMixtureLMM
    from dmlmm.basis import SplineBasis
    from dmlmm.metrics import adjusted_rand_index

    import logging

    stages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stages.append(record.getMessage())

    log = logging.getLogger("dmlmm.inference.stochastic")
    log.setLevel(logging.INFO)
    log.addHandler(_Keep())
    df, group = two_groups(n, random_state=seed)
    data_peak = _peak_mb()
    reset = _reset_peak()
    m = DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(20, lower=0, upper=1), random_state=seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.fit(df)
    wall = time.perf_counter() - t0
    labels = m.groups_.reindex(pd.RangeIndex(n)).to_numpy()  # first-layer groups
    clusters = m.labels_.reindex(pd.RangeIndex(n)).to_numpy()  # paths: the model's clusters
    return {
        "model": "DeepMixtureLMM((10, 5), (4, 1)), 20 functions",
        "subjects": n, "observations": len(df), "seed": seed,
        "stochastic": n > 5000, "wall_s": round(wall, 2), "fit_s": round(m.fit_seconds_, 2),
        "peak_rss_mb": round(_peak_mb(), 1), "peak_reset_after_data": reset, "data_peak_rss_mb": round(data_peak, 1),
        "n_iter": int(m.n_iter_), "converged": bool(m.converged_), "components": list(m.n_components_),
        "elbo": round(float(m.elbo_), 2), "ari_groups": round(float(adjusted_rand_index(group, labels)), 4),
        "ari_clusters": round(float(adjusted_rand_index(group, clusters)), 4),
        "stages": stages, "warnings": sorted({str(w.message)[:120] for w in caught}),
    }


def run_lmm(n: int, seed: int, method: str) -> dict:
    """One LinearMixedModel fit (10 spline functions, random effects on the same columns)."""
    from dmlmm.basis import SplineBasis
    from dmlmm.lmm import LinearMixedModel

    df, _ = two_groups(n, random_state=seed)
    reset = _reset_peak()
    kwargs = {"method": "vb" if method == "variational" else method}
    m = LinearMixedModel(basis=SplineBasis(10, lower=0, upper=1), **kwargs)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.fit(df)
    wall = time.perf_counter() - t0
    return {
        "model": f"LinearMixedModel(method={method!r}), 10 functions", "subjects": n, "observations": len(df),
        "seed": seed, "wall_s": round(wall, 2), "peak_rss_mb": round(_peak_mb(), 1), "peak_reset_after_data": reset,
        "n_iter": int(getattr(m, "n_iter_", -1)), "converged": bool(getattr(m, "converged_", True)),
        "warnings": sorted({str(w.message)[:120] for w in caught}),
    }


def _child(args: argparse.Namespace) -> None:
    rec = run_deep(args.one, args.seed) if args.kind == "deep" else run_lmm(args.one, args.seed, args.kind)
    print("RESULT " + json.dumps(rec))


def _run_in_child(kind: str, n: int, seed: int, limit: float) -> dict:
    env = dict(os.environ)
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--kind", kind, "--seed", str(seed)],
            capture_output=True, text=True, env=env, timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return {"subjects": n, "seed": seed, "finished": False,
                "error": f"did not finish within {limit:.0f} s (killed)", "wall_s": round(time.perf_counter() - t0, 1)}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"kind": kind, "subjects": n, "seed": seed, "error": out.stderr[-2000:]}


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, nargs="*", default=[1000, 10000, 100000])
    p.add_argument("--lmm-subjects", type=int, nargs="*", default=[100000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=float, default=600.0, help="seconds allowed to each run (process killed after)")
    p.add_argument("--lmm-methods", nargs="*", default=["variational", "ml"])
    p.add_argument("--out", default=str(RESULTS / "scale.json"))
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--kind", default="deep", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        _child(args)
        return
    path = Path(args.out)
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    runs = []
    jobs = [("deep", n) for n in args.subjects] + [(k, n) for n in args.lmm_subjects for k in args.lmm_methods]
    for kind, n in jobs:
        before = _load()
        rec = _run_in_child(kind, n, args.seed, args.limit)
        rec.update(kind=kind, load_before=before, load_after=_load())
        print(json.dumps(rec), flush=True)
        runs.append(rec)
    done = {(r["kind"], r["subjects"], r["seed"]) for r in runs}
    runs = [r for r in old if (r.get("kind"), r.get("subjects"), r.get("seed")) not in done] + runs
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
