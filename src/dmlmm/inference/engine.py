"""The inference loop shared by every model: full-batch coordinate ascent (CAVI).

One iteration = a local step (optimal q of every subject's path and random
effects, :func:`dmlmm.inference.local.local_step`) followed by a closed-form
update of every global factor: the random-effects prior's (through its
:class:`~dmlmm.priors.base.RandomEffectsPrior` object), the fixed effects
``q(w)`` and the noise ``q(sigma^2)`` with its half-Cauchy auxiliary.

This is coordinate ascent: the ELBO, recorded right after each local step, never
decreases (SQUAREM jumps are kept only when it does not drop). Minibatch fits run
through :mod:`dmlmm.inference.stochastic`, which uses :func:`update_globals` with
natural-gradient steps ``(1 - rho) lambda + rho lambda_hat`` on statistics scaled by N / |B|.

Noise and fixed-effect priors (on the standardised scale)::

    sigma | c ~ half-Cauchy(0, noise_scale)   via sigma^2 | c ~ IG(1/2, 1/c), c ~ IG(1/2, 1/noise_scale^2)
    w ~ N(0, fixed_var I)

The noise is one shared sigma^2, or one sigma^2_k per first-layer component with the
same prior each (:mod:`dmlmm.inference.noise`); which one is read off the shape of
``q(sigma^2)``'s parameters (scalars, or one per first-layer component).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from ..sufficient import SufficientStats
from ..exceptions import ConvergenceWarning, NumericalError
from ..priors.base import RandomEffectsPrior
from ..accel import Squarem, from_unconstrained, squarem_point, to_unconstrained
from ..expfam import LOG_2PI, Gaussian, InvGamma, blend, gaussian_entropy
from ..priors.membership import MembershipPathWeights, membership_elbo, membership_from_sums, membership_prune
from .backend import (StatsBackend, active_paths, fixed_sums, membership_sums_of, resp_change, residual_sums,
                      run_local_step, scales_term, supports_scales, total_obs, updated_scales, weighted_by)
from .joint import joint_local_step
from .local import LocalResult, NoiseMoments
from .noise import empty_noise_cost, is_per_cluster, noise_elbo, noise_target, path_groups, take_groups
from .subject_scales import SubjectScales, initial_scales, with_scales
from .translate import translate_means

_NO_RAISE = contextlib.nullcontext()

__all__ = ["VariationalParams", "VIConfig", "VIResult", "run_vi", "init_globals", "final_local_step", "local_step_with_scales",
           "noise_moments", "elbo_floor", "elbo_globals", "prune_params", "update_subject_scales", "weighted_by_scales"]


@dataclass(frozen=True)
class VariationalParams:
    """All global variational factors of a model, in one container.

    Attributes
    ----------
    noise : InvGamma, q(sigma^2): scalar shape / rate (shared noise) or (K_1,) (one per
        first-layer component).
    noise_aux : InvGamma, q(c) of sigma's half-Cauchy prior (same shape).
    fixed : Gaussian or None, q(w) (precision (P, P), shift (P,)); None without fixed effects.
    prior : the random-effects prior's own parameter container.
    membership : Gaussian or None, q(gamma) of the membership model (one Gaussian per stick:
        precision (K_1 - 1, Q, Q), shift (K_1 - 1, Q); :mod:`dmlmm.priors.membership`); None:
        first-layer weights are the prior's Dirichlet.
    scales : SubjectScales or None, q(v_i) of the subject-level residual scales and their degrees
        of freedom (:mod:`dmlmm.inference.subject_scales`); None: one residual variance for all.
    """

    noise: InvGamma
    noise_aux: InvGamma
    fixed: Gaussian | None
    prior: Any
    membership: Gaussian | None = None
    scales: SubjectScales | None = None


#: A racing run's recent rate of ascent is its mean gain over this many iterations (:func:`_cannot_reach`) ...
GIVE_UP_WINDOW = 30
#: ... and it gives up when even this many times that rate would leave it below its target.
GIVE_UP_MARGIN = 4.0


@dataclass(frozen=True)
class VIConfig:
    """Settings of the inference loop (see :func:`run_vi`)."""

    max_iter: int = 500
    tol: float = 1e-6  # converged when the relative ELBO gain per iteration falls below this (_has_converged)
    batch_size: int | None = None  # None: full batch; else minibatch size (dmlmm.inference.stochastic)
    min_iter: int = 5
    hard_assignment: bool = False
    noise_scale: float = 1.0
    fixed_var: float = 100.0
    full_every: int = 10  # full-batch CAVI: evaluate all paths every this many iterations
    active_threshold: float = 1e-10  # in between, only paths above this responsibility
    moment_threshold: float = 1e-12  # pairs below this responsibility are left out of second moments
    prune_threshold: float = 0.1  # drop components expected to hold fewer subjects than this ...
    prune_after: int = 10  # ... from this iteration on (0 or a negative threshold: never)
    membership_scale: float = 2.5  # prior SD of the membership model's coefficients
    accelerate: bool = True  # full batch: SQUAREM extrapolation of the globals, with an ELBO safeguard
    translate_means: bool = True  # full batch: the translation move of the component means (inference.translate)
    resp_tol: float = 1e-3  # full batch: converged only once no responsibility moves more than this
    joint_fixed: bool = False  # one-path priors: q(w, b) jointly Gaussian (:mod:`dmlmm.inference.joint`)
    # a run racing a known ELBO: stop once it cannot reach this at its recent rate (_cannot_reach), measured
    # over give_up_window iterations
    give_up_below: float | None = None
    give_up_window: int = GIVE_UP_WINDOW
    # subject-level residual scales (dmlmm.inference.subject_scales): the starting degrees of freedom
    # (None: no scales), and whether they are learned
    subject_df: float | None = None
    learn_df: bool = True


@dataclass
class VIResult:
    """What a run of :func:`run_vi` returns."""

    params: VariationalParams
    prior: RandomEffectsPrior
    elbo: float
    elbo_history: list[float]
    n_iter: int
    converged: bool
    local: LocalResult
    seconds: float = 0.0
    pruned_at: list[int] = field(default_factory=list)
    kept: list[np.ndarray] | None = None
    moves: int = 0
    gave_up: bool = False  # stopped by ``config.give_up_below`` (and so not converged)
    # a minibatch fit: (subjects of its full-batch warm start, all subjects, first-layer components the warm
    # start kept); None for a full-batch fit
    warm_start: tuple[int, ...] | None = None


def noise_moments(params: VariationalParams, n_fixed: int, path_components: np.ndarray | None = None) -> NoiseMoments:
    """E[1/sigma^2], E[log sigma^2] (per path, (M,), for per-cluster noise), E[w], Cov[w].

    ``path_components`` (M, L), the prior's :meth:`path_components`, is needed for per-cluster noise.
    """
    if params.fixed is None:
        wm, wc = np.zeros(n_fixed), np.zeros((n_fixed, n_fixed))
    else:
        wm, wc, _ = params.fixed.moments()
    q = params.noise
    if not is_per_cluster(q):
        return NoiseMoments(float(q.mean_inv), float(q.mean_log), wm, wc)
    if path_components is None:
        raise ValueError("per-cluster noise needs the paths' components")
    g = path_groups(q, path_components)
    return NoiseMoments(np.asarray(q.mean_inv)[g], np.asarray(q.mean_log)[g], wm, wc)


def prune_params(params: VariationalParams, new_prior_params: Any, keep: list[np.ndarray]) -> VariationalParams:
    """The variational parameters after the prior's components outside ``keep`` were dropped."""
    noise, aux = take_groups(params.noise, params.noise_aux, keep[0])
    membership = None if params.membership is None else membership_prune(params.membership, keep[0])
    return VariationalParams(noise, aux, params.fixed, new_prior_params, membership, params.scales)


def empty_component_cost(prior: RandomEffectsPrior, params: VariationalParams, layer: int, config: VIConfig) -> float:
    """The prior's mean-field gap of a data-free component, plus its noise factors' (first layer, per-cluster noise)."""
    gap = prior.empty_component_cost(layer)
    if layer == 0 and is_per_cluster(params.noise):
        gap += empty_noise_cost(config.noise_scale)
    return gap


def elbo_globals(params: VariationalParams, prior: RandomEffectsPrior, config: VIConfig) -> float:
    """E_q[log p(globals)] - E_q[log q(globals)] for every global factor."""
    total = noise_elbo(params.noise, params.noise_aux, config.noise_scale)
    if params.scales is not None:
        total += scales_term(params.scales)
    if params.fixed is not None:
        m, v, logdet = params.fixed.moments()
        p = m.shape[0]
        total += float(
            -0.5 * p * (LOG_2PI + np.log(config.fixed_var))
            - 0.5 * (m @ m + np.trace(v)) / config.fixed_var
            + gaussian_entropy(logdet, p)
        )
    total += prior.elbo(params.prior)
    if params.membership is not None:
        # the membership model replaces the first layer's Dirichlet weights: its KL leaves the bound
        dirichlet, rho = prior.first_layer_dirichlet(params.prior)
        total += membership_elbo(params.membership, config.membership_scale)
        total += float(dirichlet.kl_from_symmetric(rho))
    return total


def update_globals(
    params: VariationalParams, prior: RandomEffectsPrior, sub: SufficientStats, local: LocalResult, cache: Any,
    psi: np.ndarray | None, config: VIConfig, scale: float = 1.0, rho: float = 1.0,
) -> VariationalParams:
    """Every global factor updated from a local step on ``sub``: the prior's, q(w), q(sigma^2) and its
    auxiliary, and the membership model's (closed form; a natural-gradient step ``rho`` with the
    statistics scaled by ``scale`` for minibatches).

    ``psi`` are the membership model's expansion points at ``params`` (:func:`membership_terms`).
    """
    paths = prior.path_components()
    new = replace(params, prior=prior.update(params.prior, local.moments.scaled(scale), cache, rho))
    new = _update_noise_and_fixed(new, sub, local, path_groups(new.noise, paths), config, scale, rho)
    if new.membership is not None:
        sums = membership_sums_of(sub, local, psi, paths[:, 0])
        new = replace(new, membership=membership_from_sums(new.membership, sums, config.membership_scale, scale, rho))
    return new


def membership_terms(
    params: VariationalParams, prior: RandomEffectsPrior, stats: SufficientStats | StatsBackend
) -> tuple[np.ndarray | MembershipPathWeights | None, np.ndarray | None]:
    """Per (subject, path) log-weight additions (N, M) of the membership model, and its expansion points (N, K_1 - 1).

    The path weights of the prior hold E[log pi_k] of the first layer; these replace it by the
    membership bound of each subject (None, None without a membership model). A statistics backend
    (a Dask fit) holds the subjects' covariates where their statistics are: for it, the
    :class:`~dmlmm.priors.membership.MembershipPathWeights` that its local step evaluates there, and no points
    (the step returns the membership sums the update needs, :func:`~dmlmm.inference.backend.membership_sums_of`).
    """
    if params.membership is None:
        return None, None
    dirichlet, _ = prior.first_layer_dirichlet(params.prior)
    weights = MembershipPathWeights(params.membership, prior.path_components()[:, 0], dirichlet.mean_log)
    if not isinstance(stats, SufficientStats):
        return weights, None
    return weights.of(stats.membership)


def _update_noise_and_fixed(
    params: VariationalParams,
    stats: SufficientStats,
    local: LocalResult,
    groups: np.ndarray,
    config: VIConfig,
    scale: float,
    rho: float,
) -> VariationalParams:
    """q(w), then q(sigma^2) (per group), then its auxiliary, each given the others (closed form).

    ``groups`` (M,): the noise factor of each path (all 0 for shared noise).
    """
    fixed = params.fixed
    s_path = np.atleast_1d(params.noise.mean_inv)[groups]  # (M,) E[1/sigma^2] of each path
    if fixed is not None and not config.joint_fixed:  # (joint: q(w) came with the local step)
        P = stats.dim_fixed
        ftf, fty = fixed_sums(stats, local, s_path)  # weighted by E_q(c_i)[E[1/sigma^2_c]]
        prec = np.eye(P) / config.fixed_var + scale * ftf
        shift = scale * (fty - s_path @ local.path_xtf_b)
        fixed = blend(fixed, Gaussian(prec, shift), rho)
    if fixed is None:
        wm, wc = np.zeros(stats.dim_fixed), np.zeros((stats.dim_fixed, stats.dim_fixed))
    else:
        wm, wc, _ = fixed.moments()
    rss, n_obs = residual_sums(stats, local, wm, wc)
    noise = blend(params.noise, noise_target(params.noise, params.noise_aux, groups, rss, n_obs, scale), rho)
    aux_target = InvGamma(np.ones_like(np.asarray(noise.shape)), np.asarray(noise.mean_inv + 1.0 / config.noise_scale**2))
    aux = blend(params.noise_aux, aux_target, rho)
    return replace(params, noise=noise, noise_aux=aux, fixed=fixed)


def init_noise_and_fixed(
    stats: SufficientStats, b_hat: np.ndarray, config: VIConfig, penalties: np.ndarray | None = None
) -> tuple[InvGamma, InvGamma, Gaussian | None]:
    """Starting noise and fixed-effect factors from rough per-subject estimates ``b_hat`` (N, D)
    (:func:`init_globals` without the subject scales)."""
    return init_globals(stats, b_hat, config, penalties)[:3]


def init_globals(
    stats: SufficientStats, b_hat: np.ndarray, config: VIConfig, penalties: np.ndarray | None = None
) -> tuple[InvGamma, InvGamma, Gaussian | None, SubjectScales | None]:
    """Starting noise, fixed-effect and (with ``config.subject_df``) subject-scale factors from rough
    per-subject estimates ``b_hat`` (N, D).

    The starting sigma^2 is the residual sum of squares over the observations, floored at 1e-3.
    With ``penalties`` (N,), the ridge fits' penalties ``(b_i - m)' P (b_i - m)``
    (:func:`dmlmm.models.starting.ridge_estimates`), they are added to it: ``(rss + sum
    penalties) / n`` is the maximum-likelihood sigma^2 of the ridge model ``b_i ~ N(m, sigma^2 P^-1)``,
    since ``r_i' (I + X_i P^-1 X_i')^-1 r_i`` is subject i's residual plus penalty at its ridge fit
    (``r_i = y_i - X_i m``). Without them, ridge fits that nearly interpolate a subject's few visits
    (three visits, 20 basis functions) leave a residual near zero, and a fit started from that
    noise level lets the random effects absorb the noise and climbs out of it slowly or not at all.
    Each subject's scale starts from its own residual plus penalty over twice that sigma^2
    (:func:`~dmlmm.inference.subject_scales.initial_scales`; started at weight 1 for every subject
    instead, dietox's deep mixture settled in two clusters with nu at its ceiling, ELBO 397.7, where
    nu = 5.3 reaches 410.2 with one cluster).
    """
    P = stats.dim_fixed
    fixed = None
    w = np.zeros(P)
    if P > 0:
        lhs = stats.FtF.sum(axis=0) + 1e-6 * np.eye(P)
        rhs = stats.Fty.sum(axis=0) - np.einsum("ndp,nd->p", stats.XtF, b_hat)
        w = np.linalg.solve(lhs, rhs)
    per_subject = subject_residuals(stats, b_hat, w)
    rss = per_subject.sum()
    if penalties is not None:
        rss = rss + float(np.sum(penalties))
        per_subject = per_subject + penalties
    n = stats.n_obs.sum()
    s2 = max(rss / max(n, 1), 1e-3)
    shape = 0.5 + 0.5 * n
    noise = InvGamma(np.asarray(shape), np.asarray(shape * s2))
    aux = InvGamma(np.asarray(1.0), np.asarray(1.0 / s2 + 1.0 / config.noise_scale**2))
    if P > 0:
        prec = np.eye(P) / config.fixed_var + stats.FtF.sum(axis=0) / s2
        fixed = Gaussian(prec, prec @ w)
    scales = None
    if config.subject_df is not None:
        scales = initial_scales(stats.n_obs, config.subject_df, 0.5 * per_subject / s2, config.learn_df)
    return noise, aux, fixed, scales


def subject_residuals(stats: SufficientStats, b_hat: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Each subject's residual sum of squares ``|y_i - X_i b_i - F_i w|^2`` (N,) at point estimates."""
    return (
        stats.yty
        - 2 * np.einsum("nd,nd->n", stats.Xty, b_hat)
        + np.einsum("nd,nde,ne->n", b_hat, stats.XtX, b_hat)
        - 2 * stats.Fty @ w
        + 2 * np.einsum("nd,ndp,p->n", b_hat, stats.XtF, w)
        + np.einsum("p,npq,q->n", w, stats.FtF, w)
    )


def run_vi(
    stats: SufficientStats,
    prior: RandomEffectsPrior,
    params: VariationalParams,
    config: VIConfig,
    rng: np.random.Generator,
    callback: Callable[[int, float], None] | None = None,
) -> VIResult:
    """Run variational inference from ``params`` until the ELBO converges.

    Parameters
    ----------
    stats : SufficientStats of all N subjects, or a StatsBackend holding them elsewhere
        (:mod:`dmlmm.inference.backend`; full batch only).
    prior : RandomEffectsPrior.
    params : VariationalParams, the starting point.
    config : VIConfig.
    rng : Generator (unused by coordinate ascent itself; kept for the callers' uniform signature).
    callback : called as ``callback(iteration, elbo)`` after each iteration.
    """
    t0 = time.perf_counter()
    N = stats.n_subjects
    P = stats.dim_fixed
    if config.batch_size is not None and config.batch_size < N:
        raise ValueError(
            "run_vi fits full batch; minibatch fits run through dmlmm.inference.stochastic.run_vi_stochastic"
        )
    if config.joint_fixed and (prior.n_paths != 1 or not isinstance(stats, SufficientStats)):
        raise ValueError("joint_fixed needs a one-path prior and in-memory statistics")
    if params.scales is not None and (config.joint_fixed or not supports_scales(stats)):
        raise ValueError("subject-level residual scales need statistics that can hold them and no joint_fixed")
    if config.translate_means and (params.scales is not None or prior.first_means(params.prior) is None):
        # no move with subject-level residual scales (inference.translate) or without free means (a zero-mean
        # prior): nor the local step's sums for it
        config = replace(config, translate_means=False)
    history: list[float] = []
    floor = elbo_floor(stats)
    converged = gave_up = False
    restrict = not config.hard_assignment and prior.n_paths > 1
    active = None
    last_full = 0
    pruned_at: list[int] = []
    kept: list = [None] * len(prior.layer_counts(params.prior))
    # SQUAREM (full batch): ``anchor`` is theta0 of the current cycle (after one plain step),
    # ``fallback`` the plain theta2 while the extrapolated point is being evaluated
    accel = Squarem() if config.accelerate else None
    anchor: VariationalParams | None = None
    fallback: tuple[VariationalParams, float] | None = None
    prev_local: Any = None
    local: LocalResult | None = None
    params_at_local: VariationalParams | None = None
    full = False
    it = 0
    for it in range(1, config.max_iter + 1):
        paths = prior.path_components()
        sub, scale, rho = weighted_by_scales(stats, params, paths), 1.0, 1.0
        full = active is None or it - last_full >= config.full_every
        try:
            with np.errstate(over="raise", invalid="raise", divide="raise") if fallback is not None else _NO_RAISE:
                pp, cache = prior.path_prior(params.prior)
                offsets, psi = membership_terms(params, prior, sub)
                local, params = _local_step(sub, pp, params, paths, config, None if full else active, offsets)
        except (np.linalg.LinAlgError, FloatingPointError) as exc:
            if fallback is None:
                if isinstance(exc, NumericalError):
                    raise
                raise NumericalError(breakdown_message(str(exc).rstrip("."), it, history) + _noise_free_hint(params)) \
                    from exc
            accel.reject()  # an extrapolated point beyond what the arithmetic can hold: take the plain step
            params, fallback = fallback[0], None
            continue
        if full:
            last_full = it
        params_at_local = params
        elbo = scale * float(local.log_evidence.sum()) + elbo_globals(params, prior, config)
        if fallback is not None:  # this was an extrapolated point: keep it only if the ELBO did not drop
            plain, step = fallback
            fallback = None
            if not np.isfinite(elbo) or elbo < history[-1]:
                accel.reject()
                params = plain  # the plain step's globals; their local step is the next iteration
                continue
            accel.accept(step)
        if not np.isfinite(elbo):  # a plain step: nothing to fall back to
            raise NumericalError(breakdown_message(f"the ELBO became {elbo}", it, history))
        if restrict:
            active = active_paths(sub, local, config.active_threshold)
        history.append(elbo)
        if callback is not None:
            callback(it, elbo)
        if _has_converged(history, config, floor) and _resp_settled(sub, prev_local, local, config):
            if full or not restrict:
                converged = True
                break
            last_full = -config.full_every  # confirm with a step over all paths
        if it == config.max_iter and full:
            break  # out of budget: keep these globals, whose full local step is at hand
        if config.give_up_below is not None and _cannot_reach(history, config.give_up_below, config.max_iter - it,
                                                              config.give_up_window):
            gave_up = True
            break
        prev_local = local
        new = update_globals(params, prior, sub, local, cache, psi, config, scale, rho)
        if config.translate_means:
            new = translate_means(new, prior, local, pp, noise_moments(params, P, paths), noise_moments(new, P, paths))
        if new.scales is not None:
            new = update_subject_scales(new, stats, local, config)
        if accel is not None and anchor is not None:
            params, fallback = _extrapolate(anchor, params, new, accel, config.joint_fixed)
            anchor = None
        else:
            anchor = params if accel is not None else None
            params = new
        if config.prune_threshold > 0 and it >= config.prune_after and full:
            counts = prior.layer_counts(params.prior)
            check_sizes_finite(counts, it, history)
            keep = [(c >= config.prune_threshold) | (c == c.max()) for c in counts]
            if any(not k.all() for k in keep):
                if fallback is not None:  # prune the plain step, not an extrapolation
                    params, fallback = fallback[0], None
                    counts = prior.layer_counts(params.prior)
                    keep = [(c >= config.prune_threshold) | (c == c.max()) for c in counts]
                prior, new_prior = prior.prune(params.prior, keep)
                params = prune_params(params, new_prior, keep)
                kept = [np.flatnonzero(k) if kp is None else kp[np.flatnonzero(k)] for k, kp in zip(keep, kept)]
                pruned_at.append(it)
                active = None
                anchor, prev_local = None, None
    # the local step on all subjects at the final globals: the last one when it was (full batch,
    # all paths, at these globals), else one more
    at_hand = it > 0 and full and len(history) > 0 and local is not None and fallback is None \
        and (converged or gave_up or it == config.max_iter) and len(local.path_quad) == prior.n_paths and params_at_local is params
    if at_hand:
        elbo = history[-1]
    else:
        local, params = final_local_step(stats, prior, params, config)
        elbo = float(local.log_evidence.sum()) + elbo_globals(params, prior, config)
        if not converged:
            history.append(elbo)
    if not converged and not gave_up:
        warnings.warn(
            f"variational inference stopped at max_iter={config.max_iter} before the ELBO converged "
            f"(last relative change {_rel_change(history, _window(config), floor):.2e}, tol={config.tol:g}); "
            "increase max_iter",
            ConvergenceWarning,
            stacklevel=3,
        )
    kept = [np.arange(len(c)) if k is None else k for k, c in zip(kept, prior.layer_counts(params.prior))]
    return VIResult(params, prior, elbo, history, it, converged, local, time.perf_counter() - t0, pruned_at, kept,
                    gave_up=gave_up)


def final_local_step(stats, prior: RandomEffectsPrior, params: VariationalParams, config: VIConfig) -> tuple[Any, VariationalParams]:
    """The local step on all subjects and all paths at ``params``, as a run of :func:`run_vi` ends: its
    ``VIResult.local`` (and ``params``, with what the step optimised too). Deterministic, so a fit whose
    local results were released can compute them again (the Dask fit's set-aside response scale)."""
    pp, _ = prior.path_prior(params.prior)
    local, params, _ = _scaled_local_step(stats, pp, params, prior, config)
    return local, params


def _scaled_local_step(stats, pp, params: VariationalParams, prior: RandomEffectsPrior, config: VIConfig):
    """The local step on all paths for the subjects of ``stats`` (the data's own statistics), weighted by
    their residual scales if any: the local result, ``params`` with what the step optimised too, and the
    weighted statistics."""
    sub = weighted_by_scales(stats, params, prior.path_components())
    local, params = _local_step(sub, pp, params, prior.path_components(), config, None,
                                membership_terms(params, prior, sub)[0])
    return local, params, sub


def local_step_with_scales(stats, pp, params: VariationalParams, prior: RandomEffectsPrior, config: VIConfig):
    """The local step on all paths (prior ``pp``) for the subjects of ``stats`` (the data's own statistics) at
    ``params``, whose residual scales (if any) are those subjects': their data weighted by E[1/v_i] and their
    log evidence shifted by ``-n_i/2 E[log v_i]`` (:func:`weighted_by_scales`). A minibatch's or a check
    subset's step (:mod:`dmlmm.inference.stochastic`). Returns the local result and the weighted statistics
    (``stats`` itself without scales), which the global updates take."""
    local, _, sub = _scaled_local_step(stats, pp, params, prior, config)
    return local, sub


def weighted_by_scales(stats, params: VariationalParams, path_components: np.ndarray | None = None):
    """The statistics the local step and the global updates see: each subject's weighted by E[1/v_i]
    with subject-level residual scales, else as they are. ``path_components`` (M, L): the paths, whose noise
    groups a statistics backend's step needs (:func:`~dmlmm.inference.backend.weighted_by`)."""
    if params.scales is None:
        return stats
    groups = None if path_components is None else path_groups(params.noise, path_components)
    return weighted_by(stats, params.scales, groups)


def update_subject_scales(params: VariationalParams, stats, local: LocalResult,
                          config: VIConfig) -> VariationalParams:
    """q(v) (and nu, when learned) given the local step's q(b, c) and the updated q(w), q(sigma^2)."""
    P = stats.dim_fixed
    wm, wc = (np.zeros(P), np.zeros((P, P))) if params.fixed is None else params.fixed.moments()[:2]
    return replace(params, scales=updated_scales(stats, params.scales, local, wm, wc, params.noise.mean_inv,
                                                 config.learn_df))


def _local_step(
    stats, pp, params: VariationalParams, paths: np.ndarray, config: VIConfig, active, log_weight
) -> tuple[Any, VariationalParams]:
    """The local step at ``params``, and ``params`` with what the step optimised too.

    With ``config.joint_fixed`` the step optimises q(w) jointly with the random effects
    (:func:`~dmlmm.inference.joint.joint_local_step`), so q(w) is replaced by its result.
    """
    P = stats.dim_fixed
    if config.joint_fixed:
        local = joint_local_step(stats, pp, noise_moments(params, P, paths), config.fixed_var)
        return local, replace(params, fixed=local.fixed)
    noise = noise_moments(params, P, paths)
    local = run_local_step(stats, pp, noise, config.hard_assignment, active=active,
                           moment_threshold=config.moment_threshold, log_weight=log_weight,
                           move_sums=config.translate_means)
    if params.scales is not None and isinstance(stats, SufficientStats):  # weighted by E[1/v_i] (weighted_by_scales);
        # a backend's step does this where its subjects are (dmlmm.distributed.scales)
        log_evidence, moments = with_scales(local.log_evidence, local.resp, local.mean_b, stats, pp.precision, pp.shift,
                                            noise.prec, noise.w_mean, params.scales, path_groups(params.noise, paths),
                                            config.moment_threshold)
        local = replace(local, log_evidence=log_evidence, scale_moments=moments)
    return local, params


def _extrapolate(
    theta0: VariationalParams, theta1: VariationalParams, theta2: VariationalParams, accel: Squarem,
    skip_fixed: bool = False,
) -> tuple[VariationalParams, tuple[VariationalParams, float] | None]:
    """The SQUAREM point from three successive globals, and the plain ``theta2`` to fall back to.

    ``skip_fixed``: leave q(w) out (the joint local step recomputes it; its natural parameters
    would otherwise dominate the step length). Returns ``(theta2, None)`` when there is nothing
    to extrapolate (or the point is not finite), and when an iterate has no unconstrained
    coordinates: a precision matrix that is positive definite only to rounding (phenobarb's deep
    mixture with ``idiosyncratic_shape=1000``: loading rows of roughness 5e5 whose idiosyncratic
    variances are near 1e-7) has no Cholesky factor, and the plain step goes on without it.
    """
    # subject scales kept by a statistics backend (backend.RemoteScales) are extrapolated where they are
    remote = theta2.scales is not None and not isinstance(theta2.scales, SubjectScales)
    left_out = {"fixed": None} if skip_fixed else {}
    if remote:
        left_out["scales"] = None
    try:
        u0, u1, u2 = (to_unconstrained(replace(t, **left_out)) for t in (theta0, theta1, theta2))
    except np.linalg.LinAlgError:
        return theta2, None
    if any(a.shape != b.shape for a, b in zip(u0, u2)) or len(u0) != len(u2):
        return theta2, None
    extra = theta2.scales.squarem_norms(theta0.scales, theta1.scales) if remote else (0.0, 0.0)
    got = squarem_point(u0, u1, u2, accel.max_step, extra)
    if got is None:
        return theta2, None
    leaves, step = got
    if not all(np.all(np.isfinite(x)) for x in leaves):
        return theta2, None
    try:
        point = from_unconstrained(replace(theta2, **left_out), leaves)
    except (FloatingPointError, np.linalg.LinAlgError):
        return theta2, None
    if remote:
        point = replace(point, scales=theta2.scales.squarem_point(theta0.scales, theta1.scales, step))
    point = replace(point, fixed=theta2.fixed) if skip_fixed else point
    return point, (theta2, step)


def _resp_settled(stats, prev: Any, local: Any, config: VIConfig) -> bool:
    """Full batch: whether no responsibility moved more than ``config.resp_tol`` since the last step."""
    if config.resp_tol is None:
        return True
    if prev is None:
        return False
    return resp_change(stats, prev, local) <= config.resp_tol


#: Accelerated runs: the convergence test averages the ELBO's gain over this many iterations.
ACCEL_WINDOW = 6


#: The relative ELBO test divides by |ELBO|, but never by less than this many nats per observation.
ELBO_FLOOR_PER_OBS = 0.1


def elbo_floor(stats) -> float:
    """The smallest |ELBO| that the relative convergence test divides by: :data:`ELBO_FLOOR_PER_OBS` nats per
    observation of ``stats`` (SufficientStats or a StatsBackend: :func:`~dmlmm.inference.backend.total_obs`).

    The ELBO's origin is arbitrary (a sum of log densities: a change of the response's units shifts it by
    n log(units)), so where a fit's ELBO crosses zero, a gain relative to |ELBO| grows without bound and no
    gain is small enough. The responses are standardised inside the fits, which puts the ELBO per observation
    between about -2.5 and +1.5 nats; on the accuracy harness every fit outside DGP 2 lies at least 0.43 nats
    from zero, but DGP 2's deep mixtures lie within 0.2 of it, and one of them (the research settings, seed 3,
    ELBO -4.2 over 1,767 observations) used all of ``max_iter = 1000`` without converging. With this floor
    it converges at the same optimum (docs/models.md, "Variational inference in plain words", the stopping rule)."""
    return ELBO_FLOOR_PER_OBS * total_obs(stats)


def _rel_change(history: list[float], window: int = 1, floor: float = 0.0) -> float:
    """|ELBO gain| per iteration over the last ``window`` iterations, relative to |ELBO| (at least ``floor``)."""
    if len(history) < window + 1:
        return np.inf
    return abs(history[-1] - history[-1 - window]) / window / max(abs(history[-1]), floor, 1e-12)


def _has_converged(history: list[float], config: VIConfig, floor: float = 0.0) -> bool:
    """Whether the ELBO has stopped moving: its relative gain per iteration is below ``config.tol``
    (relative to |ELBO|, or to ``floor`` where |ELBO| is smaller: :func:`elbo_floor`).

    Plain coordinate ascent gains less at every step, so the last step tells. With SQUAREM the
    recorded ELBO alternates between an extrapolation's large gain and a plain step's small one
    (Blackmore, ``MixtureLMM``: gains of 0.007-0.05 nats between jumps of 0.06-0.86), and one small
    step stopped the run while the ELBO still rose by about 0.3 nats every four iterations; an
    accelerated run is tested on its mean gain over the last :data:`ACCEL_WINDOW` iterations
    (three extrapolation cycles) instead.
    """
    return len(history) > config.min_iter and _rel_change(history, _window(config), floor) < config.tol


def check_sizes_finite(counts: list[np.ndarray], it: int, history: list[float], last_at: int | None = None) -> None:
    """Raise :class:`~dmlmm.exceptions.NumericalError` when the components' sizes ``counts`` (one array
    per layer) are not all finite: pruning would drop every component (see :func:`breakdown_message`)."""
    if not all(np.isfinite(c).all() for c in counts):
        raise NumericalError(breakdown_message("the components' sizes stopped being finite", it, history, last_at))


#: Residual variance (a share of the standardised response's) below which a breakdown is put down to noise-free data.
NOISE_FREE_SHARE = 1e-8


def _noise_free_hint(params) -> str:
    """What a breakdown's message adds where the residual variance had all but vanished: on noise-free data (every
    subject on sin t) the local step's precision lost positive definiteness as sigma^2 fell to 1e-12 and below."""
    noise = getattr(getattr(params, "noise", None), "mean", None)
    if noise is None or not np.size(noise) or float(np.min(noise)) >= NOISE_FREE_SHARE:
        return ""
    return (f". The residual variance had fallen to {float(np.min(noise)):.1e} of the response's variance: the curves "
            "reproduce the response exactly. Is it noise-free (a simulation, a model output, a variable derived from "
            "time)? Such data leave no noise to estimate: add their measurement error, or fit fewer basis functions")


def breakdown_message(what: str, it: int, history: list[float], last_at: int | None = None) -> str:
    """The message of a :class:`~dmlmm.exceptions.NumericalError` raised at iteration ``it``; the last
    entry of ``history`` was computed at iteration ``last_at`` (default: ``len(history)``)."""
    last = f"{history[-1]:.6g} at iteration {len(history) if last_at is None else last_at}" if history else "none yet"
    return (f"variational inference broke down at iteration {it}: {what} (last finite ELBO: {last}). The data "
            "or the settings are beyond what double precision resolves: check the response for extreme values "
            "and units, and hyperparameters set far from their defaults")


def _cannot_reach(history: list[float], target: float, left: int, window: int = GIVE_UP_WINDOW,
                  margin: float = GIVE_UP_MARGIN) -> bool:
    """Whether a run still below ``target`` would stay below it if it gained ``margin`` times its mean
    gain per iteration over the last ``window`` iterations for all ``left`` iterations of its budget.

    Coordinate ascent gains less and less as it converges, so a straight line through its recent gains
    overestimates where it ends; the margin covers a run that leaves a plateau with a sudden climb (a
    component taking over). Measured on the benchmark fits' finishing runs of the requested start
    (Blackmore, PBC, DGP 1-3, both mixtures): with a 20-iteration window and no margin the rule stopped
    one run that went on to win by 0.67 nats (Blackmore, deep mixture, log1p scale: it climbed 58 nats
    in its last 150 iterations after a slow stretch); with these settings it stopped none that would
    have won (Blackmore's two losing runs after 113 and 75 of their 363 and 439 iterations).
    """
    if len(history) <= window or history[-1] >= target:
        return False
    gain = max(history[-1] - history[-1 - window], 0.0) / window
    return history[-1] + margin * gain * left < target


def _window(config: VIConfig) -> int:
    """Iterations over which the convergence test averages the ELBO's gain (see :func:`_has_converged`)."""
    return ACCEL_WINDOW if config.accelerate and config.batch_size is None else 1
