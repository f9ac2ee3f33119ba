"""The stochastic (minibatch) fit: warm start on a subsample, natural gradients, settle rule, full passes."""

import warnings

import numpy as np
import pandas as pd
import pytest

from dmlmm import DeepMixtureLMM
from dmlmm.basis import SplineBasis
from dmlmm.inference.stochastic import StochasticSettings, label_change, settled
from dmlmm.metrics import adjusted_rand_index
from dmlmm.simulate import dgp1


@pytest.fixture(scope="module")
def dgp1_1200():
    # 2,000 subjects (minibatches of 200 after a warm start on 500) made these among the suite's slowest
    # tests; at 1,200 (minibatches of 120, a warm start on 300) every assertion below holds as it did
    return dgp1(random_state=5, n_subjects=1200)


def _deep(**kw):
    return DeepMixtureLMM((4, 2), (3, 1), basis=SplineBasis(8, lower=0, upper=1), random_state=0, **kw)


def _fit(model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(data)


@pytest.fixture(scope="module")
def minibatch_fit(dgp1_1200):
    return _fit(_deep(batch_size=120, subsample=300), dgp1_1200.data)


def test_a_warm_start_that_shows_one_cluster_says_how_to_look_further():
    """A minibatch fit creates no cluster after its warm start, so where the warm start's subjects show one
    cluster the fit ends with one, and the warning names the subsample and what to do; a full-batch fit's warning
    does not. Measured where it matters (tests/test_subject_scales.py's two-group frame of 400 subjects,
    MixtureLMM(3) with the P-spline covariance): full batch kept the 2 groups (ARI 0.89 against the truth);
    minibatches of 40 after a warm start on 200 subjects kept one cluster, 103 nats lower, with converged_ True
    (full-batch fits of three random 200-subject halves kept one cluster each)."""
    from dmlmm import MixtureLMM
    from dmlmm.exceptions import EmptyComponentWarning

    rng = np.random.default_rng(0)
    n, m = 300, 6  # one group: lines with a random level, no cluster structure at all
    t = np.sort(rng.uniform(0, 10, (n, m)), axis=1)
    y = rng.normal(0, 1, (n, 1)) + 0.3 * t + 0.3 * rng.normal(size=(n, m))
    df = pd.DataFrame({"subject": np.repeat(np.arange(n), m), "time": t.ravel(), "y": y.ravel()})
    kw = dict(basis=SplineBasis(5), covariance="pspline", random_state=0)
    with pytest.warns(EmptyComponentWarning) as said:
        mini = MixtureLMM(3, batch_size=30, subsample=60, **kw).fit(df)
    text = [str(w.message) for w in said if issubclass(w.category, EmptyComponentWarning)]
    assert mini.n_components_ == (1,) and len(text) == 1
    assert "the 60 of the 300 subjects that this minibatch fit's warm start saw show no cluster structure" in text[0]
    assert text[0].endswith("a larger subsample= (up to all subjects) or batch_size='full' looks at more of them")
    with pytest.warns(EmptyComponentWarning) as said:
        MixtureLMM(3, batch_size="full", **kw).fit(df)
    text = [str(w.message) for w in said if issubclass(w.category, EmptyComponentWarning)]
    assert len(text) == 1 and text[0].endswith("(every subject is in one cluster)")


def test_minibatch_fit_recovers_the_groups(dgp1_1200, minibatch_fit):
    """Warm start on 300 of 1,200 subjects, minibatches of 120: the two true groups, nothing split."""
    m = minibatch_fit
    assert adjusted_rand_index(dgp1_1200.labels, m.groups_) >= 0.95
    assert m.n_components_[0] == 2
    assert m.converged_
    assert m.responsibilities_.shape == (1200, m.responsibilities_.shape[1])


def test_minibatch_fit_agrees_with_full_batch(dgp1_1200, minibatch_fit):
    full = _fit(_deep(batch_size="full"), dgp1_1200.data)
    assert adjusted_rand_index(full.groups_, minibatch_fit.groups_) >= 0.95
    assert full.n_components_ == minibatch_fit.n_components_
    # a different local optimum of the factor loadings is allowed, but not a much worse fit
    assert minibatch_fit.elbo_ >= full.elbo_ - 0.01 * abs(full.elbo_)
    assert np.sqrt(minibatch_fit.sigma2_) == pytest.approx(np.sqrt(full.sigma2_), rel=0.05)


def test_minibatch_fit_is_reproducible(dgp1_1200, minibatch_fit):
    again = _fit(_deep(batch_size=120, subsample=300), dgp1_1200.data)
    assert again.elbo_ == minibatch_fit.elbo_
    assert again.n_iter_ == minibatch_fit.n_iter_
    assert (again.labels_ == minibatch_fit.labels_).all()


def test_settle_rule_waits_for_the_assignments():
    s = StochasticSettings(min_checks=4, patience=2, label_tol=0.005, window=2, elbo_tol=1e-4)
    flat = [-1000.0] * 6
    assert settled([1.0, 0.1, 0.0, 0.0, 0.0, 0.0], flat, s)
    # ELBO flat, but 2 % of the check subjects still change cluster: not settled
    assert not settled([1.0, 0.1, 0.0, 0.0, 0.0, 0.02], flat, s)
    assert not settled([1.0, 0.1, 0.0, 0.0, 0.02, 0.0], flat, s)
    # assignments still, but the smoothed ELBO still climbs
    assert not settled([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [-1000.0, -1000, -1000, -1000, -999.0, -998.0], s)
    # never before min_checks
    assert not settled([0.0, 0.0, 0.0], [-1000.0] * 3, s)
    # a check ELBO near zero: its change is taken against the floor (elbo_floor), not against |ELBO| alone
    near_zero = [-5.0, -2.0, -0.41, -0.40, -0.39, -0.38]  # smoothed change 0.02 against |ELBO| 0.385
    assert not settled([0.0] * 6, near_zero, s)
    assert settled([0.0] * 6, near_zero, s, floor=500.0)  # 0.02 <= 1e-4 * 500


def test_label_change():
    a = np.array([0, 1, 1, 2])
    assert label_change(None, a) == 1.0
    assert label_change(a, a) == 0.0
    assert label_change(a, np.array([0, 1, 2, 2])) == 0.25


def test_budget_exhausted_is_not_reported_as_converged(dgp1_1200, monkeypatch):
    """A stochastic phase cut short by its budget before the checks could settle: converged_ is False, with a warning."""
    from dmlmm.exceptions import ConvergenceWarning
    from dmlmm.models.base import VariationalLongitudinalModel

    monkeypatch.setattr(VariationalLongitudinalModel, "_stochastic_settings",
                        lambda self: StochasticSettings(subsample=300, max_iter=20))
    m = _deep(batch_size=200)
    with pytest.warns(ConvergenceWarning, match="stochastic fit did not settle"):
        m.fit(dgp1_1200.data.loc[dgp1_1200.data.subject < 1000])
    assert not m.converged_


def test_a_non_finite_check_elbo_is_a_numerical_error(dgp1_1200, monkeypatch):
    """The stochastic phase stops at a check whose ELBO is not finite, with the in-memory loop's
    NumericalError, naming the iteration of the last finite check (before, a NaN check never settled and
    the phase spent its whole budget on broken globals)."""
    import dmlmm.inference.stochastic as stochastic
    from dmlmm.exceptions import NumericalError
    from dmlmm.models.base import VariationalLongitudinalModel

    monkeypatch.setattr(VariationalLongitudinalModel, "_stochastic_settings",
                        lambda self: StochasticSettings(subsample=200, check_every=5, max_iter=40))
    original, calls = stochastic.elbo_globals, []

    def breaks_at_the_third_check(*args, **kw):
        calls.append(1)
        return original(*args, **kw) if len(calls) < 4 else float("nan")  # the first call is the starting check

    monkeypatch.setattr(stochastic, "elbo_globals", breaks_at_the_third_check)
    with pytest.raises(NumericalError, match=r"broke down at iteration 15: the check ELBO became nan \(last finite "
                                             r"ELBO: -?[0-9.e+]+ at iteration 10\)"):
        _fit(_deep(batch_size=100), dgp1_1200.data.loc[dgp1_1200.data.subject < 600])


def test_lost_clusters_counts_the_warm_start_shares_of_components_that_went():
    from dmlmm.inference.stochastic import lost_clusters

    counts = np.array([600.0, 20.0, 380.0, 4.0])
    assert lost_clusters(counts, np.array([0, 2, 3]), 1000, 0.005).tolist() == [0.02]
    assert lost_clusters(counts, np.array([0]), 1000, 0.005).tolist() == [0.38, 0.02]  # 0.004 is within tol
    assert lost_clusters(counts, np.arange(4), 1000, 0.005).size == 0


def test_a_cluster_emptied_after_the_warm_start_is_not_reported_as_converged(dgp1_1200, monkeypatch):
    """The settle rule compares consecutive checks: a cluster whose subjects drain away a few at a time can pass
    it. Here the stochastic phase is made to empty the warm start's smaller cluster outright (its assignments
    then recomputed, so that the settle rule and the full passes see nothing move): the fit ends with one
    cluster, says which share of the warm start's subjects it lost, and converged_ is False."""
    import dmlmm.inference.stochastic as stochastic
    from dmlmm.exceptions import ConvergenceWarning, EmptyComponentWarning
    from dmlmm.inference.engine import prune_params
    from dmlmm.models.base import VariationalLongitudinalModel

    monkeypatch.setattr(VariationalLongitudinalModel, "_stochastic_settings",
                        lambda self: StochasticSettings(subsample=300))
    original, warm_shares = stochastic._natural_gradient_phase, []

    def empties_the_smaller_cluster(stats, prior, params, config, settings, check_idx, rng, callback):
        phase = original(stats, prior, params, config, settings, check_idx, rng, callback)
        counts = phase.prior.layer_counts(phase.params.prior)
        assert len(counts[0]) == 2  # the two true groups survive the phase untouched
        warm_shares.extend(prior.layer_counts(params.prior)[0] / stats.n_subjects)  # rescaled to N: shares
        keep = [np.ones(len(c), dtype=bool) for c in counts]
        keep[0][np.argmin(counts[0])] = False
        phase.prior, pp = phase.prior.prune(phase.params.prior, keep)
        phase.params = prune_params(phase.params, pp, keep)
        phase.kept = [k[m] for k, m in zip(phase.kept, keep)]
        check = stats.subset(check_idx)
        phase.labels = stochastic._check(check, check_idx, stats.n_subjects, phase.prior, phase.params, config)[0]
        return phase

    monkeypatch.setattr(stochastic, "_natural_gradient_phase", empties_the_smaller_cluster)
    m = _deep(batch_size=200)
    with pytest.warns(ConvergenceWarning, match="stochastic fit did not settle") as said:
        m.fit(dgp1_1200.data.loc[dgp1_1200.data.subject < 1000])
    text = [str(w.message) for w in said if "did not settle" in str(w.message)]
    assert len(text) == 1
    lost = min(warm_shares)
    assert 0.2 < lost < 0.8  # DGP 1's smaller group
    assert (f"the minibatch steps emptied 1 of the 2 clusters that its warm start on 300 subjects kept, holding "
            f"{lost:.1%} of them" in text[0])
    assert text[0].endswith("increase max_iter or batch_size, or fit full batch (batch_size='full')")
    assert "used its budget" not in text[0] and "full passes moved" not in text[0]
    assert m.n_components_[0] == 1 and not m.converged_
    # the one-cluster warning says the minibatch steps emptied the others, not that the warm start saw one
    empty = [str(w.message) for w in said if issubclass(w.category, EmptyComponentWarning)]
    assert empty == ["all first-layer components but one ended empty and were pruned: this minibatch fit's warm "
                     "start on 300 of the 1000 subjects kept 2, and the minibatch steps emptied the others; a full-batch "
                     "fit (batch_size='full') or larger minibatches may keep them"]


def test_full_passes_that_still_move_subjects_point_to_a_full_batch_fit():
    """DGP 2 has no true clusters (a continuum of oscillators), so a minibatch answer is easily far from the full-data
    optimum: here the stochastic phase settles, the full passes then move 1.4 % of the check subjects, the fit is not
    converged, and the warning says so and names the full-batch fit (at 10,000 subjects the full-batch fit ended 10 %
    higher in ELBO, with 9 first-layer components against the minibatch fit's 5; docs/models.md)."""
    from dmlmm.exceptions import ConvergenceWarning
    from dmlmm.simulate import dgp2

    sim = dgp2(random_state=0, n_subjects=1500)
    lo, hi = sim.time_range
    m = DeepMixtureLMM((4, 2), (3, 1), basis=SplineBasis(8, lower=lo, upper=hi), random_state=0, loading_order=2,
                       batch_size=150, subsample=300)
    with pytest.warns(ConvergenceWarning) as said:
        m.fit(sim.data, "subject", "time", "y")
    text = [str(w.message) for w in said if "did not settle" in str(w.message)]
    assert len(text) == 1 and not m.converged_
    assert "(the full passes moved " in text[0] and "used its budget" not in text[0]
    assert text[0].endswith("increase max_iter or batch_size, or fit full batch (batch_size='full')")
