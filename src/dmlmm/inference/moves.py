"""Delete moves: escape local optima where one cluster is split over several components.

Coordinate ascent in an overfitted variational mixture merges redundant
components slowly and can stall with a true cluster shared by two or three
components. A delete move removes one component, lets its subjects reassign
themselves and re-runs coordinate ascent for a short budget; the move is kept
only if the ELBO ends higher than before (cf. Hughes and Sudderth's memoized
variational inference with merge and delete moves); a trial that cannot get there at
its recent rate of ascent gives up early (:data:`TRIAL_GIVE_UP_WINDOW`). An accepted move raises the
ELBO where the two are compared, after ``trial_iter`` iterations at the loose
exploring tolerance, not necessarily at convergence: the path without it can
end higher (a helper's two-group simulation with 50 subjects, ``MixtureLMM(2)``:
-99.19 with the move that left one component, -96.13 without delete moves).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from ..sufficient import SufficientStats
from ..exceptions import ConvergenceWarning
from ..priors.base import RandomEffectsPrior
from .engine import VariationalParams, VIConfig, VIResult, empty_component_cost, prune_params, run_vi

__all__ = ["run_vi_with_moves", "explore_config", "EXPLORE_TOL"]

#: Tolerance of the exploring runs before and between moves (the final run uses the fit's own).
EXPLORE_TOL = 1e-3
#: A trial gives up once it cannot reach the ELBO it must beat at its mean gain over this many iterations
#: (:data:`~dmlmm.inference.engine.GIVE_UP_MARGIN` times it, :func:`~dmlmm.inference.engine._cannot_reach`).
#: Measured on the delete trials of 24 benchmark fits (DGP 1-3 at both settings, the demo, Blackmore, sleepstudy,
#: eight real sets' training splits: 312 trials, 153 accepted): an accepted trial would have been stopped only
#: with a margin below 1.57 (autism), and the rule stops the rejected ones 575 of their 4,058 iterations early.
TRIAL_GIVE_UP_WINDOW = 4


def explore_config(config: VIConfig, explore_tol: float = EXPLORE_TOL) -> VIConfig:
    """Settings of an exploring run: loose tolerance, negligible paths dropped more eagerly.

    Plain coordinate ascent (no extrapolation) and the ELBO-only convergence test: the
    exploration, and so the choice of start and of deletions, is the one it was before the
    extrapolation existed. Extrapolating here too saved more iterations but moved some fits
    to other optima (DGP 3, 600 subjects, 30 functions: 70 nats lower; 40 functions: 178
    higher), so only the final run is accelerated. The same for the translation move of the means
    (:mod:`dmlmm.inference.translate`): in every run it moved fits to other optima without raising
    their held-out scores (the accuracy harness, 2026-12-06: the deep mixture's ELBO up by 1-40 nats on
    DGP 1, its held-out log score down by 0.0003-0.005 per subject; two of nine real sets fell below the
    Gaussian LMM), so it too runs in the final run only.

    With subject-level residual scales, ``nu`` stays at its start (from the ridge fits' residuals,
    :func:`dmlmm.models.starting.init_factory`) while exploring; the final run learns it. Learned from
    the first iteration, dietox's deep mixture climbed to nu = 1000 within six iterations, its
    noisy pigs' deviations taken into a second cluster, and ended at ELBO 397.7 (held-out log score
    -2.51 per observation); exploring at the start's nu it ends with one cluster, nu = 6.0, ELBO
    410.3 (-2.24).
    """
    return replace(config, tol=max(config.tol, explore_tol), active_threshold=1e-4, moment_threshold=1e-4, resp_tol=None,
                   accelerate=False, translate_means=False, give_up_below=None, learn_df=False)


def run_vi_with_moves(
    stats: SufficientStats,
    prior: RandomEffectsPrior,
    params: VariationalParams,
    config: VIConfig,
    rng: np.random.Generator,
    max_trials: int = 12,
    trial_iter: int = 25,
    explore_tol: float = EXPLORE_TOL,
    callback=None,
    explored: VIResult | None = None,
    final: bool = True,
    stacklevel: int = 3,
) -> VIResult:
    """:func:`run_vi`, then delete moves on each layer's components, smallest first.

    Parameters
    ----------
    max_trials : int
        Upper bound on attempted deletions (0: plain coordinate ascent).
    trial_iter : int
        Iterations given to each attempt before its ELBO is compared (fewer for one that gives up: it races
        the ELBO it must beat, :data:`TRIAL_GIVE_UP_WINDOW`).
    explore_tol : float
        Looser tolerance for the runs between moves; the final run uses ``config.tol``.
    explored : VIResult, optional
        The exploring first run, already made (from ``params``; its ``n_iter`` counts against
        ``config.max_iter``): the moves start from it.
    final : bool
        Finish with the run at ``config.tol``; False: return after the moves (its
        ``elbo_history`` the whole trace so far, ready to be passed back as ``explored``).
    stacklevel : of the ConvergenceWarning (3: the caller's caller).
    """
    if max_trials <= 0 and explored is None:
        return run_vi(stats, prior, params, config, rng, callback)
    final_config = config
    # exploration: loose tolerance, and negligible paths dropped more eagerly (the final run is exact)
    config = explore_config(config, explore_tol)
    total = final_config.max_iter  # one iteration budget for the whole fit
    res = explored
    if res is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = run_vi(stats, prior, params, replace(config, max_iter=max(total // 2, 1)), rng, callback)
    trials = 0
    gaps: dict[int, float] = {}  # empty_component_cost per layer: the same for every pruned version of the prior
    history = list(res.elbo_history)
    improved = True
    while improved and trials < max_trials and total - res.n_iter > 2 * trial_iter:
        improved = False
        # the baseline runs trial_iter more iterations, then each trial starts from the baseline's end and gets
        # trial_iter of its own: a trial has run trial_iter iterations more than the model it is compared with,
        # which favours deletions (docs/models.md, "Which stage loses the fifth cluster", measures the fair
        # comparison: not kept so far)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            base = run_vi(stats, res.prior, res.params, replace(config, max_iter=trial_iter), rng)
        base.kept = [k[c] for k, c in zip(res.kept, base.kept)]
        base.pruned_at = res.pruned_at + [len(history) + p for p in base.pruned_at]
        base.n_iter += res.n_iter
        base.moves = res.moves
        history.extend(base.elbo_history)
        res = base
        counts = res.prior.layer_counts(res.params.prior)
        candidates = [(c, l, k) for l, cl in enumerate(counts) if len(cl) > 1 for k, c in enumerate(cl)]
        for _, l, k in sorted(candidates):
            if trials >= max_trials or total - res.n_iter <= trial_iter:
                break
            trials += 1
            keep = [np.ones(len(c), dtype=bool) for c in counts]
            keep[l][k] = False
            new_prior, new_pp = res.prior.prune(res.params.prior, keep)
            start = prune_params(res.params, new_pp, keep)
            # fair comparison: the larger model with component k emptied instead of deleted
            if l not in gaps:
                gaps[l] = empty_component_cost(res.prior, res.params, l, config)
            target = res.elbo + gaps[l] + 1e-9 * abs(res.elbo)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                trial = run_vi(stats, new_prior, start, replace(config, max_iter=trial_iter, give_up_below=target,
                                                                  give_up_window=TRIAL_GIVE_UP_WINDOW), rng)
            if trial.elbo > target:
                base_kept = [k_[m] for k_, m in zip(res.kept, keep)]
                trial.kept = [b_[t] for b_, t in zip(base_kept, trial.kept)]
                trial.pruned_at = res.pruned_at + [len(history)] + [len(history) + p for p in trial.pruned_at]
                trial.n_iter += res.n_iter
                trial.moves = res.moves + 1
                history.extend(trial.elbo_history)
                res = trial
                improved = True
                break
    if not final:
        res.elbo_history = history
        return res
    # the final run gets what exploration and moves left of the budget
    budget = max(total - res.n_iter, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        final = run_vi(stats, res.prior, res.params, replace(final_config, min_iter=1, max_iter=budget), rng, callback)
    if not final.converged and not final.gave_up:  # a run that gave up lost a race: it is not kept
        warnings.warn(
            f"variational inference used its budget of max_iter={final_config.max_iter} iterations "
            f"({res.n_iter} exploring and in delete moves) before the ELBO converged; increase max_iter",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
    final.kept = [b[c] for b, c in zip(res.kept, final.kept)]
    final.pruned_at = res.pruned_at + [len(history) + p for p in final.pruned_at]
    final.n_iter += res.n_iter
    final.moves = res.moves
    final.elbo_history = history + final.elbo_history
    return final
