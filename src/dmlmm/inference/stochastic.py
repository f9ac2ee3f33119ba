"""Minibatch fits that reach the full-batch answer: warm start, natural gradients, settle rule, full pass.

Plain stochastic natural gradients from a rough start (ridge fits, k-means) lose
the clusters at scale: with dozens of paths open and no delete moves, the true
groups are cut into 25-35 paths whose subjects never move again, and the noisy
minibatch ELBO lets the old stopping rule stop anywhere. A stochastic fit here
runs in four stages:

1. **Warm start on a subsample.** A full-batch fit (several starting sizes,
   delete moves, pruning; :func:`~dmlmm.inference.starts.run_vi_with_starts`)
   on ``subsample`` subjects drawn at random. It decides the structure:
   components that it empties are gone for the rest of the fit.
2. **Rescale.** One natural-gradient step of size 1 with the subsample's
   moments scaled by ``N / n_sub``: the globals now speak for N subjects.
3. **Stochastic natural gradients** on minibatches of all N subjects
   (Hoffman et al. 2013) with Robbins-Monro steps ``(t + delay) ** -forgetting``.
   Every ``check_every`` iterations a local step on a fixed *check subset*
   gives each of its subjects' most probable path and an ELBO estimate that
   depends on the globals only (not on which minibatch was drawn). The phase
   stops (:func:`settled`) when the hard assignments of the check subset have
   changed for at most ``label_tol`` of its subjects at each of the last
   ``patience`` checks *and* the check ELBO, averaged over the last ``window``
   checks, moved by less than ``elbo_tol`` (relative) against the ``window``
   before. It never stops before ``min_checks`` checks.
4. **Full passes.** Up to ``final_iter`` full-batch coordinate-ascent
   iterations on all N subjects (cheap once few paths are left); the reported
   ELBO, responsibilities and random effects come from a local step on all
   subjects at the final globals.

``converged`` is reported only when stage 3 stopped by its rule (not by its
iteration budget), the full passes changed the most probable path of at
most ``label_tol`` of the check subset, and no first-layer component that
held more than ``label_tol`` of the warm start's subjects was emptied after
it (:func:`lost_clusters`): the settle rule compares consecutive checks, so
a cluster whose subjects drain away a few at a time would pass it.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..expfam import InvGamma
from ..sufficient import SufficientStats
from ..exceptions import ConvergenceWarning, NumericalError
from ..priors.base import RandomEffectsPrior
from .engine import (
    VariationalParams,
    VIConfig,
    VIResult,
    breakdown_message,
    check_sizes_finite,
    elbo_floor,
    elbo_globals,
    local_step_with_scales,
    membership_terms,
    prune_params,
    run_vi,
    update_globals,
    update_subject_scales,
    weighted_by_scales,
)
from .local import LocalResult, observation_factor
from .starts import Init, run_vi_with_starts
from .subject_scales import SubjectScales, optimal_scales

_log = logging.getLogger(__name__)

__all__ = ["StochasticSettings", "settled", "label_change", "lost_clusters", "unsettled_message", "rescale",
           "run_vi_stochastic", "all_subject_scales"]


@dataclass(frozen=True)
class StochasticSettings:
    """Settings of a stochastic fit (module docstring; defaults measured on DGP 1-like data).

    Attributes
    ----------
    subsample : subjects of the full-batch warm start (all of them when N is smaller).
    warm_tol : relative ELBO tolerance of the warm start's last run (at least the fit's ``tol``).
    check_size : subjects of the fixed check subset.
    check_every : iterations between checks.
    min_checks : fewest checks before the stochastic phase may stop.
    patience : consecutive checks whose assignment change must stay within ``label_tol``.
    label_tol : largest fraction of check subjects allowed to change their most probable path.
    window : checks averaged by the smoothed ELBO.
    elbo_tol : relative change of the smoothed check ELBO below which it counts as settled.
    delay, forgetting : Robbins-Monro steps ``(t + delay) ** -forgetting``.
    max_iter : budget of the stochastic phase (iterations); None: the fit's ``max_iter``.
    final_iter : full-batch iterations at the end (at least 1).
    """

    subsample: int = 2000
    warm_tol: float = 1e-4
    check_size: int = 2000
    check_every: int = 10
    min_checks: int = 4
    patience: int = 2
    label_tol: float = 0.005
    window: int = 2
    elbo_tol: float = 1e-4
    delay: float = 10.0
    forgetting: float = 0.6
    max_iter: int | None = None
    final_iter: int = 30


def label_change(previous: np.ndarray | None, current: np.ndarray) -> float:
    """Fraction of subjects whose most probable path differs between two checks (1.0 without a previous one).

    Parameters
    ----------
    previous, current : (C,) int, path of each check subject (the same paths' numbering).
    """
    if previous is None or previous.shape != current.shape:
        return 1.0
    return float(np.mean(previous != current))


def settled(changes: list[float], elbos: list[float], settings: StochasticSettings, floor: float = 0.0) -> bool:
    """The stopping rule of the stochastic phase, from the history of checks.

    Parameters
    ----------
    changes : fraction of check subjects whose most probable path changed at each check (:func:`label_change`).
    elbos : check ELBO at each check (same length).
    settings : StochasticSettings (``min_checks``, ``patience``, ``label_tol``, ``window``, ``elbo_tol``).
    floor : the smallest |ELBO| that the relative change is taken against (:func:`~dmlmm.inference.engine.elbo_floor`
        of all subjects: the check ELBO speaks for all of them).

    Returns
    -------
    bool : True when the clustering no longer moves and the smoothed ELBO has levelled off.
    """
    n = len(changes)
    w = max(1, settings.window)
    if n < max(settings.min_checks, settings.patience, 2 * w):
        return False
    if max(changes[-settings.patience:]) > settings.label_tol:
        return False
    recent = float(np.mean(elbos[-w:]))
    before = float(np.mean(elbos[-2 * w:-w]))
    return abs(recent - before) <= settings.elbo_tol * max(abs(recent), floor, 1e-12)


def rescale(
    stats: SufficientStats, sub: SufficientStats, prior: RandomEffectsPrior, params: VariationalParams,
    local: LocalResult, config: VIConfig,
) -> VariationalParams:
    """A natural-gradient step of size 1 from a subsample's local step: globals of N subjects.

    Parameters
    ----------
    stats : SufficientStats of all N subjects (only N is used).
    sub : SufficientStats of the n subjects ``local`` belongs to.
    local : the local step on ``sub`` at ``params``.
    """
    scale = stats.n_subjects / sub.n_subjects
    _, cache = prior.path_prior(params.prior)
    psi = membership_terms(params, prior, sub)[1]
    return update_globals(params, prior, sub, local, cache, psi, config, scale, 1.0)


def _check(
    check: SufficientStats, check_idx: np.ndarray, n_total: int, prior: RandomEffectsPrior, params: VariationalParams,
    config: VIConfig,
) -> tuple[np.ndarray, float]:
    """Most probable path (C,) of each check subject (positions ``check_idx``) and the check ELBO estimate
    (scaled to N)."""
    pp, _ = prior.path_prior(params.prior)
    loc = _batch_local_step(check, check_idx, pp, prior, params, config)[0]
    elbo = n_total / check.n_subjects * float(loc.log_evidence.sum()) + elbo_globals(params, prior, config)
    return loc.resp.argmax(axis=1), elbo


def _on_subjects(params: VariationalParams, idx: np.ndarray) -> VariationalParams:
    """``params`` with the residual scales of the subjects at positions ``idx`` only (unchanged without scales)."""
    if params.scales is None:
        return params
    q = params.scales.q
    return replace(params, scales=SubjectScales(InvGamma(q.shape[idx], q.rate[idx]), params.scales.df))


def _batch_local_step(sub: SufficientStats, idx: np.ndarray, pp, prior: RandomEffectsPrior, params: VariationalParams,
                      config: VIConfig) -> tuple[LocalResult, SufficientStats]:
    """The local step on the subjects at positions ``idx`` (statistics ``sub``), with their residual scales:
    their data weighted by E[1/v_i] and their log evidence shifted; and the weighted statistics (``sub`` as
    given without scales)."""
    return local_step_with_scales(sub, pp, _on_subjects(params, idx), prior, config)


def _update_batch_scales(params: VariationalParams, sub: SufficientStats, idx: np.ndarray, local: LocalResult,
                         config: VIConfig) -> VariationalParams:
    """q(v_i) of the subjects at ``idx`` given their local step and the current globals (nu held)."""
    if params.scales is None:
        return params
    batch = update_subject_scales(_on_subjects(params, idx), sub, local, replace(config, learn_df=False)).scales
    shape, rate = np.array(params.scales.q.shape, dtype=float), np.array(params.scales.q.rate, dtype=float)
    shape[idx], rate[idx] = batch.q.shape, batch.q.rate
    return replace(params, scales=SubjectScales(InvGamma(shape, rate), params.scales.df))


def all_subject_scales(warm: SubjectScales, rows: np.ndarray, start: SubjectScales, n_obs: np.ndarray) -> SubjectScales:
    """Every subject's q(v) after a warm start on the subjects at ``rows``: theirs from the warm start, the
    others' the optimal q(v) at the warm start's nu for their starting residuals. ``start`` are the
    starting scales of all subjects (:func:`~dmlmm.inference.subject_scales.initial_scales` from the ridge
    fits, whose rates are ``nu_0/2 + R_i``); ``n_obs`` (N,) their numbers of observations."""
    out = optimal_scales(warm.df, n_obs, np.asarray(start.q.rate, dtype=float) - 0.5 * start.df)  # R_i of the ridge fits
    out.q.shape[rows], out.q.rate[rows] = warm.q.shape, warm.q.rate
    return out


@dataclass
class _Phase:
    """What the stochastic phase hands on."""

    prior: RandomEffectsPrior
    params: VariationalParams
    n_iter: int
    settled: bool
    history: list[float]
    labels: np.ndarray
    kept: list[np.ndarray]
    pruned_at: list[int]


def _natural_gradient_phase(
    stats: SufficientStats, prior: RandomEffectsPrior, params: VariationalParams, config: VIConfig,
    settings: StochasticSettings, check_idx: np.ndarray, rng: np.random.Generator,
    callback: Callable[[int, float], None] | None,
) -> _Phase:
    """Stage 3: minibatch natural-gradient steps until :func:`settled` (or the budget)."""
    N = stats.n_subjects
    batch = int(min(config.batch_size or N, N))
    observation_factor(stats)  # computed once here (if it pays) rather than for every minibatch's subset
    check = stats.subset(check_idx)
    floor = elbo_floor(stats)
    kept = [np.arange(len(c)) for c in prior.layer_counts(params.prior)]
    labels, elbo = _check(check, check_idx, N, prior, params, config)
    changes: list[float] = []
    elbos: list[float] = []
    history: list[float] = [elbo]
    pruned_at: list[int] = []
    done = False
    it = checked_at = 0
    budget = config.max_iter if settings.max_iter is None else settings.max_iter
    for it in range(1, budget + 1):
        idx = np.sort(rng.choice(N, size=batch, replace=False))
        sub = stats.subset(idx)
        scale, rho = N / batch, (it + settings.delay) ** (-settings.forgetting)
        pp, cache = prior.path_prior(params.prior)
        loc, weighted = _batch_local_step(sub, idx, pp, prior, params, config)
        psi = membership_terms(params, prior, weighted)[1]
        params = update_globals(params, prior, weighted, loc, cache, psi, config, scale, rho)
        params = _update_batch_scales(params, sub, idx, loc, config)
        if it % settings.check_every:
            continue
        if config.prune_threshold > 0:
            counts = prior.layer_counts(params.prior)
            check_sizes_finite(counts, it, history, checked_at)
            keep = [(c >= config.prune_threshold) | (c == c.max()) for c in counts]
            if any(not k.all() for k in keep):
                prior, new_pp = prior.prune(params.prior, keep)
                params = prune_params(params, new_pp, keep)
                kept = [kp[k] for kp, k in zip(kept, keep)]
                pruned_at.append(it)
                labels = None  # path numbers changed: this check starts a new comparison
        new_labels, elbo = _check(check, check_idx, N, prior, params, config)
        if not np.isfinite(elbo):
            raise NumericalError(breakdown_message(f"the check ELBO became {elbo}", it, history, checked_at))
        checked_at = it
        changes.append(label_change(labels, new_labels))
        elbos.append(elbo)
        history.append(elbo)
        labels = new_labels
        if callback is not None:
            callback(it, elbo)
        if settled(changes, elbos, settings, floor):
            done = True
            break
    return _Phase(prior, params, it, done, history, labels, kept, pruned_at)


def lost_clusters(warm_counts: np.ndarray, survivors: np.ndarray, n_sub: int, tol: float) -> np.ndarray:
    """Shares of the warm start's subjects in the first-layer components that did not survive the later stages.

    Parameters
    ----------
    warm_counts : (K,) expected numbers of the warm start's ``n_sub`` subjects in its first-layer components.
    survivors : (K',) the positions among those K of the components left at the end.
    tol : shares up to this are not counted (a component the warm start barely used may go).

    Returns
    -------
    (m,) the shares above ``tol`` of the components that went, largest first.

    >>> lost_clusters(np.array([600.0, 380.0, 20.0]), np.array([0]), 1000, 0.005)
    array([0.38, 0.02])
    """
    gone = np.setdiff1d(np.arange(len(warm_counts)), np.asarray(survivors, dtype=int))
    share = np.sort(np.asarray(warm_counts, dtype=float)[gone] / n_sub)[::-1]
    return share[share > tol]


def unsettled_message(settled: bool, moved: float, lost: np.ndarray, n_warm: int, n_sub: int, tol: float) -> str:
    """The ConvergenceWarning of a stochastic fit that did not settle.

    Parameters
    ----------
    settled : whether the stochastic phase stopped by its rule (not its budget).
    moved : share of the check subjects that the full passes moved to another cluster.
    lost : (m,) the warm start's shares of the clusters emptied after it (:func:`lost_clusters`).
    n_warm, n_sub : first-layer components the warm start kept, and its subjects.
    tol : ``label_tol``.

    Where the full passes still move subjects or a cluster was lost, the full-data optimum lies elsewhere and the
    message names the full-batch fit too (DGP 2 at 10,000 subjects: the full-batch fit ended 10 % higher in ELBO,
    with 9 first-layer components against the minibatch fit's 5; docs/models.md, "Stochastic fits").

    >>> said = unsettled_message(True, 0.043, np.array([]), 5, 2000, 0.005)
    >>> said[:90]
    'the stochastic fit did not settle (the full passes moved 4.3% of the check subjects to ano'
    >>> said.endswith("increase max_iter or batch_size, or fit full batch (batch_size='full')")
    True
    >>> unsettled_message(False, 0.2, np.array([]), 5, 2000, 0.005).endswith("(the stochastic phase used its budget); "
    ...                                                                    "increase max_iter or batch_size")
    True
    """
    why = []
    elsewhere = len(lost) > 0
    if not settled:
        why.append("the stochastic phase used its budget")
    elif moved > tol:
        why.append(f"the full passes moved {moved:.1%} of the check subjects to another cluster")
        elsewhere = True
    if len(lost):
        why.append(f"the minibatch steps emptied {len(lost)} of the {n_warm} clusters that its warm start on {n_sub} "
                   f"subjects kept, holding {', '.join(f'{x:.1%}' for x in lost)} of them")
    return (f"the stochastic fit did not settle ({'; '.join(why)}); increase max_iter or batch_size"
            + (", or fit full batch (batch_size='full')" if elsewhere else ""))


def run_vi_stochastic(
    stats: SufficientStats,
    prior: RandomEffectsPrior,
    make_init: Callable[[np.ndarray | None], Init],
    resize: Callable[[tuple[int, ...]], RandomEffectsPrior],
    config: VIConfig,
    rng: np.random.Generator,
    settings: StochasticSettings = StochasticSettings(),
    moves: bool = True,
    callback: Callable[[int, float], None] | None = None,
    start_scales: SubjectScales | None = None,
) -> VIResult:
    """A minibatch fit in four stages (module docstring).

    Parameters
    ----------
    stats : SufficientStats of all N subjects.
    prior : the requested random-effects prior.
    make_init : ``make_init(rows)`` gives the ``init(prior, generator)`` of a fit to the subjects at
        positions ``rows`` (``None``: all), as :func:`~dmlmm.inference.starts.run_vi_with_starts` takes it.
    resize : as :func:`~dmlmm.inference.starts.run_vi_with_starts`.
    config : VIConfig; ``batch_size`` is the minibatch size, ``max_iter`` the budget of the warm start and,
        separately, of the natural-gradient phase.
    rng : the fit's Generator (subsample, check subset, minibatches, the warm start's draws).
    settings : StochasticSettings.
    moves : delete moves in the warm start.
    start_scales : with subject-level residual scales (``config.subject_df``), every subject's starting
        q(v) (:func:`~dmlmm.inference.engine.init_globals`): after the warm start, the subjects outside
        its subsample start from their own at the warm start's nu (:func:`all_subject_scales`).

    Returns
    -------
    VIResult whose ``n_iter`` counts the iterations of all stages, ``elbo_history`` the check ELBOs of
    the stochastic phase then the exact ELBOs of the full passes.
    """
    N = stats.n_subjects
    n_sub = min(N, max(int(settings.subsample), 2))
    rows = np.sort(rng.choice(N, size=n_sub, replace=False))
    check_idx = np.sort(rng.choice(N, size=min(N, settings.check_size), replace=False))
    sub = stats.subset(rows)
    t0 = time.perf_counter()
    full_batch = replace(config, batch_size=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm = run_vi_with_starts(sub, prior, make_init(rows), resize, replace(full_batch, tol=max(config.tol, settings.warm_tol)),
                                  rng, moves=moves)
    prior = warm.prior
    params = rescale(stats, weighted_by_scales(sub, warm.params), prior, warm.params, warm.local, config)
    if warm.params.scales is not None:
        if start_scales is None:
            raise ValueError("a minibatch fit with subject-level residual scales needs every subject's start_scales")
        params = replace(params, scales=all_subject_scales(warm.params.scales, rows, start_scales, stats.n_obs))
    t1 = time.perf_counter()
    _log.info("warm start on %d subjects: %d iterations, %.1f s, components %s", n_sub, warm.n_iter, t1 - t0,
              [len(k) for k in warm.kept])
    phase = _natural_gradient_phase(stats, prior, params, config, settings, check_idx, rng, callback)
    t2 = time.perf_counter()
    _log.info("natural gradients: %d iterations (settled: %s), %.1f s", phase.n_iter, phase.settled, t2 - t1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        final = run_vi(stats, phase.prior, phase.params,
                       replace(full_batch, max_iter=max(1, settings.final_iter), min_iter=1), rng, callback)
    _log.info("full passes: %d iterations, %.1f s", final.n_iter, time.perf_counter() - t2)
    before = phase.prior.path_components()[phase.labels]  # (C, L) components of each check subject's path
    comps = final.prior.path_components()[final.local.resp[check_idx].argmax(axis=1)]
    after = np.stack([k[comps[:, l]] for l, k in enumerate(final.kept)], axis=1)  # in the phase's numbering
    moved = float(np.mean((before != after).any(axis=1)))
    lost = lost_clusters(warm.prior.layer_counts(warm.params.prior)[0], phase.kept[0][final.kept[0]], n_sub,
                         settings.label_tol)  # final.kept numbers the phase's components, phase.kept the warm start's
    converged = phase.settled and moved <= settings.label_tol and len(lost) == 0
    if not converged:
        warnings.warn(unsettled_message(phase.settled, moved, lost, len(warm.kept[0]), n_sub, settings.label_tol),
                      ConvergenceWarning, stacklevel=3)
    kept0 = [w[p] for w, p in zip(warm.kept, phase.kept)]
    final.kept = [k0[k] for k0, k in zip(kept0, final.kept)]
    final.pruned_at = warm.pruned_at + phase.pruned_at
    final.n_iter += warm.n_iter + phase.n_iter
    final.moves = warm.moves
    final.converged = converged
    final.elbo_history = phase.history + list(final.elbo_history)
    final.warm_start = (n_sub, N, len(warm.kept[0]))
    return final
