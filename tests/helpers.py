"""Small helpers shared by several test modules (importable: pytest puts tests/ on sys.path)."""

import numpy as np

from dmlmm.sufficient import sufficient_stats


def toy_stats(seed=0, n_subjects=8, n_obs=5, dim=3, n_fixed=1):
    """Sufficient statistics of a two-group toy data set (random designs, groups at +-1.5)."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_subjects), n_obs)
    X = rng.uniform(0, 1, (len(codes), dim))
    F = rng.normal(size=(len(codes), n_fixed))
    b = rng.normal(size=(n_subjects, dim)) + np.where(rng.random(n_subjects) < 0.5, 1.5, -1.5)[:, None]
    y = (X * b[codes]).sum(1) + F @ np.full(n_fixed, 0.3) + 0.3 * rng.normal(size=len(codes))
    return sufficient_stats(y, X, F, codes, n_subjects)


def error_line(result) -> str:
    """The one ``error: ...`` line of a CLI run that failed cleanly (exit code 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def split_parquet(frame, folder):
    """Write ``frame`` (long format, a ``subject`` column) to ``folder`` as two Parquet files of alternate rows,
    the subject as their index: every subject's rows in both files, so that a Dask fit shuffles them first."""
    folder.mkdir(parents=True)
    rows = frame.set_index("subject")
    rows.iloc[::2].to_parquet(folder / "a.parquet")
    rows.iloc[1::2].to_parquet(folder / "b.parquet")
    return folder
