"""The worker side of a Dask fit: one partition's data, statistics, local step and sums.

Everything here is plain numpy / pandas, run by the workers on one partition at
a time (a *shard*: the subjects of one partition and their sufficient
statistics). Nothing here imports dask. The driver (:mod:`.stats`) only ever
receives the small objects: :class:`PartitionSummary`, one-row statistic totals,
:class:`InitSums` and :class:`StepSums`, whose sizes do not grow with the
number of subjects (except the labels and the starting estimates, see
:mod:`.fit`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import pandas as pd

from ..columns import ColumnNames
from ..covariates import CovariateEncoding
from ..data import DroppedRows, Longitudinal, RowsDroppedWarning
from ..sufficient import SufficientStats
from ..exceptions import DataError
from ..inference.local import NoiseMoments, local_step
from ..inference.subject_scales import GroupMoments, SubjectScales, weighted_stats, with_scales
from ..models.membership_design import baseline_rows
from ..models.starting import ridge_estimates, ridge_penalties
from ..priors.membership import MembershipPathWeights, first_layer_resp, membership_sums
from ..models.design import LongitudinalDesign, repeated_times
from ..standardise import FAR_SHOWN, NoiseSums, far_given, noise_sums
from ..prediction import fixed_effects_information
from ..priors.base import PathPrior, PointMixture
from ..response_transform import forward

__all__ = [
    "PartitionSummary", "Shard", "StepGlobals", "StepSums", "ShardLocal", "InitSums",
    "read_partition", "summarize", "build_shard", "partition_baseline", "without_subjects", "first_layer_proba",
    "totals", "shard_ridge", "init_sums",
    "shard_step", "step_sums", "StepFailure", "raise_failures", "time_histogram", "add_all", "FarRows", "far_rows",
]


# --------------------------------------------------------------------------- reading


#: One read partition: its rows as Longitudinal (None when none is left), the rows read, and the record of the
#: rows ``dropna`` dropped (None when none was): :func:`read_partition`.
Read = tuple[Longitudinal | None, int, DroppedRows | None]

#: Quantiles of the response each partition reports, for the pooled median and median absolute
#: deviation of the dominated-response check (:func:`dmlmm.standardise.checked_scale`).
SKETCH_SIZE = 513


@dataclass(frozen=True)
class PartitionSummary:
    """What the driver needs from one partition to learn the design.

    Attributes
    ----------
    n_rows : int, rows read (``dropped`` says which were dropped for missing values, ``dropna``).
    subjects : Index (n,), the partition's subject labels.
    n_obs : int, observations kept.
    y_mean, y_m2, y_absmax : float, mean, sum of squared deviations and largest |y|.
    y_m2_rel : float, the sum of squared deviations in units of ``y_absmax`` (it does not underflow).
    y_sketch : (Q,) the response's quantiles at Q equally spaced probabilities, each standing for
        ``n_obs / Q`` observations (all values, sorted, when there are at most :data:`SKETCH_SIZE`).
    t_min, t_max : float.
    times : (T,) its distinct times, or None when not asked for.
    cov_mean, cov_m2 : (P,) the encoded covariates' means and sums of squared deviations.
    few_times : (T,) its distinct times when at most :data:`FEW_TIMES` of them, else None;
    repeats : whether a subject is observed twice at one time (both for
        :func:`~dmlmm.models.design.noise_confounded`).
    noise : the residuals left within subjects (:func:`~dmlmm.standardise.noise_sums`).
    y_distinct : (k,) its distinct response values, at most three (the pooled ones tell a response with two
        values, :func:`~dmlmm.standardise.warn_binary_response`).
    dropped : the rows ``dropna`` dropped (:class:`~dmlmm.data.DroppedRows`), or None.
    """

    n_rows: int
    subjects: pd.Index
    n_obs: int
    y_mean: float
    y_m2: float
    y_absmax: float
    y_m2_rel: float
    y_sketch: np.ndarray
    t_min: float
    t_max: float
    times: np.ndarray | None
    cov_mean: np.ndarray
    cov_m2: np.ndarray
    few_times: np.ndarray | None = None
    repeats: bool = False
    noise: NoiseSums = NoiseSums()
    y_distinct: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dropped: DroppedRows | None = None


#: Most distinct times a partition reports for the check whether the residual variance is identified
#: against a full covariance (:func:`~dmlmm.models.design.noise_confounded`; more than a basis has
#: functions settle it).
FEW_TIMES = 1000


def read_partition(
    frame: pd.DataFrame, columns: ColumnNames, encoding: CovariateEncoding, dropna: bool
) -> Read:
    """One partition as a :class:`~dmlmm.data.Longitudinal` (None if it holds no row), its row count and the
    record of the rows ``dropna`` dropped (None if none), which the driver gathers into one warning.

    A subject column held as the index (``ddf.set_index(subject)``) is taken from there; its rows have no
    labels of their own then, so the record names the subjects left with no row but not the rows.
    """
    by_index = columns.subject not in frame.columns and frame.index.name == columns.subject
    if by_index:
        frame = frame.reset_index()
    if len(frame) == 0:
        return None, 0, None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore", UserWarning)  # said on the workers, none of these would reach the user
        warnings.simplefilter("always", RowsDroppedWarning)  # the driver warns once, for all partitions
        try:
            data = Longitudinal.from_frame(
                frame, columns.subject, columns.time, columns.response, encoding=encoding, dropna=dropna
            )
        except DataError as err:
            if not (dropna and "no rows are left" in str(err)):
                raise
            data = None
    dropped = next((w.message.dropped for w in caught if issubclass(w.category, RowsDroppedWarning)), None)
    for w in caught:  # any other warning (not a UserWarning: none is expected here) as before
        if not issubclass(w.category, RowsDroppedWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if dropped is not None and by_index:
        dropped = replace(dropped, by_column={c: (n, []) for c, (n, _) in dropped.by_column.items()})
    return data, len(frame), dropped


def transform_read(read: Read, transform: str | None, column: str) -> Read:
    """A read partition with its response on the scale ``transform`` (:func:`dmlmm.response_transform.forward`,
    whose DataError names the column and the values outside the transform's domain)."""
    data, n_rows, dropped = read
    if data is None or transform is None:
        return read
    return replace(data, response=forward(data.response, transform, column)), n_rows, dropped


def summarize(read: Read, distinct_times: bool) -> PartitionSummary:
    """The partition's :class:`PartitionSummary` (moments by two passes over its rows)."""
    data, n_rows, dropped = read
    if data is None:
        P = 0
        return PartitionSummary(n_rows, pd.Index([]), 0, 0.0, 0.0, 0.0, 0.0, np.zeros(0), np.inf, -np.inf,
                                np.zeros(0) if distinct_times else None, np.zeros(P), np.zeros(P), np.zeros(0), False,
                                dropped=dropped)
    y, t, cov = data.response, data.time, data.covariates
    y_absmax = float(np.max(np.abs(y)))
    with np.errstate(over="ignore", invalid="ignore"):
        y_mean = float(np.mean(y))
        y_m2 = float(np.sum((y - y_mean) ** 2))
        y_m2_rel = float(np.sum(((y - y_mean) / y_absmax) ** 2)) if y_absmax > 0 else 0.0
    if len(y) <= SKETCH_SIZE:
        sketch = np.sort(y)
    else:
        sketch = np.quantile(y, np.linspace(0.0, 1.0, SKETCH_SIZE))
    cov_mean = cov.mean(axis=0)
    distinct = np.unique(t)
    return PartitionSummary(
        n_rows=n_rows,
        subjects=data.subjects,
        n_obs=data.n_obs,
        y_mean=y_mean,
        y_m2=y_m2,
        y_absmax=y_absmax,
        y_m2_rel=y_m2_rel,
        y_sketch=sketch,
        t_min=float(t.min()),
        t_max=float(t.max()),
        times=distinct if distinct_times else None,
        cov_mean=cov_mean,
        cov_m2=((cov - cov_mean) ** 2).sum(axis=0),
        few_times=distinct if len(distinct) <= FEW_TIMES else None,
        repeats=repeated_times(data.codes, t),
        noise=noise_sums(y, data.codes, t),
        y_distinct=np.unique(y)[:3],
        dropped=dropped,
    )


@dataclass(frozen=True)
class FarRows:
    """A partition's response values that :func:`~dmlmm.standardise.far_given` calls out: how many, and the
    first ``len(values)`` of them in row order with their subjects and times (as the in-memory warning names them)."""

    count: int
    values: np.ndarray
    subjects: list
    times: np.ndarray


def far_rows(read: Read, centre: float, spread: float, log_centre_spread: tuple[float, float] | None,
             first: int = FAR_SHOWN) -> FarRows:
    """The partition's far response values given the whole response's robust centre and spread (and its log's,
    or None), its first ``first`` in row order (:func:`dmlmm.standardise.warn_far_values`)."""
    data = read[0]
    if data is None:
        return FarRows(0, np.zeros(0), [], np.zeros(0))
    rows = np.flatnonzero(far_given(data.response, centre, spread, log_centre_spread))
    shown = rows[:first]
    return FarRows(len(rows), data.response[shown], [data.subjects[c] for c in data.codes[shown]], data.time[shown])


def time_histogram(read: Read, breaks: np.ndarray) -> np.ndarray:
    """Observations of the partition in each interval of ``breaks`` (as ``np.histogram``)."""
    data = read[0]
    if data is None:
        return np.zeros(len(breaks) - 1, dtype=int)
    return np.histogram(data.time, bins=breaks)[0]


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Shard:
    """The subjects of one partition and their sufficient statistics (standardised scale).

    Attributes
    ----------
    subjects : Index (n,), in the statistics' order (sorted within the partition).
    stats : SufficientStats of the n subjects.
    """

    subjects: pd.Index
    stats: SufficientStats


def build_shard(read: Read, membership: np.ndarray | None = None, *, design: LongitudinalDesign) -> Shard | None:
    """The partition's :class:`Shard` (None for a partition without subjects), with its subjects' membership
    covariates ``membership`` (n, Q) attached to their statistics (in the shard's order), if any."""
    data = read[0]
    if data is None:
        return None
    return Shard(data.subjects, design.stats(data).with_membership(membership))


def partition_baseline(frame: pd.DataFrame, subject: str, columns: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    """A raw partition's membership covariates, one row per subject (:func:`~dmlmm.models.membership_design.baseline_rows`:
    NaN where a subject has no value), and each subject's number of rows (for the warning of subjects dropped
    with ``dropna``)."""
    if subject not in frame.columns and frame.index.name == subject:
        frame = frame.reset_index()
    rows = baseline_rows(frame, subject, columns)
    return rows, frame.groupby(subject, sort=False, observed=True).size().reindex(rows.index)


def without_subjects(frame: pd.DataFrame, subject: str, gone: list) -> pd.DataFrame:
    """A raw partition less the rows of the subjects ``gone`` (the subject column or the index)."""
    labels = frame[subject] if subject in frame.columns else frame.index
    return frame.loc[~np.asarray(labels.isin(gone))]


def first_layer_proba(local: "ShardLocal", first: np.ndarray) -> np.ndarray:
    """The shard's first-layer responsibilities (n, K_1) (``first`` (M,): each path's first-layer component)."""
    return first_layer_resp(local.resp, first)


def totals(shard: Shard) -> SufficientStats:
    """The shard's statistics summed over its subjects (one row)."""
    return shard.stats.total()


def shard_ridge(
    shard: Shard, pooled: tuple[np.ndarray, np.ndarray], penalty: float, roughness: np.ndarray | None
) -> np.ndarray:
    """The shard's starting per-subject estimates (n, D) (:func:`~dmlmm.models.starting.ridge_estimates`
    towards the pooled fit of all subjects)."""
    return ridge_estimates(shard.stats, penalty, roughness, pooled=pooled)


@dataclass(frozen=True)
class InitSums:
    """Sums over subjects that start the noise and fixed-effect factors from estimates b_hat.

    Attributes
    ----------
    n_obs, yty : float, sum n_i and sum y_i'y_i.
    xty_b : float, sum X_i'y_i . b_i;  bxtxb : float, sum b_i'X_i'X_i b_i.
    FtF : (P, P), Fty : (P,) sums;  XtF_b : (P,), sum F_i'X_i b_i.
    penalty : float, sum of the ridge fits' penalties (b_i - m)' P (b_i - m)
        (:func:`~dmlmm.models.starting.ridge_penalties`).
    """

    n_obs: float
    yty: float
    xty_b: float
    bxtxb: float
    FtF: np.ndarray
    Fty: np.ndarray
    XtF_b: np.ndarray
    penalty: float

    def __add__(self, other: "InitSums") -> "InitSums":
        return InitSums(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def init_sums(shard: Shard, b_hat: np.ndarray, ridge: tuple[np.ndarray, np.ndarray]) -> InitSums:
    """The shard's :class:`InitSums` for its estimates ``b_hat`` (n, D), the ridge fits of the prior
    ``ridge`` = (P (D,), m (D,)) (:func:`~dmlmm.models.starting.ridge_prior`)."""
    st = shard.stats
    return InitSums(
        n_obs=float(st.n_obs.sum()),
        yty=float(st.yty.sum()),
        xty_b=float(np.einsum("nd,nd->", st.Xty, b_hat)),
        bxtxb=float(np.einsum("nd,nde,ne->", b_hat, st.XtX, b_hat)),
        FtF=st.FtF.sum(axis=0),
        Fty=st.Fty.sum(axis=0),
        XtF_b=np.einsum("ndp,nd->p", st.XtF, b_hat),
        penalty=float(ridge_penalties(b_hat, *ridge).sum()),
    )


# --------------------------------------------------------------------------- the local step


@dataclass(frozen=True)
class StepGlobals:
    """What every shard's local step needs from the globals (broadcast once per iteration), and the
    driver's floating-point error state (``np.geterr()``: the engine raises on overflow at
    extrapolated points, and the workers must too)."""

    prior: PathPrior
    noise: NoiseMoments
    errstate: dict = field(default_factory=dict)
    groups: np.ndarray | None = None  # each path's noise group, for the residual scales' moments
    move_sums: bool = False  # the translation move's sums too (LocalResult.path_gram, path_xtf)
    membership: MembershipPathWeights | None = None  # the membership model, evaluated on the shard's covariates


@dataclass(frozen=True)
class StepSums:
    """Sums over a shard's subjects of everything the global updates need (shapes do not grow with n).

    Attributes
    ----------
    weight : (M,) sum_i r_ic;  first : (M, D);  second : (M, D, D)  (the PathMoments).
    path_quad, path_xty_b : (M,);  path_xtf_b : (M, P)  (as in LocalResult).
    log_evidence : float, sum_i of the subjects' local ELBO terms.
    n_obs, yty : (M,) sum_i r_ic n_i and sum_i r_ic y_i'y_i.
    Fty : (M, P) sum_i r_ic F_i'y_i;  FtF : (M, P, P) sum_i r_ic F_i'F_i.
    path_gram : (M, D, D);  path_xtf : (M, D, P)  (as in LocalResult: the translation move's; None unless
    the step was asked for them).
    membership_prec : (K_1 - 1, Q, Q);  membership_shift : (K_1 - 1, Q)  (the membership model's
    :func:`~dmlmm.priors.membership.membership_sums`; None without one).
    """

    weight: np.ndarray
    first: np.ndarray
    second: np.ndarray
    path_quad: np.ndarray
    path_xty_b: np.ndarray
    path_xtf_b: np.ndarray
    log_evidence: float
    n_obs: np.ndarray
    yty: np.ndarray
    Fty: np.ndarray
    FtF: np.ndarray
    path_gram: np.ndarray | None
    path_xtf: np.ndarray | None
    membership_prec: np.ndarray | None = None
    membership_shift: np.ndarray | None = None

    def __add__(self, other: "StepSums") -> "StepSums":
        def add(a, b):
            return None if a is None or b is None else a + b

        return StepSums(*(add(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))


@dataclass(frozen=True)
class ShardLocal:
    """One shard's local-step output: per-subject arrays (kept on the worker) and their sums.

    Attributes
    ----------
    resp : (n, M) q(c_i = c);  mean_b : (n, D) E_q[b_i];  sums : StepSums.
    scale_moments : GroupMoments of the shard's subjects (per noise group), with residual scales only.
    """

    resp: np.ndarray
    mean_b: np.ndarray
    sums: StepSums
    scale_moments: GroupMoments | None = None


@dataclass(frozen=True)
class StepFailure:
    """A shard's local step that the arithmetic could not hold (as :class:`ShardLocal`'s place).

    The engine expects this at extrapolated points (it rejects them and takes the plain step), so the
    worker returns it instead of raising, which distributed would log as a failed task; the driver
    raises ``kind`` with ``message`` (:func:`raise_failures`).

    Attributes
    ----------
    kind : "LinAlgError" or "FloatingPointError";  message : str.
    """

    kind: str
    message: str


def shard_step(
    shard: Shard,
    previous: ShardLocal | None,
    scales: SubjectScales | None,
    globals_: StepGlobals,
    hard_assignment: bool,
    threshold: float,
    moment_threshold: float,
) -> ShardLocal:
    """:func:`~dmlmm.inference.local.local_step` on the shard, restricted (unless ``previous`` is
    None) to the paths whose responsibility exceeded ``threshold`` in ``previous``; with its subjects'
    residual ``scales``, on their statistics weighted by E[1/v_i], as the in-memory engine's step
    (:func:`~dmlmm.inference.subject_scales.with_scales`)."""
    active = None if previous is None else previous.resp > threshold
    moments = None
    try:  # the driver's floating-point error state, as the in-memory step runs under it
        with np.errstate(**globals_.errstate):
            if scales is not None and not np.all(np.isfinite(scales.weight)):  # an extrapolation beyond the arithmetic
                raise FloatingPointError("the subjects' residual scales are not finite")
            st = shard.stats if scales is None else weighted_stats(shard.stats, scales.weight)
            offsets = psi = None
            if globals_.membership is not None:  # as the in-memory engine's membership_terms
                offsets, psi = globals_.membership.of(st.membership)
            loc = local_step(st, globals_.prior, globals_.noise, hard_assignment, active=active,
                             moment_threshold=moment_threshold, log_weight=offsets, move_sums=globals_.move_sums)
            if scales is not None:
                pp, noise = globals_.prior, globals_.noise
                log_evidence, moments = with_scales(loc.log_evidence, loc.resp, loc.mean_b, st, pp.precision, pp.shift,
                                                    noise.prec, noise.w_mean, scales, globals_.groups, moment_threshold)
                loc = replace(loc, log_evidence=log_evidence)
    except (np.linalg.LinAlgError, FloatingPointError) as err:
        return StepFailure(type(err).__name__, str(err))
    r = loc.resp
    sums = StepSums(
        weight=loc.moments.weight,
        first=loc.moments.first,
        second=loc.moments.second,
        path_quad=loc.path_quad,
        path_xty_b=loc.path_xty_b,
        path_xtf_b=loc.path_xtf_b,
        log_evidence=float(loc.log_evidence.sum()),
        n_obs=r.T @ st.n_obs,
        yty=r.T @ st.yty,
        Fty=r.T @ st.Fty,
        FtF=np.einsum("nc,npq->cpq", r, st.FtF),
        path_gram=loc.path_gram,
        path_xtf=loc.path_xtf,
    )
    if psi is not None:
        prec, shift = membership_sums(st.membership, first_layer_resp(r, globals_.membership.first), psi)
        sums = replace(sums, membership_prec=prec, membership_shift=shift)
    return ShardLocal(r, loc.mean_b, sums, moments)


def fixed_information(shard: Shard, local: ShardLocal, scales: SubjectScales | None, mix: PointMixture,
                      sigma2: np.ndarray) -> np.ndarray:
    """The shard's information about the fixed effects (P, P)
    (:func:`~dmlmm.prediction.fixed_effects_information` at its final responsibilities), each subject's
    at its expected residual scale with ``scales``."""
    st = shard.stats if scales is None else weighted_stats(shard.stats, scales.weight)
    return fixed_effects_information(st, mix, sigma2, local.resp)


def resp_change(previous: ShardLocal, local: ShardLocal) -> float:
    """The largest change of a responsibility on this shard (inf if the paths differ)."""
    if previous.resp.shape != local.resp.shape:
        return float("inf")
    return float(np.abs(local.resp - previous.resp).max(initial=0.0))


def step_sums(local: ShardLocal | StepFailure) -> StepSums | StepFailure:
    """The part of a shard's step that travels to the driver (a failure travels as it is)."""
    return local if isinstance(local, StepFailure) else local.sums


def raise_failures(parts: Sequence) -> None:
    """Raise the first :class:`StepFailure` among ``parts`` on the driver, as the in-memory step would have."""
    for p in parts:
        if isinstance(p, StepFailure):
            raise (np.linalg.LinAlgError if p.kind == "LinAlgError" else FloatingPointError)(p.message)


def add_all(parts: Sequence):
    """The sum of ``parts`` in their order (so that the result does not depend on arrival order)."""
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total
