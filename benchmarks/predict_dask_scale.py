"""``dmlmm predict`` of every subject on a Dask cluster against the same command in memory.

Data: DGP 1 as in ``dask_scale.py`` (10 visits per subject), one Parquet file per 10,000 subjects. Model:
``DeepMixtureLMM((2, 1))`` with 10 basis functions, fitted in memory on 2,000 other DGP 1 subjects and saved.
Then, one after the other, each as a child process (its wall time, and the peak RSS, VmHWM sampled every
0.1 s, of the command and of each process it started: the driver and, with Dask, its cluster's workers;
``ru_maxrss`` is no measure here, a child inheriting its parent's peak across ``exec``):

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
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dask_scale import run_sampling_peaks, write_parquet  # noqa: E402


def run(cmd: list[str]) -> dict:
    """Wall seconds, the command's own peak RSS and the largest of the processes it started (bytes, VmHWM)."""
    done, wall, peaks = run_sampling_peaks(cmd)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    own = peaks.pop(next(iter(peaks)), 0) if peaks else 0  # the command itself is sampled first
    return {"wall_s": round(wall, 1), "peak_rss_bytes_command": own,
            "peak_rss_bytes_largest_other_process": max(peaks.values(), default=0), "processes_started": len(peaks),
            "stderr_tail": done.stderr.strip().splitlines()[-1:]}


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
        on_dask = run([exe, "predict", str(work / "model.dmlmm"), str(work / "visits"), "--times", times,
                       "--dask", "local:2", "--out", str(work / "pred")])
        memory = run([exe, "predict", str(work / "model.dmlmm"), str(work / "visits"), "--times", times,
                      "--out", str(work / "pred.csv")])
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
