"""``dmlmm predict`` of every subject on a Dask cluster against the same command in memory.

Data: DGP 1 as in ``dask_scale.py`` (10 visits per subject), one Parquet file per 10,000 subjects. Model:
``DeepMixtureLMM((2, 1))`` with 10 basis functions, fitted in memory on 2,000 other DGP 1 subjects and saved.
Then, one after the other, each as a child process (its wall time, and the peak RSS of the largest process
it and its children ran, from ``resource``'s accounting of waited-for children: the Dask run first, so that its
figure is its own; the in-memory figure is the larger of the two):

- ``dmlmm predict model.dmlmm visits/ --times 0.25,0.5,0.75 --dask local:2 --out pred/`` (a LocalCluster of
  two worker processes, started by the command);
- ``dmlmm predict model.dmlmm visits/ --times 0.25,0.5,0.75 --out pred.csv`` (in memory).

The two tables are compared (the same rows and numbers). Run:
``python benchmarks/predict_dask_scale.py --subjects 100000``; prints one JSON object.
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

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dask_scale import write_parquet  # noqa: E402


def run(cmd: list[str]) -> dict:
    """Wall seconds and the peak RSS (bytes) of the largest process the command waited for."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return {"wall_s": round(wall, 1), "stderr_tail": done.stderr.strip().splitlines()[-1:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100_000)
    args = ap.parse_args()
    from dmlmm import DeepMixtureLMM, SplineBasis
    from dmlmm.simulate import dgp1

    work = Path(tempfile.mkdtemp(prefix="predict_dask_"))
    exe = str(Path(sys.executable).with_name("dmlmm"))
    try:
        write_parquet(work / "visits", args.subjects, 10_000, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            DeepMixtureLMM((2, 1), basis=SplineBasis(10), random_state=0).fit(
                dgp1(0, n_subjects=2000).data).save(work / "model.dmlmm")
        times = "0.25,0.5,0.75"
        # Dask first: the children's peak RSS is then the largest of its driver and workers alone
        on_dask = run([exe, "predict", str(work / "model.dmlmm"), str(work / "visits"), "--times", times,
                       "--dask", "local:2", "--out", str(work / "pred")])
        on_dask["peak_rss_bytes_largest_process"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        memory = run([exe, "predict", str(work / "model.dmlmm"), str(work / "visits"), "--times", times,
                      "--out", str(work / "pred.csv")])
        memory["peak_rss_bytes_largest_so_far"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        a = pd.read_csv(work / "pred.csv").sort_values(["subject", "time"], ignore_index=True)
        b = pd.read_parquet(work / "pred").sort_values(["subject", "time"], ignore_index=True)
        pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-9, atol=1e-12)
        result = {"subjects": args.subjects, "rows_out": len(a), "in_memory": memory, "dask_local2": on_dask,
                  "tables_equal": True, "max_abs_diff_mean": float(np.max(np.abs(a["mean"] - b["mean"]))),
                  "machine": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
