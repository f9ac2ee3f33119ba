"""Reading a Dask frame into per-partition data on the workers, and learning the design from it.

The frame is long format (one row per observation). Every subject's rows must
lie in one partition (Parquet written by subject, ``ddf.set_index("subject")``
or ``ddf.shuffle(on="subject")``); a subject found in two partitions is an error
that names it. One pass over the partitions builds each one's
:class:`~dmlmm.data.Longitudinal` (kept on its worker until the statistics are
built) and a :class:`~dmlmm.distributed.shard.PartitionSummary`; the design
(spline knots, response and covariate standardisation) is then learned from the
combined summaries exactly as :meth:`LongitudinalDesign.learn` does from the
whole data: the same knots (from the distinct times), mean and standard
deviation (pooled by Chan's formula), checks and messages.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..basis import SplineBasis
from ..columns import ColumnNames
from ..covariates import CovariateEncoding, parse_covariates
from ..data import DroppedRows, RowsDroppedWarning
from ..exceptions import DataError, DataWarning
from ..models.design import LongitudinalDesign, fitted_basis, noise_confounded
from ..models.membership_design import (MembershipDesign, check_present, complete_rows, no_subject_left,
                                        unknown_baseline, unknown_baseline_message)
from ..standardise import (FAR_SHOWN, FAR_SPREADS, NoiseSums, check_noise_sums, checked_scale, dominated, far_message,
                           robust_centre_spread, shown_value, warn_binary_response)
from . import shard as sh

__all__ = ["DaskFrame", "learn_encoding", "combine_summaries", "PooledSummary", "membership_baseline"]


def learn_encoding(client: Any, ddf: Any, covariates: Any, time: str | None = None) -> CovariateEncoding:
    """The covariate coding of the whole frame; only non-numeric columns' levels are computed.

    ``covariates`` is a list of columns or a formula whose coding the levels fix
    (:meth:`CovariateEncoding.from_levels`).
    """
    present = list(ddf.columns) + ([ddf.index.name] if ddf.index.name is not None else [])
    formula, columns = parse_covariates(covariates, present)
    levels: dict = {}
    for c in columns:
        dtype = ddf._meta[c].dtype
        if c == time or (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
            levels[c] = None
            continue
        values = client.compute(ddf[c].dropna().unique()).result()
        levels.update(CovariateEncoding.learn(pd.DataFrame({c: pd.Series(np.asarray(values), dtype=dtype)}), [c]).levels)
    return CovariateEncoding.from_levels(columns, levels, formula, time)


@dataclass(frozen=True)
class PooledSummary:
    """The partitions' summaries combined (see :class:`~dmlmm.distributed.shard.PartitionSummary`).

    ``y_median`` and ``y_spread`` (:func:`~dmlmm.standardise.robust_centre_spread`: 1.4826 times the
    median absolute deviation, or of the deviations that are not 0 where that is 0) come from the pooled
    quantile sketches: exact when every partition holds at most ``SKETCH_SIZE`` observations, and
    otherwise within the sketches' resolution (enough for the dominated-response check, whose
    threshold is a ratio of 3e7, and the far-value warning, whose is 100 spreads). ``y_log_centre_spread``:
    the same of log y when every value is positive, else None. ``y_far`` is the observed value farthest
    from the median, ``y_min`` the smallest (both exact: a sketch holds its partition's extremes).
    ``y_distinct``: the distinct values, when there are at most two (else three or more of them).
    """

    n_rows: int
    n_obs: int
    y_mean: float
    y_sd: float
    y_absmax: float
    y_min: float
    y_median: float
    y_spread: float
    y_far: float
    t_min: float
    t_max: float
    times: np.ndarray | None
    cov_mean: np.ndarray
    cov_sd: np.ndarray
    few_times: np.ndarray | None = None  # all distinct times when at most shard.FEW_TIMES, else None
    repeats: bool = False  # a subject observed twice at one time
    noise: NoiseSums = NoiseSums()  # the residuals left within subjects, pooled (standardise.check_noise_sums)
    y_log_centre_spread: tuple[float, float] | None = None
    y_distinct: np.ndarray = field(default_factory=lambda: np.zeros(0))


def combine_summaries(parts: Sequence[sh.PartitionSummary], n_fixed: int) -> PooledSummary:
    """Pool the partitions' moments (Chan et al.'s parallel formula: M2 = sum M2_k + sum n_k (m_k - m)^2)."""
    full = [p for p in parts if p.n_obs > 0]
    n = np.array([p.n_obs for p in full], dtype=float)
    N = float(n.sum())
    ym = np.array([p.y_mean for p in full])
    y_mean = float(n @ ym / N)
    y_m2 = float(sum(p.y_m2 for p in full) + n @ (ym - y_mean) ** 2)
    if n_fixed:
        cm_k = np.stack([p.cov_mean for p in full])
        cov_mean = n @ cm_k / N
        cov_m2 = np.sum([p.cov_m2 for p in full], axis=0) + n @ (cm_k - cov_mean) ** 2
    else:
        cov_mean = cov_m2 = np.zeros(0)
    times = None if parts[0].times is None else np.unique(np.concatenate([p.times for p in parts]))
    few = None
    if all(p.few_times is not None for p in parts):
        few = np.unique(np.concatenate([p.few_times for p in parts]))
        few = few if len(few) <= sh.FEW_TIMES else None
    y_absmax = max(p.y_absmax for p in full)
    with np.errstate(over="ignore", invalid="ignore"):
        y_sd = float(np.sqrt(y_m2 / N))
    if y_sd == 0.0 and 0.0 < y_absmax < np.inf:  # squares of values below 1e-154 underflow: in units of y_absmax
        rel = np.array([p.y_absmax for p in full]) / y_absmax
        m2_rel = float(np.sum([p.y_m2_rel * r**2 for p, r in zip(full, rel)]) + n @ ((ym - y_mean) / y_absmax) ** 2)
        y_sd = y_absmax * float(np.sqrt(m2_rel / N))
    values = np.concatenate([p.y_sketch for p in full])
    weights = np.concatenate([np.full(len(p.y_sketch), p.n_obs / len(p.y_sketch)) for p in full])
    y_median, y_spread = robust_centre_spread(values, weights)
    log_cs = robust_centre_spread(np.log(values), weights) if values.min() > 0 else None
    return PooledSummary(
        n_rows=int(sum(p.n_rows for p in parts)),
        n_obs=int(N),
        y_mean=y_mean,
        y_sd=y_sd,
        y_absmax=y_absmax,
        y_min=float(values.min()),
        y_median=y_median,
        y_spread=y_spread,
        y_far=float(values[np.argmax(np.abs(values - y_median))]),
        t_min=min(p.t_min for p in full),
        t_max=max(p.t_max for p in full),
        times=times,
        cov_mean=cov_mean,
        cov_sd=np.sqrt(cov_m2 / N),
        few_times=few,
        repeats=any(p.repeats for p in parts),
        noise=_pooled_noise([p.noise for p in full], y_absmax, y_m2),
        y_log_centre_spread=log_cs,
        y_distinct=np.unique(np.concatenate([p.y_distinct for p in full]))[:3],
    )


def _pooled_noise(parts: Sequence[NoiseSums], scale: float, y_m2: float) -> NoiseSums:
    """The partitions' :class:`NoiseSums` in units of the largest |y| of all, added up (every subject's rows
    are in one partition); the total from the pooled sum of squares where it is finite."""
    if not 0.0 < scale < np.inf:
        return NoiseSums()
    own = [p.rescaled(scale) for p in parts if p.scale > 0]
    total = y_m2 / scale**2 if np.isfinite(y_m2) and y_m2 > 0 else sum(p.total for p in own)
    return NoiseSums(scale, total, sum(p.constant for p in own), sum(p.line for p in own),
                     any(p.lined for p in own), any(p.repeated for p in own))


def _check_columns(ddf: Any, columns: ColumnNames, covariates: Sequence[str]) -> None:
    present = list(ddf.columns) + ([ddf.index.name] if ddf.index.name is not None else [])
    needed = [columns.subject, columns.time, columns.response] + list(covariates)
    missing = [c for c in needed if c not in present]
    if missing:
        raise DataError(f"column(s) {missing} not found in the data; the columns are: {list(ddf.columns)}")
    dup = [c for c in set(needed) if needed.count(c) > 1]
    if dup:
        raise DataError(f"column(s) {dup} used for more than one role (subject/time/response/covariate)")


def membership_baseline(client: Any, ddf: Any, names: ColumnNames, columns: list[str], dropna: bool,
                        stacklevel: int = 2) -> tuple[Any, pd.DataFrame]:
    """The subjects' membership covariates, read from the raw partitions on the workers and gathered: one row per
    subject (index: subject, partition order; O(N Q) on the driver, as the starting estimates' O(N D)), each
    checked constant within its subject as in memory. With ``dropna`` the subjects whose covariates are missing
    at every visit are dropped, with the in-memory fit's warning (``stacklevel`` as seen from the caller), and
    the frame returned without their rows; else the frame as given (their missing values are an error once the
    fitted subjects are known, :func:`~dmlmm.models.membership_design.complete_rows`). ``names``: the subject, time
    and response columns, whose absence is the error the fit would give without membership covariates."""
    import dask

    _check_columns(ddf, names, [])
    subject = names.subject
    present = list(ddf.columns) + ([ddf.index.name] if ddf.index.name is not None else [])
    check_present(columns, present, list(ddf.columns))
    part = dask.delayed(sh.partition_baseline, pure=True)
    got = client.gather(client.compute([part(p, subject, columns) for p in ddf.to_delayed()]))
    check_one_partition_per_subject([r.index for r, _ in got], subject)
    rows = pd.concat([r for r, _ in got])
    if not dropna:
        return ddf, rows
    unknown, absent = unknown_baseline(rows.notna())
    if not unknown.any():
        return ddf, rows
    gone = rows.index[unknown]
    if unknown.all():
        raise no_subject_left(absent)
    n_rows = int(pd.concat([n for _, n in got]).to_numpy()[unknown].sum())
    warnings.warn(unknown_baseline_message(gone, n_rows, absent), UserWarning, stacklevel=stacklevel + 1)
    return ddf.map_partitions(sh.without_subjects, subject, list(gone), meta=ddf._meta), rows.loc[~unknown]


def check_one_partition_per_subject(parts: Sequence[pd.Index], subject: str) -> pd.Index:
    """All subject labels (partition order) from each partition's distinct labels ``parts``; an error naming
    the subjects found in several partitions."""
    nonempty = [p for p in parts if len(p)]
    labels = (nonempty[0].append(nonempty[1:]) if nonempty else pd.Index([])).rename(subject)
    if labels.has_duplicates:
        dup = labels[labels.duplicated()].unique()
        where = {s: [k for k, p in enumerate(parts) if s in p] for s in dup[:3]}
        detail = "; ".join(f"subject {s!r} in partitions {k}" for s, k in where.items())
        raise DataError(
            f"{len(dup)} subject(s) have rows in more than one partition ({detail}"
            f"{' ...' if len(dup) > 3 else ''}): each subject's rows must lie in one partition. "
            f"Repartition by subject first, e.g. ddf = ddf.shuffle(on='{subject}') or ddf.set_index('{subject}'), "
            "or write the Parquet files partitioned by subject"
        )
    return labels


class DaskFrame:
    """A Dask frame read onto the workers: one :class:`~dmlmm.data.Longitudinal` per partition.

    Attributes
    ----------
    client : distributed.Client
    columns : ColumnNames;  encoding : CovariateEncoding
    reads : list of futures of ``(Longitudinal or None, rows, DroppedRows or None)``, one per partition.
    summaries : list of PartitionSummary (on the driver: small, but with the subject labels).
    subjects : Index (N,), every subject, partition by partition.
    membership : MembershipDesign or None, and membership_Z : (N, Q) or None, the membership covariates of
        ``subjects`` (:meth:`learn_membership`), which every shard built gets for its subjects.
    """

    membership: MembershipDesign | None = None
    membership_Z: np.ndarray | None = None

    def __init__(self, client: Any, ddf: Any, columns: ColumnNames, covariates: Sequence[str] | None,
                 dropna: bool, distinct_times: bool) -> None:
        import dask

        present = list(ddf.columns) + ([ddf.index.name] if ddf.index.name is not None else [])
        formula, cov_columns = parse_covariates(covariates, present)
        _check_columns(ddf, columns, [c for c in cov_columns if not (formula is not None and c == columns.time)])
        self.client = client
        self.columns = columns
        self.encoding = learn_encoding(client, ddf, covariates, columns.time)
        read = dask.delayed(sh.read_partition, pure=True)
        self.reads = client.compute([read(p, columns, self.encoding, dropna) for p in ddf.to_delayed()])
        self.summaries = client.gather(client.map(sh.summarize, self.reads, distinct_times=distinct_times, pure=False))
        total_rows = sum(s.n_rows for s in self.summaries)
        if total_rows == 0:
            raise DataError("the data frame is empty (0 rows): there is nothing to fit")
        self.pooled = combine_summaries(self.summaries, len(self.encoding.names))
        dropped = [s.dropped for s in self.summaries if s.dropped is not None]
        if dropped:  # one warning for all partitions, in the in-memory fit's words
            warnings.warn(RowsDroppedWarning(DroppedRows.combine(dropped, total_rows)), stacklevel=4)
        if self.pooled.n_obs == 0:
            raise DataError("no rows are left after dropping rows with missing values")
        self.subjects = check_one_partition_per_subject([p.subjects for p in self.summaries], columns.subject)

    def learn_membership(self, baseline: pd.DataFrame) -> None:
        """The membership design and Z of the fitted subjects from their baseline rows (:func:`membership_baseline`),
        as :meth:`MembershipDesign.learn` in memory (its errors: a subject without a value, a covariate
        constant over the subjects)."""
        cols = list(baseline.columns)
        self.membership, self.membership_Z = MembershipDesign.learn_rows(complete_rows(baseline, self.subjects), cols)

    def on_scale(self, transform: str | None) -> "DaskFrame":
        """This frame with its response on the scale ``transform`` (:mod:`dmlmm.response_transform`): the
        partitions are transformed on the workers and summarised again. A copy: building its shards
        releases its own rows, not this frame's (the next scale reads them)."""
        other = copy.copy(self)
        if transform is not None:
            client = self.client
            other.reads = client.map(sh.transform_read, self.reads, transform=transform,
                                     column=self.columns.response, pure=False)
            other.summaries = client.gather(client.map(sh.summarize, other.reads, distinct_times=False, pure=False))
            other.pooled = replace(combine_summaries(other.summaries, len(self.encoding.names)), times=self.pooled.times)
        return other

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    def warn_response(self, stacklevel: int = 2) -> None:
        """The in-memory fit's warnings about the response on the data's scale
        (:func:`~dmlmm.standardise.warn_binary_response`, :func:`~dmlmm.standardise.warn_far_values`), from the
        pooled summaries and, where a value may be far, one more pass over the partitions that returns only
        the far values' count and the first :data:`~dmlmm.standardise.FAR_SHOWN` (in partition order). ``stacklevel``: the warnings' as seen
        from the caller (2: the caller's caller)."""
        pooled, name = self.pooled, self.columns.response
        if len(pooled.y_distinct) == 2:
            warn_binary_response(pooled.y_distinct, name, stacklevel=stacklevel + 2)
        centre, spread = pooled.y_median, pooled.y_spread
        if (pooled.n_obs < 5 or not abs(pooled.y_far - centre) > FAR_SPREADS * spread
                or dominated(pooled.y_sd, spread)):  # none far, or the standardisation's DataError names them
            return
        parts = self.client.gather(self.client.map(sh.far_rows, self.reads, centre=centre, spread=spread,
                                                   log_centre_spread=pooled.y_log_centre_spread, pure=False))
        count = sum(p.count for p in parts)
        if not count:
            return
        group = self.columns.subject
        shown = [shown_value(v, [f"{group} {s}", f"time {t:g}"])
                 for p in parts for v, s, t in zip(p.values, p.subjects, p.times)][:FAR_SHOWN]
        warnings.warn(far_message(name, count, shown, centre, spread), DataWarning, stacklevel=stacklevel + 1)

    def learn_design(self, basis: SplineBasis | None, smoothing: int | None,
                     transform: str | None = None) -> LongitudinalDesign:
        """The design :meth:`LongitudinalDesign.learn` would learn from the whole frame, whose response
        is on the scale ``transform`` (:meth:`on_scale`)."""
        pooled = self.pooled
        basis = self.fitted_basis(basis)
        response = self.columns.response
        scale = checked_scale(pooled.y_sd, n=pooled.n_obs, biggest=pooled.y_absmax, centre=pooled.y_median,
                              spread=pooled.y_spread, far=pooled.y_far, name=response)
        if transform is not None:  # as LongitudinalDesign.learn; the data's own scale is checked by fit_dask
            check_noise_sums(pooled.noise, response)
        cm, cs = pooled.cov_mean, pooled.cov_sd
        names = list(self.encoding.names)
        const = [n for n, m, s in zip(names, cm, cs) if s <= 1e-12 * max(1.0, abs(m))]
        if const:
            raise DataError(f"covariate(s) {const} are constant across all rows; remove them (they duplicate the curve's level)")
        rotation = roughness = None
        if smoothing is not None:
            rotation, roughness = basis.smoothing_basis(int(smoothing))
        design = LongitudinalDesign(basis, self.columns, self.encoding, pooled.y_mean, scale, cm, cs, rotation,
                                    roughness, None if smoothing is None else int(smoothing), transform=transform)
        design.check_identifiable(self._occupied(design))
        return design

    def fitted_basis(self, basis: SplineBasis | None) -> SplineBasis:
        """A copy of ``basis`` (default ``SplineBasis()``) fitted as :meth:`LongitudinalDesign.learn` fits it on
        the whole frame (unless it is fitted already)."""
        pooled = self.pooled
        return fitted_basis(basis, pooled.times if pooled.times is not None else np.array([pooled.t_min, pooled.t_max]))

    def noise_confounded(self, basis: SplineBasis) -> bool:
        """:func:`~dmlmm.models.design.noise_confounded` for the whole frame under the fitted ``basis``."""
        return noise_confounded(basis, self.pooled.few_times, self.pooled.repeats)

    def _occupied(self, design: LongitudinalDesign) -> SimpleNamespace:
        """A stand-in for the data in :meth:`LongitudinalDesign.check_identifiable`: one time in each
        occupied knot interval (only without a smoothness prior: computed from the partitions)."""
        times = np.array([self.pooled.t_min, self.pooled.t_max])
        if design.smoothing is None:
            b = design.basis
            breaks = np.unique(np.clip(b.knots_, b.lower_, b.upper_))
            counts = np.sum(self.client.gather(self.client.map(sh.time_histogram, self.reads, breaks=breaks, pure=False)), axis=0)
            mids = 0.5 * (breaks[:-1] + breaks[1:])
            times = mids[counts > 0]
        return SimpleNamespace(time=times, covariates=np.zeros((0, design.n_fixed)), n_obs=self.pooled.n_obs)

    def shards(self, design: LongitudinalDesign) -> list:
        """Futures of the partitions' :class:`~dmlmm.distributed.shard.Shard` (partitions without rows
        left out); the rows themselves are released."""
        kept = [k for k, s in enumerate(self.summaries) if s.n_obs > 0]
        keep = [self.reads[k] for k in kept]
        design_f = self.client.scatter(design, broadcast=True, hash=False)
        members = [None] * len(keep)
        if self.membership_Z is not None:  # each shard's rows of Z (the shards' subjects are self.subjects in order)
            ends = np.cumsum([len(self.summaries[k].subjects) for k in kept])
            members = self.client.scatter(np.split(self.membership_Z, ends[:-1]), hash=False)
        out = self.client.map(sh.build_shard, keep, members, design=design_f, pure=False)
        self.client.gather(self.client.map(_n_subjects, out, pure=False))  # built (errors surface here)
        self.reads = []
        return out


def _n_subjects(shard: sh.Shard) -> int:
    return len(shard.subjects)
