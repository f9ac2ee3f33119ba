"""Every form of LinearMixedModel saves and loads, and the loaded model predicts bit-identically."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dmlmm
from dmlmm import LinearMixedModel, SplineBasis
from dmlmm.io import ModelFileError


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


@pytest.mark.parametrize("method", ["vb", "reml", "ml"])
def test_formula_model_round_trip(sleepstudy, tmp_path, method):
    df = sleepstudy.assign(phase=np.where(sleepstudy["Days"] < 4, "early", "late"))
    m = LinearMixedModel("Reaction ~ scale(Days) * C(phase) + (Days | Subject)", method=method).fit(df)
    m.save(tmp_path / "m.dmlmm")
    back = dmlmm.load(tmp_path / "m.dmlmm")
    assert type(back) is LinearMixedModel and back.get_params() == m.get_params()
    new = pd.DataFrame({"Days": [0.5, 3.0, 7.5], "phase": ["early", "late", "late"], "Subject": [308, 309, "new"]})
    with pytest.warns(UserWarning, match="population"):
        a = m.predict_trajectory(new)
    with pytest.warns(UserWarning, match="population"):
        b = back.predict_trajectory(new)
    _same(a, b)
    pd.testing.assert_series_equal(m.score_samples(df), back.score_samples(df), check_exact=True)
    _same(m.sample_trajectories(df.head(5), n_samples=3, random_state=0),
          back.sample_trajectories(df.head(5), n_samples=3, random_state=0))
    assert back.summary() == m.summary()
    pd.testing.assert_series_equal(back.fixed_effects_, m.fixed_effects_, check_exact=True)
    with pytest.raises(dmlmm.exceptions.DataError, match=r"column .phase. has level\(s\) \[.other.\] not seen"):
        back.predict_trajectory(new.assign(phase="other"))


def test_longitudinal_and_matrix_forms_round_trip(spline_data, tmp_path):
    m = LinearMixedModel(basis=SplineBasis(5)).fit(spline_data, subject="id", time="t", response="y",
                                                    covariates=["age", "grp"])
    m.save(tmp_path / "l.dmlmm")
    back = dmlmm.load(tmp_path / "l.dmlmm")
    _same(m.predict_trajectory(spline_data.head(40), times=[0.2, 0.9]),
          back.predict_trajectory(spline_data.head(40), times=[0.2, 0.9]))
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(20), 5)
    X = np.c_[np.ones(100), rng.normal(size=100)]
    y = X @ [1.0, 2.0] + rng.normal(size=20)[g] + rng.normal(size=100)
    mm = LinearMixedModel(method="ml").fit(X=X, Z=X[:, :1], y=y, groups=g)
    mm.save(tmp_path / "x.dmlmm")
    bx = dmlmm.load(tmp_path / "x.dmlmm")
    _same(mm.predict_trajectory(X=X[:7], Z=X[:7, :1], groups=g[:7]),
          bx.predict_trajectory(X=X[:7], Z=X[:7, :1], groups=g[:7]))


def test_a_damaged_lmm_file_is_refused(sleepstudy, tmp_path):
    import json
    import zipfile

    m = LinearMixedModel("Reaction ~ Days + (Days | Subject)", method="reml").fit(sleepstudy)
    m.save(tmp_path / "m.dmlmm")
    with zipfile.ZipFile(tmp_path / "m.dmlmm") as zf:
        meta = json.loads(zf.read("metadata.json"))
        arrays = zf.read("arrays.npz")
    meta["estimate"]["sigma2"] = -1.0
    with zipfile.ZipFile(tmp_path / "bad.dmlmm", "w") as zf:
        zf.writestr("metadata.json", json.dumps(meta))
        zf.writestr("arrays.npz", arrays)
    with pytest.raises(ModelFileError, match="residual variance is -1.0"):
        dmlmm.load(tmp_path / "bad.dmlmm")
