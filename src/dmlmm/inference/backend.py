"""Where an iteration's per-subject work runs: on in-memory statistics, or on a statistics backend.

:func:`~dmlmm.inference.engine.run_vi` touches per-subject data in four places
only: the local step, the choice of the paths open to the next (restricted)
local step, and two responsibility-weighted sums over subjects that the
fixed-effect and noise updates need. Each goes through one function here. With
in-memory :class:`~dmlmm.sufficient.SufficientStats` they do exactly what the engine
did inline; any other ``stats`` object is a *backend* that keeps the subjects
elsewhere (for example on Dask workers, :class:`dmlmm.distributed.DaskStats`)
and implements :class:`StatsBackend`. The global updates, the ELBO, starts,
delete moves and pruning stay the same code for both.

Subject-level residual scales (:mod:`dmlmm.inference.subject_scales`) are per-subject too: in
memory ``params.scales`` is a :class:`~dmlmm.inference.subject_scales.SubjectScales`; a backend
that supports them (:class:`ScalesBackend`) keeps each subject's q(v_i) with its statistics and
gives the engine a handle (:class:`RemoteScales`) with ``nu``, the scales' ELBO term and the
SQUAREM arithmetic done where they are.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..sufficient import SufficientStats
from ..priors.base import PathPrior
from ..priors.membership import MembershipPathWeights, first_layer_resp, membership_sums
from .local import NoiseMoments, local_step
from .noise import path_rss
from .subject_scales import SubjectScales, half_rss, scales_elbo, update_scales, weighted_stats

__all__ = ["StatsBackend", "ScalesBackend", "RemoteScales", "run_local_step", "active_paths", "fixed_sums",
           "residual_sums", "resp_change", "membership_sums_of", "supports_scales", "weighted_by", "updated_scales",
           "scales_term", "total_obs"]


class StatsBackend(Protocol):
    """Per-subject statistics kept outside this process, with the reductions the engine needs.

    ``local_step`` returns an object with the attributes of
    :class:`~dmlmm.inference.local.LocalResult` that are sums over subjects (``moments``,
    ``path_quad``, ``path_xty_b``, ``path_xtf_b``) and ``log_evidence``, an array whose sum
    is the sum over subjects; the per-subject outputs stay with the backend. With ``membership`` (the
    membership model's :class:`~dmlmm.priors.membership.MembershipPathWeights`) the step evaluates it on each
    subject's covariates, held with its statistics, and its result has ``membership_sums``
    (:func:`~dmlmm.priors.membership.membership_sums` over all subjects).
    """

    @property
    def n_subjects(self) -> int: ...

    @property
    def dim_random(self) -> int: ...

    @property
    def dim_fixed(self) -> int: ...

    def local_step(
        self, prior: PathPrior, noise: NoiseMoments, hard_assignment: bool = False,
        active: Any = None, moment_threshold: float = 1e-12, move_sums: bool = False,
        membership: MembershipPathWeights | None = None,
    ) -> Any: ...

    def active_paths(self, local: Any, threshold: float) -> Any: ...

    def resp_change(self, previous: Any, local: Any) -> float: ...

    def total_obs(self) -> int: ...

    def fixed_sums(self, local: Any, s_path: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def path_rss(self, local: Any, w_mean: np.ndarray, w_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class RemoteScales(Protocol):
    """q(v_i) of subjects kept by a backend: what the engine reads, and SQUAREM's arithmetic on them.

    ``squarem_norms(s0, s1)`` on the third iterate ``s2``: the scales' part of SQUAREM's ``|r|^2`` and
    ``|v|^2`` (:func:`~dmlmm.accel.squarem_point`) in the unconstrained coordinates (log shape, log rate);
    ``squarem_point(s0, s1, step)``: the extrapolated scales, with ``s2``'s nu (a value beyond what the
    arithmetic holds makes the next local step raise FloatingPointError, which rejects the extrapolation)."""

    df: float
    elbo: float  # sum_i E_q[log IG(v_i; nu/2, nu/2)] + H[q(v_i)]

    def squarem_norms(self, s0: Any, s1: Any) -> tuple[float, float]: ...

    def squarem_point(self, s0: Any, s1: Any, step: float) -> Any: ...


class ScalesBackend(StatsBackend, Protocol):
    """A backend that keeps subject-level residual scales with its subjects.

    ``weighted(scales, groups)``: the statistics as the local step and the global updates see them (each subject's
    weighted by E[1/v_i]; its local step also shifts the log evidence by ``-n_i/2 E[log v_i]`` and keeps
    the subjects' moments per noise group, :func:`~dmlmm.inference.subject_scales.with_scales`);
    ``update_scales(scales, local, w_mean, w_cov, noise_prec, learn_df)``: the optimal q(v) (and nu) after
    a local step, as :func:`updated_scales` in memory."""

    def weighted(self, scales: RemoteScales, groups: np.ndarray | None) -> StatsBackend: ...

    def update_scales(self, scales: RemoteScales, local: Any, w_mean: np.ndarray, w_cov: np.ndarray,
                      noise_prec, learn_df: bool) -> RemoteScales: ...


def supports_scales(stats: SufficientStats | StatsBackend) -> bool:
    """Whether ``stats`` can hold subject-level residual scales (in memory, or a :class:`ScalesBackend`)."""
    return isinstance(stats, SufficientStats) or hasattr(stats, "update_scales")


def weighted_by(stats: SufficientStats | ScalesBackend, scales: SubjectScales | RemoteScales | None,
                groups: np.ndarray | None = None):
    """The statistics the local step and the global updates see: each subject's weighted by E[1/v_i] with
    subject-level residual scales, else as they are. ``groups`` (M,): each path's noise group, which a
    backend's step needs for the scales' moments (None: one group)."""
    if scales is None:
        return stats
    if isinstance(stats, SufficientStats):
        return weighted_stats(stats, scales.weight)
    return stats.weighted(scales, groups)


def updated_scales(stats: SufficientStats | ScalesBackend, scales: SubjectScales | RemoteScales, local,
                   w_mean: np.ndarray, w_cov: np.ndarray, noise_prec, learn_df: bool):
    """q(v) (and nu, with ``learn_df``) given a local step's q(b, c) (its ``scale_moments``, with the data's
    own statistics ``stats``), q(w)'s mean and covariance and E[1/sigma^2] of each noise group (a scalar for
    one shared variance)."""
    if isinstance(stats, SufficientStats):
        half = half_rss(stats, local.scale_moments, noise_prec, w_mean, w_cov)
        return update_scales(scales, stats.n_obs, half, learn_df)
    return stats.update_scales(scales, local, w_mean, w_cov, noise_prec, learn_df)


def scales_term(scales: SubjectScales | RemoteScales) -> float:
    """The scales' part of the ELBO (:func:`~dmlmm.inference.subject_scales.scales_elbo`)."""
    return scales_elbo(scales) if isinstance(scales, SubjectScales) else float(scales.elbo)


def run_local_step(
    stats: SufficientStats | StatsBackend,
    prior: PathPrior,
    noise: NoiseMoments,
    hard_assignment: bool = False,
    active: Any = None,
    moment_threshold: float = 1e-12,
    log_weight: np.ndarray | MembershipPathWeights | None = None,
    move_sums: bool = False,
):
    """:func:`~dmlmm.inference.local.local_step` where the statistics live (same arguments).

    ``log_weight``: the membership model's per-subject path weights (N, M) in memory; for a backend, the
    :class:`~dmlmm.priors.membership.MembershipPathWeights` that it evaluates where the subjects are
    (:func:`~dmlmm.inference.engine.membership_terms` gives the one or the other).
    """
    if isinstance(stats, SufficientStats):
        return local_step(stats, prior, noise, hard_assignment, active=active, moment_threshold=moment_threshold,
                          log_weight=log_weight, move_sums=move_sums)
    if log_weight is None:
        return stats.local_step(prior, noise, hard_assignment, active=active, moment_threshold=moment_threshold,
                                move_sums=move_sums)
    if not isinstance(log_weight, MembershipPathWeights):
        raise TypeError("a statistics backend's local step takes the membership model's MembershipPathWeights, "
                        "not per-subject weights")
    return stats.local_step(prior, noise, hard_assignment, active=active, moment_threshold=moment_threshold,
                            move_sums=move_sums, membership=log_weight)


def membership_sums_of(
    stats: SufficientStats | StatsBackend, local, psi: np.ndarray | None, first: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~dmlmm.priors.membership.membership_sums` over all subjects after the local step ``local``: from the
    covariates, first-layer responsibilities and expansion points ``psi`` (N, K_1 - 1) in memory (``first`` (M,):
    each path's first-layer component); a backend's step computed them where the subjects are."""
    if isinstance(stats, SufficientStats):
        return membership_sums(stats.membership, first_layer_resp(local.resp, first), psi)
    return local.membership_sums


def total_obs(stats: SufficientStats | StatsBackend) -> int:
    """All subjects' observations: summed here, or by the backend where the per-subject counts are held."""
    if isinstance(stats, SufficientStats):
        return int(stats.n_obs.sum())
    return stats.total_obs()


def active_paths(stats: SufficientStats | StatsBackend, local, threshold: float):
    """The (subject, path) pairs open to the next restricted local step: (N, M) bool in memory."""
    if isinstance(stats, SufficientStats):
        return local.resp > threshold
    return stats.active_paths(local, threshold)


def fixed_sums(stats: SufficientStats | StatsBackend, local, s_path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum_i s_i F_i'F_i (P, P) and sum_i s_i F_i'y_i (P,), with s_i = sum_c r_ic s_path_c.

    ``s_path`` (M,): E[1/sigma^2] of each path's noise factor.
    """
    if isinstance(stats, SufficientStats):
        s_subj = local.resp @ s_path  # (N,) E_q(c_i)[E[1/sigma^2_c]]
        return np.einsum("n,npq->pq", s_subj, stats.FtF), s_subj @ stats.Fty
    return stats.fixed_sums(local, s_path)


def residual_sums(
    stats: SufficientStats | StatsBackend, local, w_mean: np.ndarray, w_cov: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per path, the expected residual sum of squares and the number of observations, both (M,)
    (:func:`~dmlmm.inference.noise.path_rss`)."""
    if isinstance(stats, SufficientStats):
        return path_rss(stats, local, w_mean, w_cov)
    return stats.path_rss(local, w_mean, w_cov)


def resp_change(stats: SufficientStats | StatsBackend, previous, local) -> float:
    """The largest change of any responsibility between two local steps (inf if the paths differ)."""
    if isinstance(stats, SufficientStats):
        if previous.resp.shape != local.resp.shape:
            return float("inf")
        return float(np.abs(local.resp - previous.resp).max(initial=0.0))
    return stats.resp_change(previous, local)
