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
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..sufficient import SufficientStats
from ..priors.base import PathPrior
from .local import NoiseMoments, local_step
from .noise import path_rss

__all__ = ["StatsBackend", "run_local_step", "active_paths", "fixed_sums", "residual_sums", "resp_change"]


class StatsBackend(Protocol):
    """Per-subject statistics kept outside this process, with the reductions the engine needs.

    ``local_step`` returns an object with the attributes of
    :class:`~dmlmm.inference.local.LocalResult` that are sums over subjects (``moments``,
    ``path_quad``, ``path_xty_b``, ``path_xtf_b``) and ``log_evidence``, an array whose sum
    is the sum over subjects; the per-subject outputs stay with the backend.
    """

    @property
    def n_subjects(self) -> int: ...

    @property
    def dim_random(self) -> int: ...

    @property
    def dim_fixed(self) -> int: ...

    def local_step(
        self, prior: PathPrior, noise: NoiseMoments, hard_assignment: bool = False,
        active: Any = None, moment_threshold: float = 1e-12,
    ) -> Any: ...

    def active_paths(self, local: Any, threshold: float) -> Any: ...

    def resp_change(self, previous: Any, local: Any) -> float: ...

    def fixed_sums(self, local: Any, s_path: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def path_rss(self, local: Any, w_mean: np.ndarray, w_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def run_local_step(
    stats: SufficientStats | StatsBackend,
    prior: PathPrior,
    noise: NoiseMoments,
    hard_assignment: bool = False,
    active: Any = None,
    moment_threshold: float = 1e-12,
    log_weight: np.ndarray | None = None,
):
    """:func:`~dmlmm.inference.local.local_step` where the statistics live (same arguments).

    ``log_weight`` (the membership model's per-subject path weights) exists in memory only.
    """
    if isinstance(stats, SufficientStats):
        return local_step(stats, prior, noise, hard_assignment, active=active, moment_threshold=moment_threshold,
                          log_weight=log_weight)
    if log_weight is not None:
        raise NotImplementedError("membership covariates are not supported by this statistics backend")
    return stats.local_step(prior, noise, hard_assignment, active=active, moment_threshold=moment_threshold)


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
