"""The Dask path at scale: a deep mixture fitted to up to 10^6 subjects from Parquet on a LocalCluster.

Data: DGP 1 of the simulation study (two groups of sinusoidal curves, 10 visits per
subject on a grid of 99 times, noise SD 0.3), drawn by ``dmlmm.simulate.dgp1`` in
chunks of ``--chunk`` subjects (chunk k from the seed ``[--seed, k]``, subject ids offset
so they are unique), each chunk written as one Parquet file: every subject's rows in
one partition. The true groups are kept aside for the ARI.

Fit: ``DeepMixtureLMM(n_components=--components, basis=SplineBasis(--basis))`` (defaults
otherwise: smoothness prior, starting sizes, delete moves, pruning, tol 1e-6), on
``dd.read_parquet(dir)`` with a ``LocalCluster`` of ``--workers`` worker processes, one
thread each.

Measured: wall time of ``fit`` (reading, design, statistics, all iterations), the time
to write the Parquet files (not in the fit), the peak memory of every worker (the
maximum over the fit of the memory each worker reports to the scheduler, sampled every
0.5 s, and each worker process's own peak RSS, VmHWM, read at the end), the
driver's peak RSS, iterations, ELBO, and the ARI of the first-layer groups against the
true groups.

``--response exp`` or ``shifted`` makes y positive (``exp(y / 2)``, or ``y + 12``): the default
``response_transform="auto"`` then fits two scales (as given and the log), keeping the log
scale for the first and the scale as given for the second; the worker memory shows what the
second scale costs.

``--noise-df auto`` (or a number) fits subject-level residual scales, each subject's q(v_i) on its
worker; ``--tails`` makes a fifth of the subjects four times noisier (so that the scales matter).

``--membership`` gives every subject a baseline age (N(50, 10^2) plus 8 times its group, -1 or 1: the
log-odds of group 1 rise by 0.16 per year) and a sex (f or m, no effect) and fits
``membership_covariates=["age", "sex"]``; the coefficients are recorded beside the maximum-likelihood
logistic regression of the true groups on the same columns (statsmodels), their target.

Run:  python benchmarks/dask_scale.py --subjects 1000000    (add --quick for 20,000)
Writes benchmarks/results/dask_scale_<subjects>[_nu<noise-df>][_tails].json and prints the same numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


#: ``--response``: DGP 1's y as drawn; ``exp(y / 2)`` (positive and skewed: "auto" keeps the log scale);
#: ``y + 12`` (positive, Gaussian as given: "auto" fits the log scale too but keeps the scale as given).
RESPONSES = {"given": lambda y: y, "exp": lambda y: np.exp(0.5 * y), "shifted": lambda y: y + 12.0}


def write_parquet(directory: Path, n_subjects: int, chunk: int, seed: int,
                  response: str = "given", tails: bool = False, membership: bool = False,
                  outcomes: bool = False) -> tuple[pd.Series, float]:
    """DGP 1 in chunks, one Parquet file per chunk; returns the true groups and the seconds taken (with
    ``membership``, the subjects' ages and sexes too: see the module docstring; with ``outcomes`` also a
    follow-up time ``futime``, exponential with mean 6 years in group -1 and 12 in group 1, censored at 8,
    and ``died``, 1 where it ended by the event)."""
    from dmlmm import simulate

    t0 = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    labels = []
    for k, start in enumerate(range(0, n_subjects, chunk)):
        n = min(chunk, n_subjects - start)
        sim = simulate.dgp1(random_state=[seed, k], n_subjects=n)
        y = sim.data["y"].to_numpy()
        if tails:  # a fifth of the subjects 4x noisier: noise SD 0.3 -> 1.2 (an extra N(0, 0.3^2 * 15))
            rng = np.random.default_rng([seed, k, 1])
            noisy = (rng.random(n) < 0.2)[sim.data["subject"].to_numpy()]
            y = y + noisy * np.sqrt(15.0) * 0.3 * rng.standard_normal(len(y))
        df = sim.data.assign(subject=sim.data["subject"].to_numpy() + start, y=RESPONSES[response](y))
        if membership:  # baseline covariates, one value per subject: age depends on the group, sex does not
            rng = np.random.default_rng([seed, k, 2])
            age = rng.normal(50.0, 10.0, n) + 8.0 * sim.labels.to_numpy()
            sex = np.where(rng.random(n) < 0.5, "f", "m")
            rows = sim.data["subject"].to_numpy()
            df = df.assign(age=age[rows], sex=sex[rows])
        if outcomes:
            rng = np.random.default_rng([seed, k, 3])
            event = rng.exponential(9.0 + 3.0 * sim.labels.to_numpy())
            rows = sim.data["subject"].to_numpy()
            df = df.assign(futime=np.minimum(event, 8.0)[rows], died=(event < 8.0).astype(int)[rows])
        df.to_parquet(directory / f"part-{k:05d}.parquet", index=False)
        labels.append(pd.Series(sim.labels.to_numpy(), index=sim.labels.index.to_numpy() + start))
    return pd.concat(labels).rename_axis("subject"), time.perf_counter() - t0


class MemoryMonitor(threading.Thread):
    """Samples the memory each worker reports to the scheduler; keeps the maximum per worker."""

    def __init__(self, client, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.client, self.every = client, every
        self.peak: dict[str, int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                for addr, w in self.client.scheduler_info(n_workers=-1)["workers"].items():
                    mem = int(w.get("metrics", {}).get("memory", 0))
                    self.peak[addr] = max(self.peak.get(addr, 0), mem)
            except Exception:  # the cluster closing
                pass
            self._done.wait(self.every)

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        return self.peak


class TimeLimit(Exception):
    """The fit ran past ``--time-limit``."""


def count_steps(limit_s: float | None) -> list[float]:
    """Record the wall time of every distributed local step (one per iteration); stop the fit past ``limit_s``."""
    from dmlmm.distributed.stats import DaskStats

    seconds: list[float] = []
    step = DaskStats.local_step
    start = time.perf_counter()

    def timed(self, *a, **kw):
        if limit_s is not None and time.perf_counter() - start > limit_s:
            raise TimeLimit(f"stopped after {limit_s:.0f} s")
        t = time.perf_counter()
        out = step(self, *a, **kw)
        seconds.append(time.perf_counter() - t)
        return out

    DaskStats.local_step = timed
    return seconds


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM; ``ru_maxrss`` is inherited across fork)."""
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith("VmHWM"))
    return int(line.split()[1]) * 1024


def _hwm(pid: int) -> int:
    """Process ``pid``'s peak resident memory in bytes (VmHWM), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(next(l for l in f if l.startswith("VmHWM")).split()[1]) * 1024
    except (OSError, StopIteration):
        return 0


def run_sampling_peaks(cmd: list[str], every: float = 0.1):
    """Run ``cmd``, sampling the VmHWM of it and of every process it starts every ``every`` s.

    Returns (CompletedProcess with text stdout and stderr, wall seconds, {pid: peak bytes}). ``ru_maxrss`` of
    waited-for children is no measure of a command's own memory: Linux carries a process's peak over ``exec``,
    so every child reports at least its parent's peak at the fork. VmHWM is the new program's own; it is read
    while the process lives, so growth in its last ``every`` seconds can be missed.
    """
    import subprocess

    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: dict = {}
    reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())))
    reader.start()
    peaks: dict[int, int] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            pids = [proc.pid] + [c.pid for c in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pids = []
        for pid in pids:
            peaks[pid] = max(peaks.get(pid, 0), _hwm(pid))
        time.sleep(every)
    reader.join()
    wall = time.perf_counter() - t0
    done = subprocess.CompletedProcess(cmd, proc.returncode, out.get("stdout", ""), out.get("stderr", ""))
    return done, wall, peaks


def membership_against_truth(model, ddf, groups: pd.Series, truth: pd.Series) -> dict:
    """The fitted membership coefficients (user scale) and the maximum-likelihood logistic regression of the true
    groups (those matched to the fitted stick's group) on the subjects' age and sex (statsmodels)."""
    import statsmodels.api as sm

    coef = model.membership_coefficients_
    base = ddf[["subject", "age", "sex"]].drop_duplicates().compute().set_index("subject").loc[truth.index]
    group = int(coef["group"].iloc[0])
    matched = truth.groupby(groups.reindex(truth.index)).agg(lambda v: v.mode().iloc[0])  # fitted group -> true label
    y = (truth == matched.get(group, np.nan)).to_numpy().astype(float)
    X = sm.add_constant(np.c_[base["age"], base["sex"] == "m"].astype(float))
    mle = sm.Logit(y, X).fit(disp=0)
    return {"names": [str(n) for n in coef.index.get_level_values("covariate")],
            "estimate": coef["estimate"].round(6).tolist(), "sd": coef["sd"].round(6).tolist(),
            "mle_true_groups": [round(float(v), 6) for v in mle.params],
            "mle_sd": [round(float(v), 6) for v in mle.bse]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=25_000, help="subjects per Parquet file (partition)")
    ap.add_argument("--basis", type=int, default=10)
    ap.add_argument("--components", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="6GB", help="per worker (the nanny's limit)")
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=None, help="Parquet directory (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="20,000 subjects")
    ap.add_argument("--response", choices=sorted(RESPONSES), default="given",
                    help="y as drawn, exp(y/2) or y + 12 (the last two: two response scales under response_transform='auto')")
    ap.add_argument("--noise-df", default=None, help="'auto' or a number: subject-level residual scales")
    ap.add_argument("--tails", action="store_true", help="a fifth of the subjects four times noisier")
    ap.add_argument("--membership", action="store_true",
                    help="baseline age (depends on the group) and sex, fitted as membership_covariates")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds: stop the fit past this and record what was measured (completed: false)")
    args = ap.parse_args()
    if args.quick:
        args.subjects, args.chunk = 20_000, 5_000

    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    import dmlmm
    from dmlmm import DeepMixtureLMM, SplineBasis
    from dmlmm.metrics import adjusted_rand_index

    tmp = None
    data_dir = args.data
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="dmlmm_dask_")
        data_dir = Path(tmp) / "dgp1"
    print(f"writing {args.subjects} subjects to {data_dir} ...", flush=True)
    truth, write_s = write_parquet(data_dir, args.subjects, args.chunk, args.seed, args.response, args.tails,
                                   args.membership)
    print(f"  {write_s:.1f} s", flush=True)

    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cluster = LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=args.memory_limit,
        dashboard_address=None, silence_logs=logging.ERROR, env=env,
    )
    client = Client(cluster)
    monitor = MemoryMonitor(client)
    monitor.start()
    noise_df = None if args.noise_df is None else (args.noise_df if args.noise_df == "auto" else float(args.noise_df))
    model = DeepMixtureLMM(n_components=tuple(args.components), basis=SplineBasis(args.basis), random_state=args.seed,
                           max_iter=args.max_iter, noise_df=noise_df,
                           membership_covariates=["age", "sex"] if args.membership else None)
    ddf = dd.read_parquet(data_dir)
    print(f"fitting {model!r} on {ddf.npartitions} partitions, {args.workers} workers ...", flush=True)
    steps = count_steps(args.time_limit)
    t0 = time.perf_counter()
    completed = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.fit(ddf)
        except TimeLimit:
            completed = False
    fit_s = time.perf_counter() - t0
    ari = collect_s = coefficients = None
    if completed:
        t1 = time.perf_counter()
        groups = model.groups_.compute()
        collect_s = round(time.perf_counter() - t1, 2)
        ari = float(adjusted_rand_index(truth, groups.reindex(truth.index)))
        if args.membership:
            coefficients = membership_against_truth(model, ddf, groups, truth)
    reported = monitor.stop()
    rss = client.run(peak_rss)
    client.close()
    cluster.close()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)

    out = {
        "benchmark": "dask_scale",
        "subjects": args.subjects,
        "visits_per_subject": 10,
        "observations": int(args.subjects * 10),
        "basis_functions": args.basis,
        "response": args.response,
        "tails": args.tails,
        "noise_df_fitted": getattr(model, "noise_df_", None) if completed else None,
        "response_transform": getattr(model, "response_transform_", None) if completed else None,
        "elbo_by_transform": getattr(model, "elbo_by_transform_", None) if completed else None,
        "model": repr(model),
        "partitions": int(ddf.npartitions),
        "workers": args.workers,
        "threads_per_worker": 1,
        "worker_memory_limit": args.memory_limit,
        "parquet_write_seconds": round(write_s, 1),
        "completed": completed,
        "fit_seconds": round(fit_s, 1),
        "fit_seconds_after_statistics": round(model.fit_seconds_, 1) if completed else None,
        "groups_compute_seconds": collect_s,
        "local_steps": len(steps),
        "local_step_seconds_median": round(float(np.median(steps)), 3) if steps else None,
        "local_step_seconds_total": round(float(np.sum(steps)), 1),
        "n_iter": int(model.n_iter_) if completed else None,
        "converged": bool(model.converged_) if completed else None,
        "elbo": float(model.elbo_) if completed else None,
        "components_kept": list(model.n_components_) if completed else None,
        "ari_groups_vs_truth": ari,
        "membership_coefficients": coefficients,
        "peak_worker_memory_reported_bytes": {k: int(v) for k, v in reported.items()},
        "peak_worker_rss_bytes": {k: int(v) for k, v in rss.items()},
        "peak_driver_rss_bytes": peak_rss(),
        "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught}),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "versions": {"dmlmm": dmlmm.__version__, "numpy": np.__version__, "pandas": pd.__version__,
                     "dask": __import__("dask").__version__, "distributed": __import__("distributed").__version__},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = (("" if noise_df is None else f"_nu{args.noise_df}") + ("_tails" if args.tails else "")
              + ("_membership" if args.membership else ""))
    path = RESULTS / f"dask_scale_{args.subjects}{suffix}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
