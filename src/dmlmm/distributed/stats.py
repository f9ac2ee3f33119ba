"""The driver's handle on statistics kept on Dask workers: a stats backend for the inference engine.

:class:`DaskStats` implements :class:`~dmlmm.inference.backend.StatsBackend`.
Each local step

1. sends the globals the step needs (the paths' prior quadratic forms and
   the noise / fixed-effect moments: O(M D^2), independent of N) inside each
   shard's task while their copies together stay under :data:`EMBED_BYTES`,
   else broadcasts them to every worker once (``Client.scatter(...,
   broadcast=True)``, a scheduler round trip of its own: on small data the
   larger part of an iteration's cost, :func:`per_task`);
2. runs :func:`~dmlmm.inference.local.local_step` on every shard, on the worker
   that holds it; the per-subject outputs (responsibilities, posterior means)
   stay there, as futures;
3. gathers only each shard's :class:`~dmlmm.distributed.shard.StepSums` and adds
   them in partition order (where all subjects' outputs together take at most
   :data:`GATHER_BYTES`, the shards' whole outputs, which saves a dependent task
   per shard and its wait for the scheduler).

So the driver's memory per iteration is O(partitions * M D^2) plus at most
:data:`GATHER_BYTES` of whole outputs, and a worker's is bounded by its shards
plus two steps' per-subject outputs (the current one and the one whose
responsibilities restrict the next step).

With subject-level residual scales (``noise_df``) each shard also holds its subjects' q(v_i)
(:mod:`.scales`): :meth:`DaskStats.weighted` is the view whose local step weighs them in, and
:meth:`DaskStats.update_scales` updates them after the global updates.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..inference.engine import VIConfig
from ..expfam import Gaussian, InvGamma
from . import scales as sc
from ..inference.local import NoiseMoments
from ..models.starting import pooled_ridge, ridge_prior
from ..priors.base import PathMoments, PathPrior
from ..priors.membership import MembershipPathWeights
from . import shard as sh

__all__ = ["EMBED_BYTES", "GATHER_BYTES", "per_task", "DaskStats", "DistributedLocal", "ActivePaths",
           "init_noise_and_fixed_from_sums", "start_point"]


#: The most bytes that the copies of a local step's globals may take when they travel inside the shards'
#: tasks (one copy per task) instead of being broadcast first.
EMBED_BYTES = 1 << 20
#: The most bytes of per-subject outputs (responsibilities and posterior means, all shards together) that a
#: local step gathers whole to the driver, saving the second task per shard that picks out their sums: that
#: dependent task waits for the scheduler again (with trivial functions on a 2-process ``LocalCluster`` of the
#: 2-core machine, two waves and a gather took 37 ms, one wave and a gather 23 ms), while 256 kB cross a
#: 1 Gbit/s link in 2 ms.
GATHER_BYTES = 1 << 18


def per_task(client: Any, obj: Any, n_tasks: int, limit: int = EMBED_BYTES) -> list:
    """``obj`` as the argument of each of ``n_tasks`` tasks: the object itself in every task while its
    ``n_tasks`` pickled copies take at most ``limit`` bytes, else a future of it broadcast to every worker.

    A broadcast is a scheduler round trip before the tasks can start (11 ms on a 2-process ``LocalCluster``
    of the 2-core machine); a copy inside the task costs its bytes, once per task, through the scheduler.
    """
    if len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)) * n_tasks <= limit:
        return [obj] * n_tasks
    return [client.scatter(obj, broadcast=True, hash=False)] * n_tasks


@dataclass(frozen=True)
class DistributedLocal:
    """A local step run on the shards: the sums on the driver, the per-subject outputs on the workers.

    Attributes
    ----------
    parts : list of futures of :class:`~dmlmm.distributed.shard.ShardLocal`, one per shard.
    sums : StepSums over all subjects.
    """

    parts: list
    sums: sh.StepSums

    @property
    def moments(self) -> PathMoments:
        return PathMoments(self.sums.weight, self.sums.first, self.sums.second)

    @property
    def log_evidence(self) -> np.ndarray:
        """(1,): the sum over subjects of their local ELBO terms (the terms stay on the workers)."""
        return np.array([self.sums.log_evidence])

    @property
    def path_quad(self) -> np.ndarray:
        return self.sums.path_quad

    @property
    def path_xty_b(self) -> np.ndarray:
        return self.sums.path_xty_b

    @property
    def path_xtf_b(self) -> np.ndarray:
        return self.sums.path_xtf_b

    @property
    def path_gram(self) -> np.ndarray | None:
        return self.sums.path_gram

    @property
    def membership_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """The membership model's :func:`~dmlmm.priors.membership.membership_sums` over all subjects."""
        return self.sums.membership_prec, self.sums.membership_shift

    @property
    def path_xtf(self) -> np.ndarray | None:
        return self.sums.path_xtf


@dataclass(frozen=True)
class ActivePaths:
    """The paths open to a restricted step: those above ``threshold`` in ``local``'s responsibilities."""

    local: DistributedLocal
    threshold: float


class DaskStats:
    """Per-subject sufficient statistics held by Dask workers, one shard per partition.

    Parameters
    ----------
    client : distributed.Client
    shards : list of futures of :class:`~dmlmm.distributed.shard.Shard`.
    n_subjects, dim_random, dim_fixed : int
    """

    def __init__(self, client: Any, shards: list, n_subjects: int, dim_random: int, dim_fixed: int,
                 scales: sc.ShardedScales | None = None, groups: np.ndarray | None = None) -> None:
        self.client = client
        self.shards = shards
        self._n, self._d, self._p = int(n_subjects), int(dim_random), int(dim_fixed)
        self.scales = scales  # the subjects' residual scales that the local step weighs in (weighted())
        self.groups = groups  # and each path's noise group
        self._n_obs: np.ndarray | None = None
        self._total_obs: int | None = None

    @property
    def n_subjects(self) -> int:
        return self._n

    @property
    def dim_random(self) -> int:
        return self._d

    @property
    def dim_fixed(self) -> int:
        return self._p

    def __repr__(self) -> str:
        return f"DaskStats({self._n} subjects in {len(self.shards)} shards, D={self._d}, P={self._p})"

    # ------------------------------------------------------------------ the engine's backend
    def local_step(
        self,
        prior: PathPrior,
        noise: NoiseMoments,
        hard_assignment: bool = False,
        active: ActivePaths | None = None,
        moment_threshold: float = 1e-12,
        move_sums: bool = False,
        membership: MembershipPathWeights | None = None,
    ) -> DistributedLocal:
        """The local step on every shard (see the module docstring); ``active`` from :meth:`active_paths`;
        ``membership``: the membership model, evaluated on each shard's covariates."""
        c = self.client
        glob = per_task(c, sh.StepGlobals(prior, noise, np.geterr(), self.groups, move_sums, membership),
                        len(self.shards))
        previous = [None] * len(self.shards) if active is None else active.local.parts
        scales = sc.per_shard(self.scales, len(self.shards))
        threshold = 0.0 if active is None else float(active.threshold)
        parts = c.map(
            sh.shard_step, self.shards, previous, scales, glob, hard_assignment=bool(hard_assignment),
            threshold=threshold, moment_threshold=float(moment_threshold), pure=False,
        )
        # the shards' whole outputs travel when they are small (one task per shard; the outputs stay on the
        # workers too), else a second task per shard picks their sums out there
        whole = self.scales is None and self._n * (prior.n_paths + self._d) * 8 <= GATHER_BYTES
        sums = parts if whole else c.map(sh.step_sums, parts, pure=False)
        pending = self.scales is not None and not self.scales.elbo_known
        if pending:  # the scales' ELBO term comes back with the sums (dmlmm.distributed.scales)
            got = c.gather(sums + list(self.scales.elbo_parts))
            sums = got[:len(parts)]
        else:
            sums = c.gather(sums)
        if whole:
            sums = [sh.step_sums(p) for p in sums]
        sh.raise_failures(sums)
        if pending:
            self.scales.know_elbo(got[len(parts):])
        sums = sh.add_all(sums)
        return DistributedLocal(parts, sums)

    def active_paths(self, local: DistributedLocal, threshold: float) -> ActivePaths:
        return ActivePaths(local, float(threshold))

    def resp_change(self, previous: DistributedLocal, local: DistributedLocal) -> float:
        """The largest change of any responsibility between two local steps, over all shards."""
        c = self.client
        return float(max(c.gather(c.map(sh.resp_change, previous.parts, local.parts, pure=False)), default=0.0))

    def fixed_sums(self, local: DistributedLocal, s_path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sum_c s_c sum_i r_ic F_i'F_i (P, P) and sum_c s_c sum_i r_ic F_i'y_i (P,)."""
        return np.einsum("c,cpq->pq", s_path, local.sums.FtF), s_path @ local.sums.Fty

    def path_rss(self, local: DistributedLocal, w_mean: np.ndarray, w_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`~dmlmm.inference.noise.path_rss` from the per-path sums, both (M,)."""
        s = local.sums
        err = (
            s.yty - 2.0 * s.Fty @ w_mean
            + np.einsum("cpq,p,q->c", s.FtF, w_mean, w_mean)
            + np.einsum("cpq,qp->c", s.FtF, w_cov)
        )
        rss = err - 2.0 * (s.path_xty_b - s.path_xtf_b @ w_mean) + s.path_quad
        return rss, s.n_obs

    # ------------------------------------------------------------------ subject-level residual scales
    def weighted(self, scales: sc.ShardedScales, groups: np.ndarray | None = None) -> "DaskStats":
        """These statistics as the local step and the global updates see them with residual scales
        ``scales``: each subject's weighted by E[1/v_i] on its worker (:func:`~.shard.shard_step`);
        ``groups`` (M,): each path's noise group."""
        view = DaskStats(self.client, self.shards, self._n, self._d, self._p, scales, groups)
        view._n_obs, view._total_obs = self._n_obs, self._total_obs
        return view

    def update_scales(self, scales: sc.ShardedScales, local: DistributedLocal, w_mean: np.ndarray,
                      w_cov: np.ndarray, noise_prec, learn_df: bool) -> sc.ShardedScales:
        """q(v) (and nu, with ``learn_df``) after the local step ``local`` (:func:`~dmlmm.inference.backend.updated_scales`)."""
        half = self.client.map(sc.shard_half_rss, self.shards, local.parts, w_mean=w_mean, w_cov=w_cov,
                               noise_prec=np.asarray(noise_prec, dtype=float), pure=False)
        return sc.settle(self.client, self.shards, half, scales.df, learn_df, self.n_obs)

    def initial_scales(self, b_parts: list, w: np.ndarray, s2: float, ridge: tuple, df: float,
                       learn_df: bool) -> sc.ShardedScales:
        """The starting q(v) from the ridge fits ``b_parts`` (futures, one per shard), as
        :func:`~dmlmm.inference.engine.init_globals` in memory."""
        half = self.client.map(sc.start_half_rss, self.shards, b_parts, w=w, s2=float(s2), ridge=ridge, pure=False)
        return sc.settle(self.client, self.shards, half, df, learn_df, self.n_obs)

    def total_obs(self) -> int:
        """All subjects' observations, summed on the workers (the per-subject counts are not gathered for it)."""
        if self._total_obs is None:
            c = self.client
            self._total_obs = (int(self._n_obs.sum()) if self._n_obs is not None else
                               int(sum(c.gather(c.map(sc.shard_total_obs, self.shards, pure=False)))))
        return self._total_obs

    def n_obs(self) -> np.ndarray:
        """Every subject's number of observations (N,), in the shards' order (gathered once)."""
        if self._n_obs is None:
            c = self.client
            self._n_obs = np.concatenate(c.gather(c.map(sc.shard_n_obs, self.shards, pure=False)))
        return self._n_obs

    # ------------------------------------------------------------------ the start
    def ridge_init(self, penalty: float, roughness: np.ndarray | None) -> tuple[np.ndarray, sh.InitSums, tuple]:
        """Starting estimates of every subject (N, D) on the driver (partition order), their InitSums, and
        ``(futures of the estimates per shard, the ridge prior (P, m))`` for the residual scales' start.

        The estimates are gathered because the priors' initialisation (k-means, per-cluster factor
        analysis) runs on all of them: O(N D) memory on the driver, once.
        """
        c = self.client
        parts = c.gather(c.map(sh.totals, self.shards, pure=False))
        tot = type(parts[0])(*(None if getattr(parts[0], f) is None else sh.add_all([getattr(p, f) for p in parts])
                               for f in parts[0].__dataclass_fields__))
        pooled = pooled_ridge(tot, self._n, roughness)
        b = c.map(sh.shard_ridge, self.shards, pooled=pooled, penalty=penalty, roughness=roughness, pure=False)
        ridge = ridge_prior(penalty, roughness, pooled)
        sums = sh.add_all(c.gather(c.map(sh.init_sums, self.shards, b, ridge=ridge, pure=False)))
        b_hat = np.concatenate(c.gather(b), axis=0)
        return b_hat, sums, (b, ridge)


def start_point(sums: sh.InitSums, n_fixed: int) -> tuple[np.ndarray, float]:
    """The starting fixed effects w (P,) and sigma^2 from sums over subjects (as
    :func:`~dmlmm.inference.engine.init_globals`)."""
    P = n_fixed
    w = np.zeros(P)
    if P > 0:
        w = np.linalg.solve(sums.FtF + 1e-6 * np.eye(P), sums.Fty - sums.XtF_b)
    rss = sums.yty - 2 * sums.xty_b + sums.bxtxb - 2 * sums.Fty @ w + 2 * sums.XtF_b @ w + w @ sums.FtF @ w
    rss = rss + sums.penalty
    return w, max(rss / max(sums.n_obs, 1), 1e-3)


def init_noise_and_fixed_from_sums(
    sums: sh.InitSums, n_fixed: int, config: VIConfig
) -> tuple[InvGamma, InvGamma, Gaussian | None]:
    """:func:`~dmlmm.inference.engine.init_noise_and_fixed` from sums over subjects (same formulas)."""
    P = n_fixed
    fixed = None
    w, s2 = start_point(sums, P)
    n = sums.n_obs
    shape = 0.5 + 0.5 * n
    noise = InvGamma(np.asarray(shape), np.asarray(shape * s2))
    aux = InvGamma(np.asarray(1.0), np.asarray(1.0 / s2 + 1.0 / config.noise_scale**2))
    if P > 0:
        prec = np.eye(P) / config.fixed_var + sums.FtF / s2
        fixed = Gaussian(prec, prec @ w)
    return noise, aux, fixed
