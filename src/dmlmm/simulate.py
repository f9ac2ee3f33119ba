"""The three data generating processes (DGPs) of the simulation study, and a held-out split.

These are the shared yardstick of ``model.md`` section 7. Every generator is
vectorised over subjects (no Python loop over subjects) and draws all its
randomness from one :class:`numpy.random.Generator` built with
:func:`numpy.random.default_rng` from ``random_state`` (``None``, an int, a
``SeedSequence`` or a ``Generator``, which is used as is).

Each generator returns a :class:`SimulatedData` with

- ``data``: long frame ``subject, time, y`` (sorted by subject, then time),
- ``truth``: long frame ``subject, time, value``, the true curve on its dense grid,
- ``truth_noiseless``: the same without the noise that DGP 3 puts into its truth,
- ``labels``: true cluster labels per subject (``None`` for DGP 2),
- ``subject_params``: the per-subject parameters that were drawn,
- ``time_range``: the range of the time axis.

Subjects are labelled ``0 .. N - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._dask_frames import is_dask_collection

__all__ = [
    "SimulatedData",
    "dgp1",
    "dgp2",
    "dgp3",
    "DGPS",
    "split_heldout",
    "pspline_lines",
    "DGP1_TRUTH_GRID",
    "DGP1_OBS_GRID",
    "DGP2_TRUTH_GRID",
    "DGP3_GRID",
    "DGP3_COMBINATIONS",
]

RandomState = int | np.random.Generator | np.random.SeedSequence | None

# --------------------------------------------------------------------------- constants

#: DGP 1: the scoring grid, 250 equally spaced points of [0, 1], shape (250,).
DGP1_TRUTH_GRID: np.ndarray = np.linspace(0.0, 1.0, 250)
#: DGP 1: the candidate observation times {0.01, ..., 0.99}, shape (99,).
DGP1_OBS_GRID: np.ndarray = np.round(np.arange(1, 100) / 100.0, 2)
#: DGP 1: variances of the four scores xi_p, shape (4,).
DGP1_SCORE_VARIANCES: np.ndarray = np.array([0.1, 0.045, 0.01, 0.001])
DGP1_NOISE_SD: float = 0.3
DGP1_N_TIMES: int = 10

#: DGP 2: Euler step, horizon and the start of the kept window.
DGP2_STEP: float = 0.1
DGP2_HORIZON: float = 20.0
DGP2_KEEP_FROM: float = 10.0
DGP2_INNOVATION_SD: float = 0.5
#: DGP 2: the kept grid t = 10.0, 10.1, ..., 20.0, shape (101,).
DGP2_TRUTH_GRID: np.ndarray = np.round(
    np.arange(round(DGP2_KEEP_FROM / DGP2_STEP), round(DGP2_HORIZON / DGP2_STEP) + 1) * DGP2_STEP, 10
)
#: DGP 2: number of index draws per subject is ``integers(low, high)``, i.e. 15..24 (high exclusive).
DGP2_DRAWS_LOW: int = 15
DGP2_DRAWS_HIGH: int = 25

#: DGP 3: the 40 equally spaced points of [0, 1], shape (40,).
DGP3_GRID: np.ndarray = np.linspace(0.0, 1.0, 40)
DGP3_NOISE_VAR: float = 0.1
#: DGP 3: number of observed points per subject, inclusive bounds.
DGP3_MIN_OBS: int = 20
DGP3_MAX_OBS: int = 24
_DGP3_BETA = np.array([1.0, 0.1])
_DGP3_W1 = np.array([1.0, 2.0, 3.0])
_DGP3_W2 = np.array([7.0, 8.0, 9.0])


def _dgp3_combinations() -> pd.DataFrame:
    """The 36 combinations of (beta1, beta2, w1, w2), row ``k`` is cluster label ``k``.

    Returns
    -------
    DataFrame, shape (36, 4)
        Columns ``beta1, beta2, w1, w2``; label ``((i_b1 * 2 + i_b2) * 3 + i_w1) * 3 + i_w2``
        where the ``i_*`` index ``(1, 0.1)``, ``(1, 0.1)``, ``(1, 2, 3)``, ``(7, 8, 9)``.
    """
    b1, b2, w1, w2 = np.meshgrid(_DGP3_BETA, _DGP3_BETA, _DGP3_W1, _DGP3_W2, indexing="ij")
    frame = pd.DataFrame({"beta1": b1.ravel(), "beta2": b2.ravel(), "w1": w1.ravel(), "w2": w2.ravel()})
    frame.index.name = "label"
    return frame


#: DGP 3: table of the 36 true clusters (index = label).
DGP3_COMBINATIONS: pd.DataFrame = _dgp3_combinations()


# --------------------------------------------------------------------------- container


@dataclass(frozen=True)
class SimulatedData:
    """One simulated data set and its ground truth.

    Attributes
    ----------
    data : DataFrame, shape (n_obs, 3)
        Columns ``subject, time, y``, sorted by subject then time.
    truth : DataFrame, shape (N * G, 3)
        Columns ``subject, time, value``: the true curve of every subject on the
        dense scoring grid of G points, sorted by subject then time.
    labels : Series of int, shape (N,), or None
        True cluster label per subject (index ``subject``); ``None`` when the DGP has no clusters.
    time_range : tuple of float
        ``(lower, upper)`` of the time axis.
    truth_noiseless : DataFrame, shape (N * G, 3)
        Same layout as ``truth`` without noise; identical to ``truth`` unless the
        truth itself is noisy (DGP 3).
    subject_params : DataFrame, shape (N, q)
        The per-subject parameters that were drawn (index ``subject``).
    name : str
        ``"dgp1"``, ``"dgp2"`` or ``"dgp3"``.
    """

    data: pd.DataFrame
    truth: pd.DataFrame
    labels: pd.Series | None
    time_range: tuple[float, float]
    truth_noiseless: pd.DataFrame
    subject_params: pd.DataFrame
    name: str = ""

    @property
    def n_subjects(self) -> int:
        """Number of subjects N."""
        return int(self.subject_params.shape[0])


# --------------------------------------------------------------------------- helpers


def _rng(random_state: RandomState) -> np.random.Generator:
    """A Generator from ``random_state`` (a Generator is returned unchanged)."""
    return np.random.default_rng(random_state)


def _check_n_subjects(n_subjects: int) -> int:
    n = int(n_subjects)
    if n != n_subjects or n < 1:
        raise ValueError(f"n_subjects must be a positive integer, got {n_subjects!r}")
    return n


def _random_subset_mask(rng: np.random.Generator, n_keep: np.ndarray, n_points: int) -> np.ndarray:
    """Per row, a uniformly random subset of ``n_keep[i]`` of ``n_points`` columns (no replacement).

    Each row gets a random permutation (argsort of uniform keys); a column is kept
    when its rank in that permutation is below ``n_keep[i]``.

    Parameters
    ----------
    n_keep : ndarray of int, shape (N,)
    n_points : int

    Returns
    -------
    ndarray of bool, shape (N, n_points)
    """
    keys = rng.random((n_keep.shape[0], n_points))
    ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
    return ranks < n_keep[:, None]


def _long_from_mask(mask: np.ndarray, grid: np.ndarray, values: np.ndarray, name: str) -> pd.DataFrame:
    """Long frame of the entries of ``values`` where ``mask`` is true.

    Parameters
    ----------
    mask : ndarray of bool, shape (N, G)
    grid : ndarray, shape (G,)
    values : ndarray, shape (N, G)
    name : str
        Name of the value column.

    Returns
    -------
    DataFrame with columns ``subject, time, <name>``, sorted by subject then time
    (``grid`` must be increasing).
    """
    rows, cols = np.nonzero(mask)
    return pd.DataFrame(
        {"subject": rows.astype(np.int64), "time": grid[cols].astype(float), name: values[rows, cols].astype(float)}
    )


def _long_full(grid: np.ndarray, values: np.ndarray, name: str = "value") -> pd.DataFrame:
    """Long frame of a full (N, G) array on an increasing grid (all entries)."""
    return _long_from_mask(np.ones(values.shape, dtype=bool), grid, values, name)


def _labels(values: np.ndarray) -> pd.Series:
    """Labels as a Series indexed by subject 0..N-1."""
    index = pd.RangeIndex(values.shape[0], name="subject")
    return pd.Series(values.astype(np.int64), index=index, name="label")


def _params(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame(columns, index=pd.RangeIndex(n, name="subject"))


# --------------------------------------------------------------------------- DGP 1


def dgp1_curves(t: np.ndarray, group: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """DGP 1 mean curves ``g sin(4 pi t) + sum_p xi_p sqrt(2) sin(p pi t)``.

    Parameters
    ----------
    t : ndarray, shape (G,) or (N, G)
        Times, shared by all subjects or per subject.
    group : ndarray, shape (N,)
        Group g in {+1, -1}.
    scores : ndarray, shape (N, 4)
        Scores xi_ip.

    Returns
    -------
    ndarray, shape (N, G)
    """
    t = np.asarray(t, dtype=float)
    t2 = np.broadcast_to(t, (group.shape[0],) + t.shape[-1:])
    p = np.arange(1, scores.shape[1] + 1)
    eigen = np.sqrt(2.0) * np.sin(np.pi * t2[..., None] * p)  # (N, G, 4)
    return group[:, None] * np.sin(4.0 * np.pi * t2) + np.einsum("ngp,np->ng", eigen, scores)


def dgp1(random_state: RandomState = None, n_subjects: int = 600) -> SimulatedData:
    """DGP 1: two groups of sinusoidal curves plus smooth subject deviations.

    ``g_i = +1 or -1`` with probability 1/2; ``f_i(t) = g_i sin(4 pi t) +
    sum_{p=1..4} xi_ip sqrt(2) sin(p pi t)`` with ``xi_ip ~ N(0, v_p)``,
    ``v = (0.1, 0.045, 0.01, 0.001)``. Each subject is observed at 10 distinct
    times drawn without replacement from ``{0.01, ..., 0.99}``, with
    ``y = f_i(t) + N(0, 0.3^2)``.

    Parameters
    ----------
    random_state : None, int or numpy Generator
    n_subjects : int
        N.

    Returns
    -------
    SimulatedData
        ``data`` has N * 10 rows; ``truth`` is f_i on 250 equally spaced points
        of [0, 1] (N * 250 rows); ``labels`` is g (+1/-1); ``subject_params``
        has columns ``g, xi1..xi4``; ``time_range`` is (0, 1).
    """
    n = _check_n_subjects(n_subjects)
    rng = _rng(random_state)
    group = np.where(rng.random(n) < 0.5, 1, -1)
    scores = rng.normal(size=(n, DGP1_SCORE_VARIANCES.size)) * np.sqrt(DGP1_SCORE_VARIANCES)
    mask = _random_subset_mask(rng, np.full(n, DGP1_N_TIMES), DGP1_OBS_GRID.size)
    noise = rng.normal(scale=DGP1_NOISE_SD, size=(n, DGP1_OBS_GRID.size))  # only masked entries are used
    y_grid = dgp1_curves(DGP1_OBS_GRID, group, scores) + noise
    truth = _long_full(DGP1_TRUTH_GRID, dgp1_curves(DGP1_TRUTH_GRID, group, scores))
    params = _params({"g": group, **{f"xi{p + 1}": scores[:, p] for p in range(scores.shape[1])}})
    return SimulatedData(
        data=_long_from_mask(mask, DGP1_OBS_GRID, y_grid, "y"),
        truth=truth,
        labels=_labels(group),
        time_range=(0.0, 1.0),
        truth_noiseless=truth,
        subject_params=params,
        name="dgp1",
    )


# --------------------------------------------------------------------------- DGP 2


def van_der_pol_paths(rng: np.random.Generator, theta: np.ndarray) -> np.ndarray:
    """Euler paths of noisy Van der Pol oscillators, all subjects at once.

    From ``(x, v) = (1, 0.1)`` at t = 0, steps of ``h = 0.1`` up to T = 20::

        x <- x + h (v + 0.5 e1)
        v <- v + h (theta (1 - x^2) v - x + 0.5 e2),    e1, e2 ~ N(0, 1)

    (both increments use the state before the step).

    Parameters
    ----------
    rng : numpy Generator
    theta : ndarray, shape (N,)

    Returns
    -------
    ndarray, shape (N, 201)
        x at t = 0, 0.1, ..., 20.
    """
    n_steps = round(DGP2_HORIZON / DGP2_STEP)
    n = theta.shape[0]
    innovations = rng.normal(scale=DGP2_INNOVATION_SD, size=(n_steps, 2, n))
    x = np.empty((n_steps + 1, n))
    x[0] = 1.0
    v = np.full(n, 0.1)
    for k in range(n_steps):  # loop over time steps; every step is vectorised over subjects
        xk = x[k]
        x[k + 1] = xk + DGP2_STEP * (v + innovations[k, 0])
        v = v + DGP2_STEP * (theta * (1.0 - xk**2) * v - xk + innovations[k, 1])
    return x.T


def dgp2(random_state: RandomState = None, n_subjects: int = 100) -> SimulatedData:
    """DGP 2: noisy Van der Pol oscillators observed without noise on t in [10, 20].

    ``theta_i = log U(1, 5)``; the path (see :func:`van_der_pol_paths`) is kept
    for t >= 10, a grid of 101 points. Each subject draws
    ``n_draw ~ integers(15, 25)`` (numpy convention, high exclusive: 15..24)
    grid indices with replacement and is observed, without added noise, at the
    distinct ones (so 1..24 observations, in practice about 13..21).

    Parameters
    ----------
    random_state : None, int or numpy Generator
    n_subjects : int
        N.

    Returns
    -------
    SimulatedData
        ``truth`` is x on the whole 101-point grid; ``labels`` is None;
        ``subject_params`` has columns ``theta, n_draw``; ``time_range`` is (10, 20).
    """
    n = _check_n_subjects(n_subjects)
    rng = _rng(random_state)
    theta = np.log(rng.uniform(1.0, 5.0, size=n))
    paths = van_der_pol_paths(rng, theta)[:, -DGP2_TRUTH_GRID.size :]  # (N, 101)
    n_draw = rng.integers(DGP2_DRAWS_LOW, DGP2_DRAWS_HIGH, size=n)
    draws = rng.integers(0, DGP2_TRUTH_GRID.size, size=(n, DGP2_DRAWS_HIGH - 1))
    used = np.arange(draws.shape[1]) < n_draw[:, None]
    observed = np.zeros(paths.shape, dtype=bool)
    rows = np.broadcast_to(np.arange(n)[:, None], draws.shape)
    observed[rows[used], draws[used]] = True  # duplicates collapse: distinct indices per row
    truth = _long_full(DGP2_TRUTH_GRID, paths)
    return SimulatedData(
        data=_long_from_mask(observed, DGP2_TRUTH_GRID, paths, "y"),
        truth=truth,
        labels=None,
        time_range=(DGP2_KEEP_FROM, DGP2_HORIZON),
        truth_noiseless=truth,
        subject_params=_params({"theta": theta, "n_draw": n_draw}),
        name="dgp2",
    )


# --------------------------------------------------------------------------- DGP 3


def dgp3_curves(t: np.ndarray, beta1: np.ndarray, beta2: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """DGP 3 noiseless curves ``beta1 cos(pi w1 t) + beta2 cos(pi w2 t)``.

    Parameters
    ----------
    t : ndarray, shape (G,)
    beta1, beta2, w1, w2 : ndarray, shape (N,)

    Returns
    -------
    ndarray, shape (N, G)
    """
    t = np.asarray(t, dtype=float)[None, :]
    return beta1[:, None] * np.cos(np.pi * w1[:, None] * t) + beta2[:, None] * np.cos(np.pi * w2[:, None] * t)


def dgp3(random_state: RandomState = None, n_subjects: int = 120) -> SimulatedData:
    """DGP 3: sums of two cosines with 36 parameter combinations, noisy on a 40-point grid.

    ``beta1, beta2`` uniform on {1, 0.1}, ``w1`` on {1, 2, 3}, ``w2`` on {7, 8, 9},
    independently. On 40 equally spaced points of [0, 1] the curve is
    ``beta1 cos(pi w1 t) + beta2 cos(pi w2 t) + N(0, 0.1)`` (variance 0.1);
    each subject is observed at between 20 and 24 (inclusive, uniform) of the 40
    points, drawn without replacement.

    Parameters
    ----------
    random_state : None, int or numpy Generator
    n_subjects : int
        N.

    Returns
    -------
    SimulatedData
        ``truth`` is the noisy curve on all 40 points and ``truth_noiseless`` the
        curve without noise; ``labels`` is the combination index 0..35 (row of
        :data:`DGP3_COMBINATIONS`); ``subject_params`` has columns
        ``beta1, beta2, w1, w2``; ``time_range`` is (0, 1).
    """
    n = _check_n_subjects(n_subjects)
    rng = _rng(random_state)
    i_b1 = rng.integers(0, _DGP3_BETA.size, size=n)
    i_b2 = rng.integers(0, _DGP3_BETA.size, size=n)
    i_w1 = rng.integers(0, _DGP3_W1.size, size=n)
    i_w2 = rng.integers(0, _DGP3_W2.size, size=n)
    beta1, beta2, w1, w2 = _DGP3_BETA[i_b1], _DGP3_BETA[i_b2], _DGP3_W1[i_w1], _DGP3_W2[i_w2]
    label = ((i_b1 * _DGP3_BETA.size + i_b2) * _DGP3_W1.size + i_w1) * _DGP3_W2.size + i_w2
    clean = dgp3_curves(DGP3_GRID, beta1, beta2, w1, w2)
    noisy = clean + rng.normal(scale=np.sqrt(DGP3_NOISE_VAR), size=clean.shape)
    n_obs = rng.integers(DGP3_MIN_OBS, DGP3_MAX_OBS + 1, size=n)
    mask = _random_subset_mask(rng, n_obs, DGP3_GRID.size)
    return SimulatedData(
        data=_long_from_mask(mask, DGP3_GRID, noisy, "y"),
        truth=_long_full(DGP3_GRID, noisy),
        labels=_labels(label),
        time_range=(0.0, 1.0),
        truth_noiseless=_long_full(DGP3_GRID, clean),
        subject_params=_params({"beta1": beta1, "beta2": beta2, "w1": w1, "w2": w2}),
        name="dgp3",
    )


#: The generators by name.
DGPS = {"dgp1": dgp1, "dgp2": dgp2, "dgp3": dgp3}


# --------------------------------------------------------------------------- held-out split


def pspline_lines(
    random_state: RandomState = None, n_subjects: int = 200, n_obs: int = 25, n_basis: int = 30
) -> pd.DataFrame:
    """Curves that differ by a level and a trend around a rough mean curve: the P-spline covariance's slow mode.

    The mean curve is ``n_basis`` uniform cubic B-splines on [0, 1] in the smoothing basis of a second-order
    penalty: coefficients 1 and -0.5 on the line, N(0, 400 / lam_j) on the rough coordinates. Each subject
    adds a level and a trend (SD 0.3 each) and is seen at ``n_obs`` uniform times with noise SD 0.05. The
    subjects' rough deviations are zero, which pins each subject to the mean curve under mean-field
    coordinate ascent (:mod:`dmlmm.inference.translate`).

    Returns
    -------
    DataFrame, shape (n_subjects * n_obs, 3): subject, time, y.
    """
    from .basis import SplineBasis

    rng = _rng(random_state)
    basis = SplineBasis(n_basis, lower=0.0, upper=1.0, knots="uniform").fit()
    V, lam = basis.smoothing_basis(2)
    mu = np.concatenate(([1.0, -0.5], rng.normal(size=n_basis - 2) * np.sqrt(400.0 / lam[2:])))
    t = rng.uniform(0, 1, (n_subjects, n_obs))
    dev = rng.normal(size=(n_subjects, 2)) * 0.3
    f = (basis.transform(t.ravel()) @ V @ mu).reshape(n_subjects, n_obs) + dev[:, :1] + dev[:, 1:] * (t - 0.5)
    y = f + 0.05 * rng.normal(size=f.shape)
    return pd.DataFrame({"subject": np.repeat(np.arange(n_subjects), n_obs), "time": t.ravel(), "y": y.ravel()})


def heldout_mask(codes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Which rows to hold out: per group ``min(round(fraction * n_i), n_i - 1)`` rows at random.

    ``round`` is :func:`numpy.rint` (halves go to the even integer).

    Parameters
    ----------
    codes : ndarray of int, shape (n,)
        Group index 0..N-1 of each row (any order).
    fraction : float
        In [0, 1).
    rng : numpy Generator

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    return _mask_from_draws(codes, fraction, rng.random(codes.shape[0]))


def _mask_from_draws(codes: np.ndarray, fraction: float, draws: np.ndarray) -> np.ndarray:
    """:func:`heldout_mask` given the rows' uniform draws (n,): within each group, the rows of the
    smallest draws are held out, so a group's rows depend only on its own draws."""
    n = codes.shape[0]
    counts = np.bincount(codes)
    n_hold = np.minimum(np.rint(fraction * counts).astype(np.int64), counts - 1)
    order = np.lexsort((draws, codes))  # by group, random within group
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[codes[order]]
    return rank < n_hold[codes]


def split_heldout(
    data: pd.DataFrame,
    fraction: float = 0.2,
    random_state: RandomState = None,
    subject: str = "subject",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split observations into a training and a held-out part, per subject.

    Each subject with ``n_i`` rows has ``min(round(fraction * n_i), n_i - 1)``
    rows, chosen uniformly at random, held out, so at least one row always stays
    in training (``round`` sends halves to the even integer, as ``numpy.rint``).

    Parameters
    ----------
    data : DataFrame, shape (n, ...), or dask DataFrame
        Long data with a ``subject`` column. A Dask frame (``subject`` a column or its index, each
        subject's rows in one partition) is split lazily, partition by partition, into the rows that
        the split of ``data.compute()`` gives (one pass reads the partitions' lengths).
    fraction : float
        Target held-out fraction, in [0, 1).
    random_state : None, int or numpy Generator
    subject : str
        Name of the subject column.

    Returns
    -------
    train, heldout : DataFrame (dask DataFrames for a Dask frame)
        Complementary subsets of the rows of ``data``, in their original order
        and with their original index.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    if is_dask_collection(data):
        return _split_heldout_dask(data, fraction, _rng(random_state), subject)
    if subject not in data.columns:
        raise ValueError(f"no column {subject!r} in data (columns: {list(data.columns)})")
    held = heldout_mask(_subject_codes(data[subject], subject), fraction, _rng(random_state))
    return data.loc[~held], data.loc[held]


def _subject_codes(labels: pd.Series | pd.Index, subject: str) -> np.ndarray:
    """Group index 0..N-1 of each row; ValueError naming the column where a label is missing."""
    codes, _ = pd.factorize(labels, use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError(f"column {subject!r} has missing values")
    return codes.astype(np.int64)


def _split_heldout_dask(data, fraction: float, rng: np.random.Generator, subject: str):
    """:func:`split_heldout` of a Dask frame, lazily, partition by partition: the rows that the in-memory
    split of ``data.compute()`` (partitions in order, ``subject`` a column or the index) holds out, provided
    each subject's rows lie in one partition.

    Each partition draws its rows' uniforms from ``rng``'s stream advanced to the partition's first row, so
    the draws are those of one ``rng.random(n)`` over all rows; ``rng`` itself is advanced past them as
    the in-memory split advances it. Reads the partitions' lengths once.
    """
    if subject not in data.columns and data.index.name != subject:
        raise ValueError(f"no column {subject!r} in data (columns: {list(data.columns)})")
    bits = rng.bit_generator
    if not isinstance(bits, (np.random.PCG64, np.random.PCG64DXSM)):  # advance(k) skips k doubles exactly
        raise ValueError(f"random_state: a Dask frame's split draws each partition's rows from a stream advanced "
                         f"to its first row, which a {type(bits).__name__} generator cannot do draw for draw; pass "
                         f"an int or a PCG64 Generator (numpy.random.default_rng)")
    lengths = np.asarray(data.map_partitions(len).compute(), dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    state = bits.state
    bits.advance(int(lengths.sum()))  # as the in-memory split's draw of every row
    halves = [data.map_partitions(_partition_split, fraction, type(bits), state, offsets, subject, held,
                                  meta=data._meta) for held in (False, True)]
    return halves[0], halves[1]


def _partition_split(part: pd.DataFrame, fraction: float, kind: type, state: dict, offsets: np.ndarray,
                     subject: str, held: bool, partition_info: dict | None = None) -> pd.DataFrame:
    """The training (``held`` False) or held-out rows of one partition of :func:`_split_heldout_dask`."""
    if partition_info is None:  # dask's metadata call on an empty frame; rows without their position: never
        if len(part):
            raise RuntimeError("dask did not say which partition this is (partition_info): the held-out split "
                               "cannot place its rows in the random stream")
        return part
    bits = kind()
    bits.state = state
    bits.advance(int(offsets[partition_info["number"]]))
    labels = part[subject] if subject in part.columns else part.index
    mask = _mask_from_draws(_subject_codes(labels, subject), fraction, np.random.Generator(bits).random(len(part)))
    return part.loc[mask] if held else part.loc[~mask]
