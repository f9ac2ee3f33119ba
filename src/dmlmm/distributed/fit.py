"""``model.fit(ddf)`` on a Dask cluster: the in-memory fit's algorithm with the subjects on the workers.

The steps mirror :meth:`VariationalLongitudinalModel.fit`:

1. read the frame onto the workers; for each response scale that ``response_transform`` asks for
   (``"auto"``: as given and, for a never-negative response, its log), transform the partitions on
   the workers and learn the design (:class:`~.frame.DaskFrame`, :meth:`~.frame.DaskFrame.on_scale`);
2. build each partition's sufficient statistics on its worker (:class:`~.stats.DaskStats`);
3. start from per-subject ridge estimates: their sums start the noise and fixed
   effects; the estimates themselves (N x D) are gathered once, for the priors'
   k-means / factor-analysis initialisation;
4. run the same :func:`~dmlmm.inference.starts.run_vi_with_starts` (starting sizes,
   delete moves, pruning, stopping rule) with :class:`~.stats.DaskStats` as the
   statistics, for each noise kind and ``n_init`` restart, keeping the best ELBO;
5. keep the scale whose bound on the data's scale is higher (as in memory; a scale fitted before
   another is set aside meanwhile, its statistics released on the workers, and built again if it
   is kept, so that a worker holds one scale's statistics at a time), set the fitted
   globals as an in-memory fit does (with covariates, the fixed effects' covariance from the
   partitions' summed information), and the per-subject tables as dask collections on the
   workers (:mod:`.outputs`).

The Dask path is full-batch coordinate ascent (``batch_size`` "auto" or "full"):
the same answer as the in-memory full-batch fit, up to rounding in the order of
sums over subjects. With ``noise_df`` the subjects' residual scales stay on the workers with their
statistics (:mod:`.scales`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from time import perf_counter
from typing import Any, Sequence

import numpy as np

from .._recorded import recorded
from ..columns import ColumnNames
from ..standardise import check_noise_sums
from ..exceptions import DataError
from ..inference.engine import VariationalParams, VIConfig, final_local_step
from ..inference.noise import per_cluster
from ..models.candidates import StartFactory, fit_in_turn
from ..models.fitting import FitPlan, ScaleFit, fit_scales, fitting_order
from ..models.design import latest_covariates
from ..models.membership_design import check_roles
from ..models.starting import smooth_roughness
from ..priors.membership import membership_init
from ..prediction import fixed_cov_from_information
from ..priors.base import RandomEffectsPrior
from ..response_transform import candidates_given_min, check_transform, data_scale_bound, label_of, model_scale_elbo
from . import scales as sc
from . import shard as sh
from .frame import DaskFrame, membership_baseline
from .outputs import subject_tables
from .stats import DaskStats, init_noise_and_fixed_from_sums, start_point

__all__ = ["fit_dask", "current_client"]


def current_client(client: Any = None) -> Any:
    """``client``, or the current ``distributed.Client``; a clear error when there is none."""
    if client is not None:
        return client
    try:
        from distributed import default_client
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError("fitting a Dask DataFrame needs dask.distributed: pip install 'dmlmm[dask]'") from err
    try:
        return default_client()
    except ValueError as err:
        raise RuntimeError(
            "fitting a Dask DataFrame needs a distributed.Client: create one first, e.g. "
            "Client(LocalCluster(n_workers=2)) on this machine or Client('scheduler-address:8786') for a cluster"
        ) from err


def _check_batch(model: Any) -> None:
    bs = model.batch_size
    if bs not in ("auto", "full", None):
        raise ValueError(
            f"batch_size={bs!r}: the Dask path runs full-batch coordinate ascent over all subjects; "
            "use batch_size='auto' or 'full'"
        )


def fit_dask(
    model: Any,
    data: Any,
    subject: str = "subject",
    time: str = "time",
    response: str = "y",
    covariates: Sequence[str] | None = None,
    *,
    dropna: bool = False,
    client: Any = None,
) -> Any:
    """Fit ``model`` (a MixtureLMM or DeepMixtureLMM) to a Dask frame; returns ``model``.

    Parameters
    ----------
    model : VariationalLongitudinalModel
    data : dask.dataframe.DataFrame
        Long format, one row per observation; every subject's rows in one partition.
    subject, time, response, covariates, dropna : as :meth:`fit`.
    client : distributed.Client, optional
        Default: the current client.
    """
    model._check_params()
    _check_batch(model)
    client = current_client(client)
    basis = model.basis
    distinct = basis is None or (not basis.is_fitted and isinstance(basis.knots, str) and basis.knots == "quantile")
    columns, members = ColumnNames(subject, time, response), model._membership_columns()
    baseline = None
    if members:  # the subjects' baseline covariates, one row each (those without any value dropped with dropna)
        check_roles(members, columns.roles())
        data, baseline = membership_baseline(client, data, columns, members, dropna, stacklevel=3)
    frame = DaskFrame(client, data, columns, covariates, dropna, distinct_times=distinct)
    if frame.n_subjects < 2:
        raise DataError(
            f"only one subject ({frame.subjects[0]}) in the data: a mixed model needs at least two subjects "
            "to learn how subjects vary"
        )
    if baseline is not None:
        frame.learn_membership(baseline)
    check_noise_sums(frame.pooled.noise, response)  # on the data's scale, as the in-memory fit
    frame.warn_response(stacklevel=3)  # the caller of fit
    transform = check_transform(getattr(model, "response_transform", None))
    scales = candidates_given_min(transform, frame.pooled.y_min)
    t0 = perf_counter()
    basis = frame.fitted_basis(model.basis)  # as the in-memory fit: one basis for every scale, the noise identified?
    confounded = frame.noise_confounded(basis)
    n_times = len(frame.pooled.few_times) if confounded else 0  # the distinct times, known where they are few
    plan = FitPlan.of(basis, confounded, n_times)
    model._check_noise_identified(plan.confounded, n_times, basis.n_basis, stacklevel=4)
    model._check_sizes(frame.n_subjects, stacklevel=4)
    # as the in-memory fit: each scale's best fit, the higher bound on the data's scale kept

    def fit_one(tr: str | None, quiet: bool, to_beat: float | None) -> ScaleFit:
        fit = _fit_scale(model, frame.on_scale(tr), tr, client, quiet, to_beat, plan)
        return fit if tr == fitting_order(scales)[-1] else _set_aside(fit, client)  # a later scale is fitted next: free this one

    chosen, fits = fit_scales(scales, fit_one, stacklevel=3)
    if chosen.stats is None:  # set aside while a later scale was fitted: its statistics and final local step again
        for f in fits:
            if f is not chosen:
                _release(f, client, everything=True)  # the scales that lost: their worker data go before the kept one's come back
        chosen = _restored(chosen, frame, client)
    frame.reads = []  # every scale's shards are built: the rows are released
    best, design, stats = chosen.result, chosen.design, chosen.stats
    best.seconds = perf_counter() - t0
    local = best.local
    if design.needs_population:  # a covariate formula that uses time: each subject's latest covariates, as in memory
        c = design.columns
        latest = data.map_partitions(latest_covariates, c.subject, c.time, design.population_columns())
        design.learn_population(client.compute(latest).result(), frame.subjects)
    model._set_fitted_globals(design, best, local.sums.weight, local.sums.n_obs, stacklevel=5,
                              log_jacobian=chosen.log_jacobian)
    model.elbo_by_transform_ = {label_of(f.design.transform): float(f.bound) for f in fits}
    model._fixed_cov = model._membership_cov = None
    if frame.membership_Z is not None:  # the coefficients' covariance and the separation check, as in memory
        first = best.prior.path_components()[:, 0]
        resp1 = np.concatenate(client.gather(client.map(sh.first_layer_proba, local.parts, first=first, pure=False)))
        model._set_membership_cov(best.params.membership, frame.membership_Z, resp1, chosen.config.membership_scale,
                                  stacklevel=5)
    if design.n_fixed:  # the fixed effects' covariance that the bands use, as in memory, summed over partitions
        info = sh.add_all(client.gather(client.map(sh.fixed_information, stats.shards, local.parts,
                                                   sc.per_shard(best.params.scales, len(local.parts)),
                                                   mix=model._mixture(), sigma2=model._sigma2_std(), pure=False)))
        model._fixed_cov = fixed_cov_from_information(info, chosen.config.fixed_var)
    model.subjects_ = frame.subjects
    for name, value in subject_tables(model, client, stats.shards, local.parts, frame.subjects).items():
        setattr(model, name, value)
    if best.params.scales is not None:  # subject-level residual scales: E[sigma^2 v_i] per subject, on the workers
        model.noise_df_ = float(best.params.scales.df)
        model.subject_noise_ = _noise_table(model, client, stats.shards, local.parts, best.params.scales, frame.subjects)
    return model


def _noise_table(model: Any, client: Any, shards: list, local_parts: list, scales: sc.ShardedScales, subjects) -> Any:
    """``subject_noise_`` as a dask Series over the shards (as :meth:`_set_subject_noise` in memory)."""
    import dask.dataframe as dd
    import pandas as pd

    meta = pd.Series(np.zeros(0), index=subjects[:0], name="sigma2")
    parts = client.map(sc.noise_series, shards, local_parts, list(scales.parts), sigma2=model._noise_by_path(),
                       name="sigma2", pure=False)
    return dd.from_delayed(parts, meta=meta, verify_meta=False)


def _set_aside(fit: ScaleFit, client: Any) -> ScaleFit:
    """``fit`` without its statistics and local results, whose futures are cancelled on the workers: with
    ``response_transform="auto"`` a worker then holds one scale's statistics at a time, not two.
    The globals, bound and warnings stay (the scales are compared on them); :func:`_restored` builds
    the rest again if this scale is kept. Its subjects' residual scales (``noise_df``), part of its globals,
    come to the driver meanwhile (2 floats per subject): on the workers they would be lost with the
    statistics they were computed from."""
    params = fit.result.params
    if params.scales is not None:
        _ = params.scales.elbo  # gathered now: its parts on the workers are released below
        params = replace(params, scales=replace(params.scales, parts=tuple(client.gather(list(params.scales.parts)))))
    _release(fit, client, everything=True)
    return replace(fit, stats=None, result=replace(fit.result, local=None, params=params))


def _release(fit: ScaleFit, client: Any, everything: bool = False) -> None:
    """Cancel ``fit``'s statistics and local results on the workers (the fit's futures are unusable after); with
    ``everything``, also its subjects' residual scales."""
    if fit.stats is None:
        return
    # the newest results first, then the statistics they came from: a local step's task that the client has
    # released stays known to the scheduler while a later step's task that read it lives, and cancelling a
    # shard cancels its dependents, which trips over such a task (distributed 2026.8: AssertionError in
    # stimulus_cancel; the client's connection is lost: tests/test_distributed.py's test_subject_scales_same_answer
    # once the globals travelled inside the tasks); cancelled first, the later tasks take the earlier along
    results = list(fit.result.local.parts)
    scales = fit.result.params.scales
    if everything and scales is not None:  # a set-aside fit holds its scales here
        results += list(scales.parts)
    client.cancel(results)
    client.cancel(list(fit.stats.shards))


def _restored(fit: ScaleFit, frame: DaskFrame, client: Any) -> ScaleFit:
    """A set-aside scale's fit (:func:`_set_aside`) with its statistics built again from ``frame``'s rows
    and its local results computed again at its final globals: the same numbers as before it was set
    aside (the local step is deterministic), for one more pass over the data."""
    design = fit.design
    stats = DaskStats(client, frame.on_scale(design.transform).shards(design), frame.n_subjects,
                      design.basis.n_basis, design.n_fixed)
    params = fit.result.params
    if params.scales is not None:  # back to the workers, one part per shard
        params = replace(params, scales=replace(params.scales, parts=tuple(client.scatter(list(params.scales.parts),
                                                                                          hash=False))))
    local, params = final_local_step(stats, fit.result.prior, params, fit.config)
    return replace(fit, stats=stats, result=replace(fit.result, local=local, params=params))


def _fit_scale(model: Any, frame: DaskFrame, transform: str | None, client: Any, quiet: bool = False,
               to_beat: float | None = None, plan: FitPlan = FitPlan()) -> ScaleFit:
    """Every variant of the fit (``model._fit_variants()``, ``n_init`` each) of ``frame``'s response on
    the scale ``transform`` (``frame = frame.on_scale(transform)``): the best by the ELBO, with its bound
    on the data's own scale and the warnings of that run (raised only if its scale is kept); with
    ``quiet`` also any other warning raised on the way; ``to_beat``: another scale's bound on the data's
    scale, which the finishing runs race (:func:`~dmlmm.models.fitting.fit_scales`); ``plan``: the basis and the
    noise check every scale shares (:class:`~dmlmm.models.fitting.FitPlan`). The candidates run
    as in memory (:func:`~dmlmm.models.candidates.fit_in_turn`), from starts built on the workers
    (:class:`DaskCandidateData`)."""
    if quiet:
        out, caught = recorded(lambda: _fit_scale(model, frame, transform, client, to_beat=to_beat, plan=plan))
        out.warnings = caught + out.warnings
        return out
    design = frame.learn_design(model.basis if plan.basis is None else plan.basis, model.smoothing, transform)
    design.membership = frame.membership
    N = frame.n_subjects
    stats = DaskStats(client, frame.shards(design), N, design.basis.n_basis, design.n_fixed)
    rough = design.roughness
    b_hat, sums, (b_parts, ridge) = stats.ridge_init(0.5, rough)
    # the smooth start of few shared visit times (FitPlan.smooth_start), as in memory (models/starting.py)
    smooth = stats.ridge_init(0.5, smooth_roughness(rough)) if plan.smooth_start and rough is not None else None
    # log |dz/dy| = -z for both transforms (dmlmm.response_transform.log_jacobian): -sum z from the moments
    jac = 0.0 if transform is None else -frame.pooled.y_mean * frame.pooled.n_obs
    rival = None if to_beat is None else model_scale_elbo(to_beat, float(frame.pooled.n_obs), design.y_scale, jac)
    data = DaskCandidateData(stats, b_hat, rough, N, sums, b_parts, ridge, Z=frame.membership_Z, smooth=smooth,
                             visit_times=plan.few_times)
    best = fit_in_turn(model._fit_variants(plan.confounded), data, to_beat=rival)  # as the in-memory fit (models/fitting.py)
    bound = data_scale_bound(best.result.elbo, float(frame.pooled.n_obs), design.y_scale, jac)
    return ScaleFit(None, design, stats, best.result, best.config, jac, bound, best.warnings)


@dataclass
class DaskCandidateData:
    """What every candidate on one response scale fits, on a Dask cluster: the answers to
    :class:`~dmlmm.models.candidates.CandidateInputs` from the workers' sums (in memory:
    :class:`~dmlmm.models.candidates.CandidateData`).

    Attributes
    ----------
    stats : DaskStats, the subjects' statistics on the workers.
    b_hat : (N, D) the per-subject ridge fits, gathered (the priors' k-means / factor-analysis start).
    roughness : (D,) or None; n_subjects : N.
    sums : the ridge fits' sums (:meth:`DaskStats.ridge_init`), which start the noise and fixed effects.
    b_parts, ridge : per shard, the ridge fits and their penalties, kept on the workers (the subjects'
        residual scales start from them).
    Z : (N, Q) the membership covariates of the subjects, or None (the driver's copy: the shards hold theirs; here
        it sizes the membership model's start, and turns the delete moves off as in memory).
    smooth : the smooth start's ``(b_hat, sums, (b_parts, ridge))`` (:meth:`DaskStats.ridge_init` with
        :func:`~dmlmm.models.starting.smooth_roughness`), or None.
    visit_times : the few distinct visit times the deep mixture's prior reads (as in memory), or None.
    """

    stats: DaskStats
    b_hat: np.ndarray
    roughness: np.ndarray | None
    n_subjects: int
    sums: Any
    b_parts: Any
    ridge: Any
    Z: np.ndarray | None = None
    smooth: Any = None
    visit_times: int | None = None

    def config_for(self, config: VIConfig) -> VIConfig:
        """Full-batch coordinate ascent: the Dask path has no minibatches."""
        return replace(config, batch_size=None)

    def start_factory(self, config: VIConfig, kind: str) -> StartFactory:
        """``make_init(None)``: the start of a run on every subject, noise and fixed effects from the sums, each
        subject's residual scale (with ``config.subject_df``) from its ridge fit on its worker."""
        return self._factory(config, kind, self.b_hat, self.sums, self.b_parts, self.ridge)

    def extra_starts(self, config: VIConfig, kind: str) -> list:
        """The smooth start where the data have one (:attr:`smooth`), else none (as in memory)."""
        if self.smooth is None:
            return []
        b_hat, sums, (b_parts, ridge) = self.smooth
        return [self._factory(config, kind, b_hat, sums, b_parts, ridge)(None)]

    def _factory(self, config: VIConfig, kind: str, b_hat, sums, b_parts, ridge) -> StartFactory:
        noise, aux, fixed = init_noise_and_fixed_from_sums(sums, self.stats.dim_fixed, config)
        scales = None
        if config.subject_df is not None:
            w, s2 = start_point(sums, self.stats.dim_fixed)
            scales = self.stats.initial_scales(b_parts, w, s2, ridge, config.subject_df, config.learn_df)

        def make_init(rows: np.ndarray | None):
            if rows is not None:  # only minibatch fits start on a subset, and the Dask path has none
                raise ValueError("a Dask fit starts on every subject (rows=None)")

            def init(p: RandomEffectsPrior, g: np.random.Generator) -> VariationalParams:
                nz, ax = noise, aux
                k1 = int(p.path_components()[:, 0].max()) + 1  # this start's first-layer components
                if kind == "cluster":  # one residual variance per first-layer component
                    nz, ax = per_cluster(noise, aux, k1)
                gamma = None if self.Z is None else membership_init(k1, self.Z.shape[1], config.membership_scale)
                return VariationalParams(nz, ax, fixed, p.init_params(b_hat, g), gamma, scales)

            return init

        return make_init

    def start_scales(self, config: VIConfig):
        """Not used: the Dask path has no minibatch fit."""
        return None
