"""The band check on a random sample of subjects (``dmlmm fit --dask --check-bands``) against the check on all.

Data: DGP 1 in five blocks of 1,000 subjects (5,000 in all). Model: ``DeepMixtureLMM((2, 1))`` with 10 basis
functions, the settings of ``cli_dask_scale.py``. ``check_bands`` runs once on all 5,000 subjects, then on
``--repeats`` random samples of 2,000 of them (the command line's ``BAND_CHECK_SUBJECTS``, drawn as it draws
them). For each sample: its coverage, and the coverage of the same subjects' last visits in the check on all
(the difference is what checking a model fitted to fewer subjects changes), and the seconds taken.

Run:  python benchmarks/band_check_sample.py [--repeats 3]
Prints one line per check.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from dmlmm import DeepMixtureLMM, SplineBasis, check_bands
from dmlmm.cli_dask import BAND_CHECK_SUBJECTS
from dmlmm.simulate import dgp1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    df = pd.concat([dgp1([0, k], n_subjects=1000).data.assign(subject=lambda d, k=k: d["subject"] + 1000 * k)
                    for k in range(5)], ignore_index=True)
    model = DeepMixtureLMM((2, 1), basis=SplineBasis(10), random_state=0)
    t0 = time.perf_counter()
    full = check_bands(model, df)
    print(f"all {df['subject'].nunique()} subjects: coverage {full.coverage:.4f} "
          f"(95 % interval {full.interval[0]:.4f}-{full.interval[1]:.4f}), {time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng([0, 2])
    for rep in range(args.repeats):
        ids = rng.choice(df["subject"].unique(), BAND_CHECK_SUBJECTS, replace=False)
        t0 = time.perf_counter()
        part = check_bands(model, df[df["subject"].isin(ids)])
        seconds = time.perf_counter() - t0
        same = full.table.loc[full.table["subject"].isin(ids), "inside"].mean()
        print(f"sample {rep}: coverage {part.coverage:.4f} (95 % interval {part.interval[0]:.4f}-"
              f"{part.interval[1]:.4f}); the same visits in the check on all: {same:.4f}; {seconds:.1f} s")


if __name__ == "__main__":
    main()
