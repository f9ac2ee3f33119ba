"""Held-out log scores of every subject on a Dask cluster against the same in memory.

Data: DGP 1 as in ``dask_scale.py`` (10 visits per subject), one Parquet file per 10,000 subjects. Model:
``DeepMixtureLMM((2, 1))`` with 10 basis functions, fitted in memory on 2,000 other DGP 1 subjects. Each
mode runs as a child process (its wall time per stage and its own peak RSS, VmHWM; the Dask figure is the
driver's):

- ``dask``: a LocalCluster of two worker processes; ``split_heldout(ddf, 0.2, 0)`` (lazy, one pass for the
  partitions' lengths), then ``model.score(held, condition_on=train)`` on the workers;
- ``memory``: ``pandas.read_parquet`` of the folder, ``split_heldout(df, 0.2, 0)``, ``model.score(...)``.

The two scores are compared (the held-out visits are the same rows in both). Run:
``python benchmarks/heldout_dask_scale.py --subjects 100000``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dask_scale import write_parquet  # noqa: E402


def child(mode: str, work: Path) -> dict:
    """One mode's stages in this process: seconds per stage, the score and this process's peak RSS."""
    import pickle

    from dmlmm.simulate import split_heldout

    model = pickle.loads((work / "model.pkl").read_bytes())
    out: dict = {}
    t0 = time.perf_counter()
    if mode == "dask":
        import logging

        import dask.dataframe as dd
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster):
            out["cluster_s"] = round(time.perf_counter() - t0, 2)
            t1 = time.perf_counter()
            ddf = dd.read_parquet(work / "visits")
            train, held = split_heldout(ddf, 0.2, 0)
            out["split_s"] = round(time.perf_counter() - t1, 2)
            t1 = time.perf_counter()
            out["score"] = model.score(held, condition_on=train)
            out["score_s"] = round(time.perf_counter() - t1, 2)
    else:
        import pandas as pd

        df = pd.read_parquet(work / "visits")
        out["read_s"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        train, held = split_heldout(df, 0.2, 0)
        out["split_s"] = round(time.perf_counter() - t1, 2)
        t1 = time.perf_counter()
        out["score"] = model.score(held, condition_on=train)
        out["score_s"] = round(time.perf_counter() - t1, 2)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    out["peak_rss_bytes"] = _peak_rss()
    return out


def _peak_rss() -> int:
    """This process's peak RSS (VmHWM, bytes): unlike ``ru_maxrss``, not inherited from the parent across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    import pickle

    from dmlmm import DeepMixtureLMM, SplineBasis
    from dmlmm.simulate import dgp1

    work = Path(tempfile.mkdtemp(prefix="heldout_dask_"))
    try:
        write_parquet(work / "visits", args.subjects, 10_000, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = DeepMixtureLMM((2, 1), basis=SplineBasis(10), random_state=0).fit(dgp1(0, n_subjects=2000).data)
        (work / "model.pkl").write_bytes(pickle.dumps(model))
        result = {"subjects": args.subjects}
        for mode in ("dask", "memory"):
            done = subprocess.run([sys.executable, __file__, "--child", mode, str(work)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{mode} failed:\n{done.stderr}")
            result[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        result["score_difference"] = abs(result["dask"]["score"] - result["memory"]["score"])
        result.update(machine=platform.platform(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
