"""The research code's interface (dmlmm.compat) runs its minimal working example."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import BSpline

from dmlmm.compat import DMLMM, design_matrix
from dmlmm.exceptions import NotFittedError
from dmlmm.metrics import adjusted_rand_index


def _reference_knots():
    knots = np.linspace(0, 1, 10)
    return np.hstack([knots[0] - abs(knots[2] - knots[0]), knots[0] - abs(knots[1] - knots[0]), knots,
                      knots[-1] + abs(knots[-1] - knots[-2]), knots[-1] + abs(knots[-1] - knots[-3])])


def _example_data(n=150, seed=0):
    rs = np.random.RandomState(seed)
    times, y, groups = [], [], []
    for _ in range(n):  # the research example's generator, written as a loop on purpose
        ni = rs.randint(8, 13)
        t = np.sort(rs.choice(np.arange(0, 1, 0.01)[1:], size=ni, replace=False))
        xi = rs.normal(scale=np.sqrt([0.1, 0.045, 0.01, 0.001]))
        g = rs.choice([-1, 1])
        f = g * np.sin(4 * np.pi * t) + np.vstack([np.sqrt(2) * np.sin(p * np.pi * t) for p in [1, 2, 3, 4]]).T @ xi
        times.append(t)
        y.append(rs.normal(loc=f, scale=0.3))
        groups.append(g)
    return times, y, np.array(groups)


def test_design_matrix_matches_cox_de_boor_and_extends_outside():
    knots = _reference_knots()
    t = np.linspace(0.2, 0.8, 7)  # inside scipy's base interval
    expected = BSpline.design_matrix(t, knots, 3).toarray()
    np.testing.assert_allclose(design_matrix(knots, t), expected, atol=1e-14)
    edge = design_matrix(knots, np.array([0.0, 0.01, 0.99, 1.0]))
    assert edge.shape == (4, 10) and np.isfinite(edge).all()
    assert edge.sum(axis=1).min() < 0.99  # the research layout under-supports the ends


def test_minimal_working_example_runs_with_changed_imports():
    times, y, groups = _example_data()
    knots = _reference_knots()
    x = [design_matrix(knots, t) for t in times]
    model = DMLMM(y, x, [4, 2], [10, 3, 1])
    with pytest.raises(NotFittedError):
        model.predict_y(x[0], y[0], 10)
    model.train(300, -1)
    assert model.w_gmm.shape[0] == model.m_gmm.shape[0] == model.s_gmm.shape[0]
    assert model.error_var == pytest.approx(0.09, rel=0.3)
    h = model.elbo_history
    assert len(h) > 0
    assert isinstance(model.elbo, float)  # formats as a number, as the research code's scripts do
    assert model.elbo == pytest.approx(h[-max(1, len(h) // 20):].mean())
    assert f"{model.elbo:.2f}"
    pos = np.linspace(0, 1, 50)
    draws = model.predict_y(np.vstack([x[0], design_matrix(knots, pos)]), y[0], 2000, random_state=0)
    assert draws.shape == (2000, 50)
    w, m, s = model.predict_y(np.vstack([x[0], design_matrix(knots, pos)]), y[0], 0)
    assert np.isclose(w.sum(), 1.0) and m.shape[1] == 50 and s.shape[1:] == (50, 50)
    np.testing.assert_allclose(draws.mean(0), w @ m, atol=0.05)
    # the subject's group shows in its predicted curve at t = 1/8 (sin(4 pi t) = 1)
    def at_eighth(xi, yi):
        w, m, _ = model.predict_y(np.vstack([xi, design_matrix(knots, [0.125])]), yi, 0)
        return w @ m[:, 0]

    labels = np.sign([at_eighth(xi, yi) for xi, yi in zip(x[:40], y[:40])])
    assert adjusted_rand_index(groups[:40], labels) > 0.8


def test_predict_y_gives_every_path_in_order_and_a_level_far_from_zero_costs_nothing():
    """predict_y(..., 0) returns the M paths in w_gmm's order with the subject's posterior path probabilities
    (it returned only the paths of non-negligible weight, renumbered: a subject's argmax pointed at the wrong
    path, ARI 0.0002 against the truth); and responses around 30 fit as well as around 0 (they were not
    centred, and the research knot layout cannot carry a level near its ends: noise variance 0.134 for a
    truth of 0.09, curves 0.38 off)."""
    from scipy.stats import multivariate_normal

    times, y, groups = _example_data(n=100)
    knots = _reference_knots()
    x = [design_matrix(knots, t) for t in times]
    fits = {shift: DMLMM([v + shift for v in y], x, [4, 2], [10, 3, 1]).train(300, -1) for shift in (0.0, 30.0)}
    base, far = fits[0.0], fits[30.0]
    assert far.error_var == pytest.approx(base.error_var, rel=1e-6) and far.offset == pytest.approx(base.offset + 30)
    grid = design_matrix(knots, np.linspace(0, 1, 5))
    w0, m0, _ = base.predict_y(np.vstack([x[0], grid]), y[0], 0)
    w1, m1, _ = far.predict_y(np.vstack([x[0], grid]), y[0] + 30, 0)
    np.testing.assert_allclose(w1, w0, atol=1e-6)
    np.testing.assert_allclose(m1, m0 + 30, atol=1e-5)
    M = len(base.w_gmm)
    assert w0.shape == (M,) and m0.shape == (M, 5)
    # the weights are each path's posterior probability, by the closed form from the fitted mixture
    xi, yi = x[3], y[3] - base.offset
    logp = np.log(base.w_gmm) + np.array([multivariate_normal(xi @ base.m_gmm[k], xi @ base.s_gmm[k] @ xi.T
                                                              + base.error_var * np.eye(len(yi))).logpdf(yi)
                                          for k in range(M)])
    w3, _, _ = base.predict_y(np.vstack([x[3], grid]), y[3], 0)
    np.testing.assert_allclose(w3, np.exp(logp - logp.max()) / np.exp(logp - logp.max()).sum(), atol=1e-6)


def test_torch_tensors_are_accepted_if_torch_is_installed():
    torch = pytest.importorskip("torch")
    times, y, _ = _example_data(n=30)
    knots = _reference_knots()
    x = [torch.tensor(design_matrix(knots, t)) for t in times]
    model = DMLMM([torch.tensor(v) for v in y], x, [2], [10, 2]).train(50, -1)
    assert np.isfinite(model.error_var)
