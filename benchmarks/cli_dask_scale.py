"""The command line on a Dask cluster at scale: ``dmlmm fit DIR --dask ADDRESS`` on up to 10^6 subjects.

Data: DGP 1 as in ``dask_scale.py`` (two groups, 10 visits per subject), one Parquet file per
``--chunk`` subjects. With ``--scattered`` each file's rows are dealt to two files (odd and even
rows), so every subject spans two partitions and the command line shuffles by subject first.

Run: a ``LocalCluster`` of ``--workers`` processes (one thread each) is started here; the command
``dmlmm fit DIR --dask <its address> --components K --n-basis B --transform none --out OUT`` (by default
K = 2,1 and B = 10, the settings of ``dask_scale.py``'s runs, to set the two side by side) runs as a
child process (the driver). Measured: its wall time (and the fit's, from its summary); its peak RSS (VmHWM,
sampled every 0.1 s: before 2026-12-08 ``ru_maxrss``, which counted this script's own peak at the fork)
(the driver collects the per-subject tables and writes clusters.csv and model.dmlmm, then brings the rows of
``--sample`` subjects for trajectories.csv and report.html); every worker's
peak memory (reported to the scheduler, sampled every 0.5 s, and each process's VmHWM at the end);
the outputs' sizes; and the ARI of ``cluster_layer1`` in clusters.csv against the true groups.

With ``--outcomes`` the data also hold each subject's age, sex, follow-up time and death, and the command
writes outcomes, survival and characteristics by cluster for every subject (its extra cost: one pass before
the fit).

Run:  python benchmarks/cli_dask_scale.py --subjects 100000 [--scattered] [--outcomes]
Writes benchmarks/results/cli_dask_scale_<subjects>[_scattered].json and prints the same numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dask_scale import MemoryMonitor, peak_rss, run_sampling_peaks, write_parquet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def scatter(directory: Path) -> None:
    """Deal each file's rows to two files (even and odd rows): every subject then lies in two partitions."""
    for f in sorted(directory.glob("part-*.parquet")):
        df = pd.read_parquet(f)
        df.iloc[::2].to_parquet(f.with_name(f.stem + "-a.parquet"), index=False)
        df.iloc[1::2].to_parquet(f.with_name(f.stem + "-b.parquet"), index=False)
        f.unlink()


def fit_seconds(summary: str) -> float | None:
    """The fit time the command's summary prints ('fit time 12.3 s')."""
    found = re.search(r"fit time ([0-9.]+) s", summary)
    return float(found.group(1)) if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--basis", type=int, default=10)
    ap.add_argument("--components", default="2,1", help="--components of dmlmm fit (dask_scale.py's default: 2,1)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="6GB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scattered", action="store_true")
    ap.add_argument("--outcomes", action="store_true",
                    help="per-subject age, sex, follow-up and death in the data, and --outcome sex --event-time "
                         "futime --event died --baseline age,sex: the outcome tables of every subject")
    ap.add_argument("--check-bands", action="store_true",
                    help="--check-bands of dmlmm fit (2,000 subjects drawn at random, refitted in the driver)")
    ap.add_argument("--sample", type=int, default=None,
                    help="--sample of dmlmm fit (curves of that many subjects; default: the command's, 1,000)")
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    from dmlmm.metrics import adjusted_rand_index

    work = Path(tempfile.mkdtemp(prefix="cli_dask_"))
    try:
        truth, write_s = write_parquet(work / "visits", args.subjects, args.chunk, args.seed,
                                       membership=args.outcomes, outcomes=args.outcomes)
        if args.scattered:
            scatter(work / "visits")
        dmlmm = Path(sys.executable).with_name("dmlmm")
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          memory_limit=args.memory_limit, silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            monitor = MemoryMonitor(client)
            monitor.start()
            cmd = [str(dmlmm), "fit", str(work / "visits"), "--dask", cluster.scheduler_address, "--components",
                   args.components, "--n-basis", str(args.basis), "--transform", "none", "--seed", str(args.seed),
                   *([] if args.sample is None else ["--sample", str(args.sample)]),
                   *(["--outcome", "sex", "--event-time", "futime", "--event", "died", "--baseline", "age,sex"]
                     if args.outcomes else []), *(["--check-bands"] if args.check_bands else []),
                   "--out", str(work / "out")]
            # the command's own peak RSS, sampled (its ru_maxrss would include this process's peak at the fork)
            run, wall, peaks = run_sampling_peaks(cmd)
            driver_rss = peaks.get(next(iter(peaks)), 0) if peaks else 0
            reported = monitor.stop()
            rss = client.run(peak_rss)
        if run.returncode != 0:
            raise SystemExit(f"dmlmm fit failed ({run.returncode}):\n{run.stderr}")
        clusters = pd.read_csv(work / "out" / "clusters.csv").set_index("subject")
        ari = adjusted_rand_index(truth.loc[clusters.index].to_numpy(), clusters["cluster_layer1"].to_numpy())
        result = {
            "subjects": args.subjects, "observations": int(10 * args.subjects), "basis": args.basis,
            "workers": args.workers, "scattered": args.scattered, "parquet_write_s": round(write_s, 1),
            "command": " ".join(cmd[1:3] + ["--dask", "ADDRESS"] + cmd[5:-2]),
            "wall_s": round(wall, 1), "fit_s": fit_seconds(run.stdout), "sample": args.sample,
            "curves_drawn": (pd.read_csv(work / "out" / "trajectories.csv", usecols=["subject"])["subject"].nunique()
                             if (work / "out" / "trajectories.csv").exists() else 0),
            "peak_driver_rss_bytes": int(driver_rss),
            "peak_worker_memory_reported_bytes": {k: int(v) for k, v in reported.items()},
            "peak_worker_rss_bytes": {k: int(v) for k, v in rss.items()},
            "output_bytes": {p.name: p.stat().st_size for p in (work / "out").iterdir()},
            "outcome_tests": (pd.read_csv(work / "out" / "outcome_tests.csv").to_dict("records")
                              if args.outcomes else None),
            "band_check": ([ln for ln in (run.stdout + run.stderr).splitlines() if "inside (95 % interval" in ln]
                           if args.check_bands else None),
            "ari_layer1": round(float(ari), 4), "warnings": [ln for ln in run.stderr.splitlines()
                                                              if ln.startswith("warning")],
            "machine": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    name = (f"cli_dask_scale_{args.subjects}{'_scattered' if args.scattered else ''}"
            f"{'' if args.sample is None else f'_sample{args.sample}'}{'_outcomes' if args.outcomes else ''}"
            f"{'_bands' if args.check_bands else ''}.json")
    result["components"] = args.components
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
