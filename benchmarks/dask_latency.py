"""The Dask fit's cost per iteration on small data, against the in-memory fit of the same data.

    python benchmarks/dask_latency.py [--runs 3]

120 DGP 1 subjects with two covariates (age, sex), written to Parquet in 3 partitions by subject,
``DeepMixtureLMM((4, 2), basis=SplineBasis(8), loading_order=2)``, on a 2-process ``LocalCluster``
(one thread each). Each run fits in memory, then from the Parquet files, and prints both seconds,
iterations and ELBOs (which agree to the fits' tolerance: docs/dask.md). On data this small the
scheduler's round trips, not the arithmetic, set a Dask fit's time (docs/dask.md, "Limits"). The
workers inherit this process's environment: put another checkout's ``src`` first on ``PYTHONPATH``
to measure it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def frame() -> pd.DataFrame:
    """DGP 1 (seed 3, 120 subjects) with age and sex, and their effects added to y."""
    from dmlmm import simulate

    sim = simulate.dgp1(random_state=3, n_subjects=120)
    rng = np.random.default_rng(0)  # the same draws as tests/test_distributed.py's frame: the same data
    n = sim.n_subjects
    baseline = pd.DataFrame({"age": rng.normal(50, 10, n), "sex": rng.choice(["f", "m"], n)}, index=sim.labels.index)
    df = sim.data.join(baseline, on="subject")
    df["y"] += 0.02 * (df["age"] - 50) + 0.3 * (df["sex"] == "m")
    return df


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import dask.dataframe as dd
    import distributed

    import dmlmm
    from dmlmm import DeepMixtureLMM, SplineBasis

    df = frame()
    path = str(Path(tempfile.mkdtemp()) / "parquet")
    dd.from_pandas(df.set_index("subject"), npartitions=3).to_parquet(path)
    kw = dict(n_components=(4, 2), basis=SplineBasis(8), loading_order=2.0, random_state=0)
    print(f"dmlmm from {Path(dmlmm.__file__).parent}")
    mem, dsk = [], []
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster):
        for r in range(args.runs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.perf_counter()
                m0 = DeepMixtureLMM(**kw).fit(df, covariates=["age", "sex"])
                mem.append(time.perf_counter() - t)
                t = time.perf_counter()
                m1 = DeepMixtureLMM(**kw).fit(dd.read_parquet(path), covariates=["age", "sex"])
                dsk.append(time.perf_counter() - t)
            print(f"run {r}: in memory {mem[-1]:.2f} s, Dask {dsk[-1]:.2f} s; iterations {m0.n_iter_} / {m1.n_iter_}; "
                  f"ELBO {m0.elbo_:.6f} / {m1.elbo_:.6f}", flush=True)
    print(f"median of {args.runs}: in memory {statistics.median(mem):.2f} s, Dask {statistics.median(dsk):.2f} s")


if __name__ == "__main__":
    main()
