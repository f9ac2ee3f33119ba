"""Delete moves (dmlmm.inference.moves): trials that race the ELBO they must beat."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dmlmm.inference.backend as backend
import dmlmm.inference.moves as moves
from dmlmm import DeepMixtureLMM, SplineBasis
from dmlmm.exceptions import ConvergenceWarning
from dmlmm.inference.engine import GIVE_UP_MARGIN, VIConfig, _cannot_reach
from dmlmm.priors.dmfa import DeepMixturePrior
from dmlmm.simulate import dgp1

from test_accel import _run, _run_with, _stats


def test_racing_run_measures_its_rate_over_the_window_it_is_given():
    """``give_up_window`` replaces GIVE_UP_WINDOW in the rule: a run stops at the first iteration where
    its mean gain over that many iterations, times GIVE_UP_MARGIN, cannot close the gap in the budget left."""
    stats = _stats(seed=3, n_subjects=40)
    prior = DeepMixturePrior(4, (3, 2), (2, 1))
    free = _run(stats, prior, True, 60, tol=1e-12)
    target = free.elbo + 50.0  # out of reach
    config = VIConfig(max_iter=60, tol=1e-12, prune_threshold=0.0, give_up_below=target, give_up_window=4)
    raced = _run_with(stats, prior, config)
    first = next(k for k in range(1, len(free.elbo_history) + 1)
                 if _cannot_reach(free.elbo_history[:k], target, config.max_iter - k, window=4))
    by_default = next(k for k in range(1, len(free.elbo_history) + 1)
                      if _cannot_reach(free.elbo_history[:k], target, config.max_iter - k))
    assert raced.gave_up and first != by_default  # the window given, not GIVE_UP_WINDOW, decided
    assert len(raced.elbo_history) in (first, first + 1)
    np.testing.assert_allclose(raced.elbo_history[:first], free.elbo_history[:first], rtol=1e-12)
    # by hand: at the stop, margin x the mean gain of the last 4 iterations x the budget left falls short
    h = free.elbo_history[:first]
    assert h[-1] + GIVE_UP_MARGIN * (h[-1] - h[-5]) / 4 * (config.max_iter - first) < target


def _fit_counting(window: int):
    """A deep mixture on two-group curves with TRIAL_GIVE_UP_WINDOW = ``window``: the model, its local steps,
    and each delete trial's (gave up, ELBO, target)."""
    steps, trials = [0], []
    inner_step, inner_run = backend.local_step, moves.run_vi

    def counted(*a, **k):
        steps[0] += 1
        return inner_step(*a, **k)

    def recorded(stats, prior, params, config, rng, callback=None):
        res = inner_run(stats, prior, params, config, rng, callback)
        if config.give_up_window == window:  # a delete trial (a final run races with GIVE_UP_WINDOW)
            trials.append((res.gave_up, res.elbo, config.give_up_below))
        return res

    sim = dgp1(random_state=1, n_subjects=160)
    model = DeepMixtureLMM((4, 2), (3, 1), basis=SplineBasis(8, lower=0, upper=1), loading_order=2.0, random_state=0)
    with pytest.MonkeyPatch.context() as monkeypatch, warnings.catch_warnings():  # undone before the next fit
        monkeypatch.setattr(moves, "TRIAL_GIVE_UP_WINDOW", window)
        monkeypatch.setattr(backend, "local_step", counted)
        monkeypatch.setattr(moves, "run_vi", recorded)
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(sim.data, "subject", "time", "y")
    return model, steps[0], trials


def test_delete_trials_that_cannot_win_stop_early_and_the_fit_is_the_same():
    """A delete trial races the ELBO it must beat (the baseline's plus the empty component's gap): a trial
    deleting one of the two groups gives up within a few iterations. The fit is the one the trials run to
    their budget give (same ELBO, iterations, components), with fewer local steps."""
    raced, raced_steps, raced_trials = _fit_counting(moves.TRIAL_GIVE_UP_WINDOW)
    full, full_steps, full_trials = _fit_counting(10**6)  # a window never full: no trial gives up
    assert not any(g for g, _, _ in full_trials)
    gave_up = [(e, t) for g, e, t in raced_trials if g]
    assert gave_up and all(e < t for e, t in gave_up)
    assert [e > t for _, e, t in raced_trials] == [e > t for _, e, t in full_trials]  # the same decisions
    assert raced.elbo_ == full.elbo_ and raced.n_iter_ == full.n_iter_ and raced.n_components_ == full.n_components_
    assert raced_steps < full_steps
