"""scikit-learn conventions for every model: get_params / set_params / clone / repr."""

import numpy as np
import pytest

from dmlmm import DeepMixtureLMM, LinearMixedModel, MixtureLMM, SplineBasis
from dmlmm.simulate import dgp1

sklearn_base = pytest.importorskip("sklearn.base")
checks = pytest.importorskip("sklearn.utils.estimator_checks")

MODELS = [
    DeepMixtureLMM((4, 2), (3, 1), basis=SplineBasis(8), random_state=1, max_iter=40),
    MixtureLMM(3, basis=SplineBasis(8, knots="uniform"), random_state=2, noise="cluster"),
    LinearMixedModel("y ~ time + (time | subject)", method="ml"),
    SplineBasis(12, lower=0.0, upper=1.0),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_clone_gives_an_equal_unfitted_copy(model):
    c = sklearn_base.clone(model)
    assert type(c) is type(model) and c is not model
    assert repr(c) == repr(model)
    p, q = model.get_params(deep=False), c.get_params(deep=False)
    assert p.keys() == q.keys()
    for k in p:
        if hasattr(p[k], "get_params"):
            assert p[k] is not q[k] and p[k].get_params() == q[k].get_params()
        else:
            assert p[k] == q[k]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_sklearn_parameter_checks(model):
    name = type(model).__name__
    checks.check_get_params_invariance(name, model)
    checks.check_set_params(name, model)
    checks.check_no_attributes_set_in_init(name, model)


@pytest.mark.parametrize("cls", [DeepMixtureLMM, MixtureLMM, LinearMixedModel, SplineBasis])
def test_defaults_are_constructible(cls):
    checks.check_parameters_default_constructible(cls.__name__, cls())


def test_set_params_round_trip_and_nested_basis():
    m = DeepMixtureLMM(basis=SplineBasis(10))
    assert m.set_params(max_iter=7, basis__n_basis=14) is m
    assert m.max_iter == 7 and m.basis.n_basis == 14
    assert m.get_params()["basis__n_basis"] == 14
    other = DeepMixtureLMM().set_params(**m.get_params(deep=False))
    assert repr(other) == repr(m)


def test_set_params_names_an_unknown_parameter():
    with pytest.raises(ValueError) as e:
        MixtureLMM().set_params(n_clusters=3)
    assert str(e.value).startswith("MixtureLMM has no parameter 'n_clusters'; valid parameters: basis, batch_size,")
    with pytest.raises(ValueError, match=r"MixtureLMM.basis is None, which has no parameters to set \(n_basis\)"):
        MixtureLMM().set_params(basis__n_basis=3)


def test_repr_lists_only_what_differs_from_the_defaults():
    assert repr(MixtureLMM()) == "MixtureLMM()"
    assert repr(DeepMixtureLMM((6, 3), tol=1e-4)) == "DeepMixtureLMM(n_components=(6, 3), tol=0.0001)"
    assert repr(LinearMixedModel("y ~ t + (1 | s)")) == "LinearMixedModel(formula='y ~ t + (1 | s)')"


def test_clone_of_a_fitted_model_is_unfitted_and_refits_identically():
    data = dgp1(n_subjects=60, random_state=0).data
    m = MixtureLMM(2, basis=SplineBasis(6), random_state=0, max_iter=60)
    with _no_check():
        m.fit(data, "subject", "time", "y")
    c = sklearn_base.clone(m)
    assert not hasattr(c, "params_")
    with _no_check():
        c.fit(data, "subject", "time", "y")
    np.testing.assert_array_equal(c.predict_proba(data), m.predict_proba(data))


class _no_check:
    """Ignore warnings (convergence of this tiny fit is not what is tested)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


@pytest.mark.parametrize("make", [
    lambda: MixtureLMM(2, basis=SplineBasis(6), random_state=0, max_iter=60),
    lambda: DeepMixtureLMM((3, 2), (3, 1), basis=SplineBasis(6), random_state=0, max_iter=60),
    lambda: LinearMixedModel(basis=SplineBasis(6)),
], ids=["MixtureLMM", "DeepMixtureLMM", "LinearMixedModel"])
def test_named_fitted_arrays_mean_the_same_in_every_model(make):
    """weights_ (M,), means_ (M, D), covariances_ (M, D, D): the prior of the random effects b in
    y = F w + B(t) b + e, cluster by cluster (the LMM: one cluster whose mean is the mean curve)."""
    data = dgp1(n_subjects=60, random_state=0).data
    with _no_check():
        m = make().fit(data, subject="subject", time="time", response="y")
    w, mu, cov = m.weights_, m.means_, m.covariances_
    M = len(w)
    assert w.sum() == pytest.approx(1.0) and mu.shape == (M, 6) and cov.shape == (M, 6, 6)
    np.testing.assert_allclose(cov, np.swapaxes(cov, 1, 2), atol=1e-12)
    assert (np.linalg.eigvalsh(cov) > 0).all()
    if isinstance(m, LinearMixedModel):
        # each subject's curve is B(t) random_effects_ (+ covariate effects; none here), as in the mixtures
        B = m.builder_.basis_.transform(data["time"].to_numpy())
        coef = m.random_effects_.loc[data["subject"]].to_numpy()
        np.testing.assert_allclose(cov[0], m.cov_re_.to_numpy())
        fitted = m.predict_trajectory(data)["mean"].to_numpy()
        np.testing.assert_allclose(np.einsum("nd,nd->n", B, coef), fitted, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(mu[0], m.random_effects_.mean().to_numpy(), atol=0.3)  # the mean curve
        return
    # the cluster mean curves of cluster_means_ are offset_ + B(t) means_
    grid = m.cluster_means_
    for c in range(M):
        rows = grid[grid["cluster"] == c]
        B = m.design_.basis.transform(rows["time"].to_numpy())
        np.testing.assert_allclose(rows["mean"], m.offset_ + B @ mu[c], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(w, m.clusters_["weight"].to_numpy())
