"""Subject-level residual scales (``noise_df``) in a Dask fit: each subject's q(v_i) stays on its worker.

With ``noise_df`` every subject has its own residual scale ``v_i`` with ``q(v_i) = IG(alpha_i, beta_i)``
(:mod:`dmlmm.inference.subject_scales`). In a Dask fit these N factors live with the shards' statistics,
one :class:`~dmlmm.inference.subject_scales.SubjectScales` per shard, and the driver holds a
:class:`ShardedScales`: ``nu``, the scales' ELBO term and the futures. Each iteration

1. the local step weighs each shard's statistics by its subjects' ``E[1/v_i]`` on the worker and returns
   the log evidence with their ``-n_i/2 E[log v_i]`` (:func:`~dmlmm.distributed.shard.shard_step`);
2. after the global updates, each shard computes its subjects' ``R_i = E[1/sigma^2] E||r_i||^2 / 2``
   (per noise group with one residual variance per cluster; :func:`shard_half_rss`); with a fixed ``nu`` it sets its q(v_i) from them at once; with ``noise_df="auto"``
   the driver gathers the ``R_i`` (N floats: the one O(N) transfer of an iteration), takes the optimal ``nu``
   as the in-memory fit does (:func:`~dmlmm.inference.subject_scales.optimal_df`) and broadcasts it;
3. SQUAREM's step length takes the scales' part of its norms from the shards, and the shards extrapolate
   their q(v_i) with the driver's step (:meth:`ShardedScales.squarem_norms`, :meth:`ShardedScales.squarem_point`).

The scales' ELBO term is computed on the shards with each new q(v) and gathered with the next local
step's sums (:meth:`~dmlmm.distributed.stats.DaskStats.local_step`): no round trip of its own.

So the fit is the in-memory one, up to the order of sums over subjects. The worker functions here are
plain numpy; the driver's need only a client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..accel import from_unconstrained, squarem_leaves, squarem_norms, to_unconstrained
from ..inference.engine import subject_residuals
from ..inference.subject_scales import SubjectScales, half_rss, optimal_df, optimal_scales, scales_elbo
from ..models.fitting import subject_noise
from ..models.starting import ridge_penalties

__all__ = ["ShardedScales", "start_half_rss", "shard_half_rss", "shard_scales", "shard_n_obs", "shard_squarem_norms",
           "shard_squarem_point", "part_elbo", "per_shard", "on_shards", "settle", "gathered", "light", "noise_series"]


# --------------------------------------------------------------------------- worker side


def start_half_rss(shard, b_hat: np.ndarray, w: np.ndarray, s2: float, ridge: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The shard's starting ``R_i`` (n,): each subject's residual plus ridge penalty at its ridge fit ``b_hat``
    (n, D) over twice the starting sigma^2 ``s2`` (as :func:`~dmlmm.inference.engine.init_globals`)."""
    per_subject = subject_residuals(shard.stats, b_hat, w) + ridge_penalties(b_hat, *ridge)
    return 0.5 * per_subject / s2


def shard_half_rss(shard, local, w_mean: np.ndarray, w_cov: np.ndarray, noise_prec) -> np.ndarray:
    """The shard's ``R_i`` (n,) after a local step ``local`` (a :class:`~dmlmm.distributed.shard.ShardLocal`
    with ``scale_moments``): :func:`~dmlmm.inference.subject_scales.half_rss`, E[1/sigma^2] per noise group."""
    return half_rss(shard.stats, local.scale_moments, noise_prec, w_mean, w_cov)


def shard_scales(shard, half_rss: np.ndarray, df: float) -> SubjectScales:
    """The shard's optimal q(v_i) at ``df`` (:func:`~dmlmm.inference.subject_scales.optimal_scales`)."""
    return optimal_scales(df, shard.stats.n_obs, half_rss)


def shard_n_obs(shard) -> np.ndarray:
    """The shard's subjects' numbers of observations (n,)."""
    return np.asarray(shard.stats.n_obs)


def shard_total_obs(shard) -> int:
    """The shard's observations, all subjects together."""
    return int(np.sum(shard.stats.n_obs))


def _unconstrained(scales: SubjectScales) -> list[np.ndarray]:
    return to_unconstrained(scales.q)


def shard_squarem_norms(s0: SubjectScales, s1: SubjectScales, s2: SubjectScales) -> tuple[float, float]:
    """The shard's part of SQUAREM's ``|r|^2`` and ``|v|^2`` (:func:`~dmlmm.accel.squarem_norms`)."""
    return squarem_norms(_unconstrained(s0), _unconstrained(s1), _unconstrained(s2))


def shard_squarem_point(s0: SubjectScales, s1: SubjectScales, s2: SubjectScales, step: float) -> SubjectScales:
    """The shard's extrapolated q(v_i) for the step ``step`` (``s2``'s nu). Finite wherever the norms were
    (:func:`shard_squarem_norms`) short of overflow, which the local step reports
    (:func:`~dmlmm.distributed.shard.shard_step`) and the engine takes as a rejected extrapolation."""
    leaves = squarem_leaves(_unconstrained(s0), _unconstrained(s1), _unconstrained(s2), step)
    return SubjectScales(from_unconstrained(s2.q, leaves), s2.df)


def part_elbo(scales: SubjectScales) -> float:
    """The shard's part of the scales' ELBO term."""
    with np.errstate(all="ignore"):  # an extrapolation beyond what the arithmetic holds: the step rejects it
        return scales_elbo(scales)


def noise_series(shard, local, scales: SubjectScales, sigma2, name: str) -> pd.Series:
    """The shard's ``E[sigma^2_{c_i} v_i]`` (``subject_noise_``, :func:`~dmlmm.models.fitting.subject_noise`),
    indexed by subject; ``sigma2``: one shared E[sigma^2] or each path's."""
    return pd.Series(subject_noise(local.resp, sigma2, scales.q), index=shard.subjects, name=name)


# --------------------------------------------------------------------------- driver side


@dataclass(frozen=True)
class ShardedScales:
    """q(v_i) of every subject, one :class:`~dmlmm.inference.subject_scales.SubjectScales` per shard on the
    workers (:class:`~dmlmm.inference.backend.RemoteScales`).

    Attributes
    ----------
    df : float, nu.
    parts : tuple of futures of SubjectScales, in the shards' order (empty once the fit's model has
        travelled without them, :func:`light`).
    client : distributed.Client or None.
    elbo_parts : tuple of futures of each shard's part of the ELBO term (:attr:`elbo`).
    """

    df: float
    parts: tuple = ()
    client: Any = None
    elbo_parts: tuple = ()
    _elbo: list = field(default_factory=list, compare=False, repr=False)  # the sum, once gathered

    @property
    def elbo(self) -> float:
        """``sum_i E_q[log IG(v_i; nu/2, nu/2)] + H[q(v_i)]`` over all subjects (gathered on first use,
        usually with a local step's sums: :meth:`know_elbo`)."""
        if not self._elbo:
            self.know_elbo(self.client.gather(list(self.elbo_parts)))
        return self._elbo[0]

    @property
    def elbo_known(self) -> bool:
        return bool(self._elbo)

    def know_elbo(self, parts: Sequence[float]) -> None:
        """Record the gathered values of :attr:`elbo_parts`."""
        if not self._elbo:
            self._elbo.append(float(sum(parts)))

    def squarem_norms(self, s0: "ShardedScales", s1: "ShardedScales") -> tuple[float, float]:
        c = self.client
        got = c.gather(c.map(shard_squarem_norms, s0.parts, s1.parts, self.parts, pure=False))
        return sum(g[0] for g in got), sum(g[1] for g in got)

    def squarem_point(self, s0: "ShardedScales", s1: "ShardedScales", step: float) -> "ShardedScales":
        c = self.client
        parts = c.map(shard_squarem_point, s0.parts, s1.parts, self.parts, step=float(step), pure=False)
        return on_shards(self.df, parts, c)


def per_shard(scales: ShardedScales | None, n_shards: int) -> list:
    """The futures of ``scales`` per shard, or None for each of ``n_shards`` without residual scales (what the
    workers' functions take)."""
    return [None] * n_shards if scales is None else list(scales.parts)


def on_shards(df: float, parts: Sequence, client: Any) -> ShardedScales:
    """The :class:`ShardedScales` of the futures ``parts``, their ELBO term computed where they are."""
    return ShardedScales(float(df), tuple(parts), client, tuple(client.map(part_elbo, parts, pure=False)))


def settle(client: Any, shards: Sequence, half_rss: Sequence, df: float, learn_df: bool,
           n_obs: Any) -> ShardedScales:
    """Every shard's optimal q(v_i) given its ``R_i`` (futures ``half_rss``, one per shard), at ``df`` or, with
    ``learn_df``, at the optimal nu for all of them (the ``R_i`` gathered; ``n_obs()`` gives every subject's
    count in the shards' order)."""
    if learn_df:
        df = optimal_df(n_obs(), np.concatenate(client.gather(list(half_rss))))
    return on_shards(df, client.map(shard_scales, shards, half_rss, df=float(df), pure=False), client)


def gathered(scales: ShardedScales) -> SubjectScales:
    """All subjects' q(v_i) in one :class:`SubjectScales` on the driver (O(N) memory; shards' order)."""
    parts = scales.client.gather(list(scales.parts))
    shape = np.concatenate([np.atleast_1d(p.q.shape) for p in parts])
    rate = np.concatenate([np.atleast_1d(p.q.rate) for p in parts])
    return SubjectScales(type(parts[0].q)(shape, rate), scales.df)


def light(scales: ShardedScales) -> ShardedScales:
    """``scales`` without its futures and client: nu and the ELBO term, all a prediction reads."""
    return ShardedScales(scales.df, _elbo=[scales.elbo])
