"""dmlmm side by side with the public DMLMM research code on its DGP 1 replicate.

    python benchmarks/research_side_by_side.py --research-dir /path/to/research/copy \
        --research-python /path/to/its/venv/bin/python [--iterations 30] [--runs 3] \
        [--knots quantile reference] [--out benchmarks/results/research_side_by_side.json]

The research code (Kock, Klein and Nott; ``DMLMM/dmlmm.py``, ``Simulations/dgp1.py``) is
not part of this repository and is never imported into this process: it runs in its own
interpreter (``--research-python``, a virtual environment with torch, numpy, scipy,
scikit-learn and pandas) with ``--research-dir`` as working directory, through the short
driver programs below that only call its functions.

1. Data. The research code's own generator ``Simulations.dgp1.dgp1()`` draws the replicate
   after ``np.random.seed(seed)`` (600 subjects, 10 times each, truth on 250 points). It is
   written to an ``.npz`` (``--data``; drawn again only if missing) that both sides read,
   so both fit identical data.
2. Research fit. ``DMLMM(y, x, K=[10, 5], D=[10, 4, 1])`` on the generator's own design
   matrices (10 cubic B-splines, its knot layout), after ``np.random.seed(seed)`` and
   ``torch.manual_seed(seed)``, then ``train(iterations, -1)`` (threshold -1: no early
   stop; its README example and the default this table projects use 1,000 iterations).
   Every iteration calls ``build_estimators`` once at its start and ``cluster_gmm`` calls
   it once more after the last one, so wall-clock stamps at those calls give each
   iteration's seconds exactly; the script reports their median, the constructor's
   seconds (KMeans and SparsePCA start) and the final ``cluster_gmm`` seconds. Projected
   default fit = constructor + 1,000 x median seconds per iteration + final clustering.
   Accuracy after the short run (first run only; optional): the research code's
   ``predict_y(design, y_i, 0)`` on the truth grid gives the predictive mean (as its
   ``evaluate_dmlmm.py`` does; log RMSE as its ``Simulations/metrics.py``), and the
   component with the largest posterior weight is the subject's cluster (the assignment
   its ``cluster_gmm`` makes) for the adjusted Rand index against the true groups. With
   ``--iterations`` far below 1,000 these are *not* the research code's converged
   accuracy: its first 10 iterations take no step (step-size warm-up) and each later one
   sees a minibatch of 30 subjects.
3. dmlmm fit. ``DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(10, lower=0, upper=1,
   knots=...), random_state=seed)`` on the same observations (subject, time, y), for each
   ``--knots`` layout (``quantile``: the library's default layout, as the
   ``dgp1_research`` case of benchmarks/fit_speed.py; ``reference``: the research code's
   knots, the same design matrices it fits). Reports ``fit_seconds_`` (the model's own
   fit time, data preparation included, imports excluded), the wall time of ``fit``,
   ``n_iter_``, seconds per iteration, log RMSE of the predictive mean on the truth grid
   (``dmlmm.metrics.log_rmse``) and ARI of ``labels_`` against the true groups.

Every fit runs in its own subprocess with BLAS, OpenMP and torch pinned to one thread,
research and dmlmm runs alternating (research, dmlmm per layout, research, ...), so both
see the same load; ``--runs`` rounds, medians reported. Each subprocess reports its peak
resident memory (``ru_maxrss``, imports included). The load average is recorded before
and after every run. Nothing is hard-coded: every number printed is measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_ITERATIONS = 1000  # the research code's example (README minimal_working_example.py: train(1000, -1))
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# --------------------------------------------------------------------------- research-side drivers
# Run with the research venv's interpreter, cwd = the research copy. They only call its code.

_RESEARCH_GENERATE = r"""
import sys, time
import numpy as np
sys.path.insert(0, ".")
from Simulations.dgp1 import dgp1
seed, out = int(sys.argv[1]), sys.argv[2]
np.random.seed(seed)
t0 = time.perf_counter()
df, df_true = dgp1()
sec = time.perf_counter() - t0
xcols = ["x" + str(k + 1) for k in range(10)]
np.savez(out,
         obs_id=df["id"].to_numpy(), obs_y=df["y"].to_numpy(), obs_t=df["t"].to_numpy(),
         obs_cluster=df["cluster"].to_numpy(), obs_x=df[xcols].to_numpy(),
         true_id=df_true["id"].to_numpy(), true_t=df_true["t"].to_numpy(),
         true_f=df_true["f_t"].to_numpy(), true_x=df_true[xcols].to_numpy())
print(sec)
"""

_RESEARCH_FIT = r"""
import json, resource, sys, time
import numpy as np
import torch
torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass
sys.path.insert(0, ".")
from DMLMM.dmlmm import DMLMM

data, seed, iters, accuracy = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
d = np.load(data)
ids = np.unique(d["obs_id"])
y = [torch.tensor(d["obs_y"][d["obs_id"] == i]).type(torch.float64) for i in ids]
x = [torch.tensor(d["obs_x"][d["obs_id"] == i]).type(torch.float64) for i in ids]
np.random.seed(seed)
torch.manual_seed(seed)
t0 = time.perf_counter()
model = DMLMM(y, x, [10, 5], [10, 4, 1])
t_init = time.perf_counter()
stamps = []
inner = model.build_estimators
def stamped():
    stamps.append(time.perf_counter())
    return inner()
model.build_estimators = stamped
model.train(iters, -1)
t_end = time.perf_counter()
per_iter = np.diff(stamps[: iters + 1])
row = {
    "init_seconds": t_init - t0,
    "train_seconds": t_end - t_init,
    "iterations": len(per_iter),
    "iteration_seconds": per_iter.tolist(),
    "seconds_per_iteration_median": float(np.median(per_iter)),
    "seconds_per_iteration_mean": float(np.mean(per_iter)),
    "cluster_gmm_seconds": t_end - stamps[iters] if len(stamps) > iters else None,
    "components_kept": int(len(model.w_gmm)),
    "torch_threads": torch.get_num_threads(),
    "torch_version": torch.__version__,
}
row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
if accuracy:
    from sklearn.metrics import adjusted_rand_score
    t_acc = time.perf_counter()
    log_rmse, cluster, group = [], [], []
    for i in ids:
        obs = d["obs_id"] == i
        tru = d["true_id"] == i
        design = np.vstack([d["obs_x"][obs], d["true_x"][tru]])
        w_post, m_post, s_post = model.predict_y(design, d["obs_y"][obs], 0)
        hat = np.matmul(np.vstack(m_post).T, w_post)
        log_rmse.append(np.log(np.sqrt(np.mean((d["true_f"][tru] - hat) ** 2))))
        cluster.append(int(np.argmax(w_post)))
        group.append(d["obs_cluster"][obs][0])
    row["log_rmse_mean"] = float(np.mean(log_rmse))
    row["log_rmse_median"] = float(np.median(log_rmse))
    row["ari"] = float(adjusted_rand_score(group, cluster))
    row["n_clusters"] = int(len(set(cluster)))
    row["accuracy_seconds"] = time.perf_counter() - t_acc
print(json.dumps(row))
"""

# --------------------------------------------------------------------------- dmlmm side


def _load_frames(path: str):
    import pandas as pd

    d = np.load(path)
    data = pd.DataFrame({"subject": d["obs_id"].astype(np.int64), "time": d["obs_t"], "y": d["obs_y"]})
    truth = pd.DataFrame({"subject": d["true_id"].astype(np.int64), "time": d["true_t"], "value": d["true_f"]})
    groups = data.assign(g=d["obs_cluster"].astype(np.int64)).groupby("subject")["g"].first()
    return data, truth, groups


def dmlmm_worker(data_path: str, seed: int, knots: str) -> dict:
    """One full dmlmm fit of the research replicate (run with the dmlmm found on sys.path)."""
    from dmlmm import DeepMixtureLMM, SplineBasis
    from dmlmm.exceptions import ConvergenceWarning
    from dmlmm.metrics import adjusted_rand_index, log_rmse

    data, truth, groups = _load_frames(data_path)
    model = DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(10, lower=0, upper=1, knots=knots), random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        model.fit(data, "subject", "time", "y")
        wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    grid = np.unique(truth["time"])
    pred = model.predict_trajectory(data, times=grid)
    lr = log_rmse(truth, pred)
    return {
        "fit_seconds": float(model.fit_seconds_),
        "fit_wall_seconds": wall,
        "iterations": int(model.n_iter_),
        "seconds_per_iteration": float(model.fit_seconds_) / max(int(model.n_iter_), 1),
        "converged": bool(model.converged_),
        "components": [int(c) for c in model.n_components_],
        "n_clusters": int(model.labels_.nunique()),
        "peak_rss_mb": rss,
        "log_rmse_mean": float(lr.mean()),
        "log_rmse_median": float(lr.median()),
        "ari": float(adjusted_rand_index(groups, model.labels_)),
    }


# --------------------------------------------------------------------------- driver


def _env(extra: dict | None = None) -> dict:
    return dict(os.environ, **ONE_THREAD, **(extra or {}))


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _run(cmd: list[str], cwd: str | None, env: dict, timeout: float) -> dict:
    before = _load()
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s", "load_before": before, "load_after": _load()}
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}: {out.stderr.strip()[-2000:]}", "load_before": before,
                "load_after": _load()}
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(process_wall_seconds=wall, load_before=before, load_after=_load())
    return row


def _git_commit(path: str) -> str | None:
    marker = Path(path) / "RESEARCH_COMMIT"
    if marker.exists():  # an exported copy (git archive) has no .git; the commit may be noted beside it
        return marker.read_text().strip()
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def _median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r and r[key] is not None]
    return float(np.median(vals)) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--research-dir", required=True, help="working copy of the research code")
    ap.add_argument("--research-python", required=True, help="interpreter of its virtual environment")
    ap.add_argument("--research-commit", default=None, help="its commit, if the copy has no .git")
    ap.add_argument("--iterations", type=int, default=30, help="research iterations per timed run")
    ap.add_argument("--runs", type=int, default=3, help="rounds (research run, then each dmlmm layout)")
    ap.add_argument("--research-runs", type=int, default=None, help="research runs (default: --runs)")
    ap.add_argument("--knots", nargs="+", default=["quantile", "reference"], help="dmlmm knot layouts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-research-accuracy", action="store_true", help="skip its predict_y pass")
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"), help="dmlmm source dir")
    ap.add_argument("--data", default=None, help="replicate .npz (default: a temp file; reused if present)")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", default=None, help="write all measurements as JSON here")
    ap.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)  # data seed knots
    args = ap.parse_args()
    if args.worker:
        data, seed, knots = args.worker
        print(json.dumps(dmlmm_worker(data, int(seed), knots)))
        return

    rdir, rpy = str(Path(args.research_dir).resolve()), args.research_python
    data = args.data or str(Path(tempfile.gettempdir()) / f"research_dgp1_seed{args.seed}.npz")
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "load_start": _load(), "uname": " ".join(os.uname())},
        "settings": {"iterations": args.iterations, "runs": args.runs, "seed": args.seed, "knots": args.knots,
                     "research_dir": rdir, "research_python": rpy, "data": data,
                     "research_commit": args.research_commit or _git_commit(rdir), "dmlmm_src": args.src},
    }
    if not Path(data).exists():
        gen = subprocess.run([rpy, "-c", _RESEARCH_GENERATE, str(args.seed), data], cwd=rdir, env=_env(),
                             capture_output=True, text=True)
        if gen.returncode != 0:
            sys.exit(f"research generator failed:\n{gen.stderr}")
        results["generate_seconds"] = float(gen.stdout.strip().splitlines()[-1])
    d = np.load(data)
    results["data_summary"] = {"subjects": int(np.unique(d["obs_id"]).size), "observations": int(d["obs_y"].size),
                               "truth_points": int(d["true_f"].size), "n_basis": int(d["obs_x"].shape[1])}
    print(f"replicate: {results['data_summary']} from {data}", flush=True)

    research: list[dict] = []
    dm: dict[str, list[dict]] = {k: [] for k in args.knots}
    n_research = args.research_runs if args.research_runs is not None else args.runs
    for r in range(max(args.runs, n_research)):
        if r < n_research:
            acc = "0" if (args.no_research_accuracy or r > 0) else "1"
            row = _run([rpy, "-c", _RESEARCH_FIT, data, str(args.seed), str(args.iterations), acc], rdir, _env(),
                       args.timeout)
            research.append(row)
            print(f"research run {r + 1}: " + json.dumps({k: v for k, v in row.items() if k != "iteration_seconds"}),
                  flush=True)
        if r < args.runs:
            for k in args.knots:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--research-dir", rdir, "--research-python", rpy,
                       "--worker", data, str(args.seed), k]
                row = _run(cmd, None, _env({"PYTHONPATH": str(Path(args.src).resolve())}), args.timeout)
                dm[k].append(row)
                print(f"dmlmm {k} run {r + 1}: " + json.dumps(row), flush=True)
    results["research_runs"], results["dmlmm_runs"] = research, dm
    results["machine"]["load_end"] = _load()

    ok = [r for r in research if "error" not in r]
    if not ok:
        print("research code did not run:", *[r["error"] for r in research], sep="\n")
    spi = _median(ok, "seconds_per_iteration_median")
    init = _median(ok, "init_seconds")
    final = _median(ok, "cluster_gmm_seconds")
    projected = init + DEFAULT_ITERATIONS * spi + final if ok else None
    measured = _median([dict(r, fit=r["init_seconds"] + r["train_seconds"]) for r in ok], "fit")
    summary = {"research": {"runs": len(ok), "seconds_per_iteration": spi, "init_seconds": init,
                            "measured_fit_seconds": measured, "measured_fit_iterations": args.iterations,
                            "cluster_gmm_seconds": final, "projected_default_fit_seconds": projected,
                            "peak_rss_mb": _median(ok, "peak_rss_mb")}}
    acc = next((r for r in ok if "ari" in r), None)
    if acc:
        summary["research"].update(log_rmse_mean=acc["log_rmse_mean"], ari=acc["ari"],
                                   accuracy_after_iterations=acc["iterations"])
    for k, rows in dm.items():
        good = [r for r in rows if "error" not in r]
        if not good:
            print(f"dmlmm ({k}) failed:", *[r["error"] for r in rows], sep="\n")
            continue
        s = {"runs": len(good)}
        for key in ("fit_seconds", "fit_wall_seconds", "iterations", "seconds_per_iteration", "peak_rss_mb",
                    "log_rmse_mean", "ari"):
            s[key] = _median(good, key)
        if spi:
            s["ratio_per_iteration"] = spi / s["seconds_per_iteration"]
            s["ratio_per_fit"] = projected / s["fit_seconds"]
        summary[f"dmlmm_{k}"] = s
    results["summary"] = summary

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    print()
    print(f"research commit {results['settings']['research_commit']}; load {results['machine']['load_start']} -> "
          f"{results['machine']['load_end']}")
    if ok:
        r = summary["research"]
        print(f"research code: {f(spi, '.3f')} s/iteration (median of {len(ok)} runs x {args.iterations} "
              f"iterations), constructor {f(init, '.1f')} s, final clustering {f(final, '.1f')} s, "
              f"peak RSS {f(r['peak_rss_mb'], '.0f')} MB")
        print(f"  projected default fit ({DEFAULT_ITERATIONS} iterations): {f(projected, '.0f')} s; measured "
              f"{args.iterations}-iteration fit (constructor + train + final clustering): {f(measured, '.1f')} s")
        if acc:
            when = (f"after the default {acc['iterations']} iterations" if acc["iterations"] >= DEFAULT_ITERATIONS
                    else f"after only {acc['iterations']} iterations (not converged)")
            print(f"  {when}: log RMSE mean "
                  f"{acc['log_rmse_mean']:.3f}, ARI {acc['ari']:.3f}, {acc['n_clusters']} clusters")
        else:
            print("  accuracy: not computed")
    hdr = f"{'dmlmm knots':<12}{'iter':>6}{'s/fit':>9}{'ms/iter':>9}{'RSS MB':>8}{'logRMSE':>9}{'ARI':>7}" \
          f"{'x/iter':>9}{'x/fit':>9}"
    print(hdr)
    for k in args.knots:
        s = summary.get(f"dmlmm_{k}")
        if not s:
            continue
        print(f"{k:<12}{s['iterations']:>6.0f}{s['fit_seconds']:>9.3f}{1e3 * s['seconds_per_iteration']:>9.2f}"
              f"{s['peak_rss_mb']:>8.0f}{s['log_rmse_mean']:>9.3f}{s['ari']:>7.3f}"
              f"{f(s.get('ratio_per_iteration'), '.0f'):>9}{f(s.get('ratio_per_fit'), '.0f'):>9}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
