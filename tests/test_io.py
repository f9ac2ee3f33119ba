"""Saved models: bit-identical predictions after a round trip, versioning, refusal of foreign files."""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest

import dmlmm
from dmlmm.io import FORMAT_NAME, FORMAT_VERSION, ModelFileError, flatten_tree, read_metadata, save_model, unflatten_tree
from dmlmm.simulate import dgp1


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    df = dgp1(0, n_subjects=40).data.copy()
    df["subject"] = "s" + df["subject"].astype(str)  # string labels
    df["sex"] = np.where(df["subject"].str[-1].isin(list("02468")), "f", "m")
    df["age"] = df.groupby("subject").ngroup() * 0.25 + 30.0
    return df


def _fit(model, df):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(df, subject="subject", time="time", response="y", covariates=["sex", "age"])


@pytest.fixture(scope="module")
def models(frame):
    deep = dmlmm.DeepMixtureLMM((4, 2), (2, 1), basis=dmlmm.SplineBasis(6), random_state=0, max_iter=40)
    mix = dmlmm.MixtureLMM(3, basis=dmlmm.SplineBasis(6), random_state=1, max_iter=40, delete_moves=False)
    return {"deep": _fit(deep, frame), "mixture": _fit(mix, frame)}


@pytest.mark.parametrize("name", ["deep", "mixture"])
def test_round_trip_predicts_bit_identically(models, frame, name, tmp_path):
    m = models[name]
    path = tmp_path / "m.dmlmm"
    m.save(path)
    m2 = dmlmm.load(path)
    assert type(m2) is type(m) and repr(m2) == repr(m)
    new = frame[frame["subject"].isin(m.subjects_[:10])]
    pd.testing.assert_series_equal(m.predict(new), m2.predict(new))
    pd.testing.assert_frame_equal(m.predict_proba(new), m2.predict_proba(new))
    pd.testing.assert_frame_equal(m.predict_group_proba(new), m2.predict_group_proba(new))
    for kind in ("curve", "observation"):
        pd.testing.assert_frame_equal(m.predict_trajectory(new, kind=kind), m2.predict_trajectory(new, kind=kind))
    pd.testing.assert_frame_equal(m.predict_trajectory(), m2.predict_trajectory())
    a, b = m.score_samples(new), m2.score_samples(new)
    assert np.array_equal(a.to_numpy(), b.to_numpy())
    pd.testing.assert_frame_equal(m.sample_trajectories(new, n_samples=3, random_state=0),
                                  m2.sample_trajectories(new, n_samples=3, random_state=0))


@pytest.mark.parametrize("name", ["deep", "mixture"])
def test_round_trip_keeps_fitted_attributes(models, name, tmp_path):
    m = models[name]
    m.save(tmp_path / "m.dmlmm")
    m2 = dmlmm.load(tmp_path / "m.dmlmm")
    for attr in ("responsibilities_", "group_proba_", "random_effects_", "clusters_", "cluster_means_"):
        pd.testing.assert_frame_equal(getattr(m, attr), getattr(m2, attr))
    for attr in ("labels_", "groups_", "fixed_effects_"):
        pd.testing.assert_series_equal(getattr(m, attr), getattr(m2, attr))
    pd.testing.assert_index_equal(m.subjects_, m2.subjects_)
    for attr in ("elbo_", "n_iter_", "converged_", "fit_seconds_", "n_components_", "n_moves_", "sigma2_", "offset_"):
        assert getattr(m, attr) == getattr(m2, attr)
    assert np.array_equal(m.elbo_history_, m2.elbo_history_)
    assert all(np.array_equal(a, b) for a, b in zip(m.components_kept_, m2.components_kept_))
    assert m.summary() == m2.summary()
    # the whole parameter tree, leaf by leaf, dtype included
    a1, a2 = {}, {}
    assert flatten_tree(m.params_, "p", a1) == flatten_tree(m2.params_, "p", a2)
    assert all(np.array_equal(a1[k], a2[k]) and a1[k].dtype == a2[k].dtype for k in a1)


def test_integer_subject_labels_keep_their_dtype(tmp_path):
    df = dgp1(1, n_subjects=20).data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(5), random_state=0, max_iter=10).fit(df)
    m.save(tmp_path / "m.dmlmm")
    m2 = dmlmm.load(tmp_path / "m.dmlmm")
    assert m2.subjects_.dtype == m.subjects_.dtype and m2.subjects_.equals(m.subjects_)


def test_file_layout_is_documented_json_plus_npz(models, tmp_path):
    path = tmp_path / "m.dmlmm"
    models["deep"].save(path)
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["arrays.npz", "metadata.json"]
        meta = json.loads(zf.read("metadata.json"))
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == 1  # covariates listed: readable by any reader
    assert meta["library_version"] == dmlmm.__version__
    assert meta["model_class"] == "DeepMixtureLMM"
    assert meta["hyperparameters"]["n_components"] == [4, 2]
    assert meta["hyperparameters"]["basis"]["SplineBasis"]["n_basis"] == 6
    assert meta["prior"]["class"] == "DeepMixturePrior"
    assert meta["prior"]["args"]["latent_dims"] == [2, 1]
    layer = meta["params"]["fields"]["prior"]["fields"]["layers"]["tuple"][0]
    assert layer["fields"]["loadings"]["fields"]["precision"] == {"array": "params.prior.layers.0.loadings.precision"}
    assert read_metadata(path)["model_class"] == "DeepMixtureLMM"
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def _rewrite(src, dst, edit_meta=None, arrays: bytes | None = None):
    with zipfile.ZipFile(src) as zf:
        meta = json.loads(zf.read("metadata.json"))
        arr = zf.read("arrays.npz")
    if edit_meta:
        edit_meta(meta)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("metadata.json", json.dumps(meta))
        zf.writestr("arrays.npz", arr if arrays is None else arrays)


def test_files_written_before_the_loading_order_load_with_order_1(models, tmp_path):
    """Deep mixtures saved before ``loading_order`` existed were fitted with loading curves of order 1."""
    models["deep"].save(tmp_path / "m.dmlmm")

    def strip(meta):
        del meta["prior"]["args"]["loading_order"]
        del meta["hyperparameters"]["loading_order"]

    _rewrite(tmp_path / "m.dmlmm", tmp_path / "old.dmlmm", strip)
    old = dmlmm.load(tmp_path / "old.dmlmm")
    assert old.prior_.loading_order == 1.0 and old.loading_order == "auto"
    pd.testing.assert_frame_equal(old.predict_trajectory(), models["deep"].predict_trajectory())


def _drop_fields(node, names):
    """The parameter tree of a model file without the dataclass fields ``names`` (as files written before them)."""
    if isinstance(node, dict):
        if "fields" in node:
            node["fields"] = {k: _drop_fields(v, names) for k, v in node["fields"].items() if k not in names}
        elif "tuple" in node:
            node["tuple"] = [_drop_fields(v, names) for v in node["tuple"]]
    return node


def test_files_written_before_the_polynomial_block_load_with_independent_variances(frame, tmp_path):
    """Deep mixtures saved before ``polynomial_covariance`` existed had independent level and trend variances."""
    deep = _fit(dmlmm.DeepMixtureLMM((4, 2), (2, 1), basis=dmlmm.SplineBasis(6), random_state=0, max_iter=40,
                                     polynomial_covariance="diagonal"), frame)
    deep.save(tmp_path / "m.dmlmm")

    def strip(meta):
        del meta["prior"]["args"]["polynomial_covariance"]
        del meta["hyperparameters"]["polynomial_covariance"]
        _drop_fields(meta["params"], {"poly_cov", "poly_aux"})

    _rewrite(tmp_path / "m.dmlmm", tmp_path / "old.dmlmm", strip)
    old = dmlmm.load(tmp_path / "old.dmlmm")
    assert old.prior_.polynomial_covariance == "diagonal" and old.polynomial_covariance == "diagonal"
    assert old.params_.prior.layers[0].poly_cov is None
    pd.testing.assert_frame_equal(old.predict_trajectory(), deep.predict_trajectory())


def test_files_written_before_the_confounded_shape_load_with_one_shape(tmp_path):
    """Deep mixtures saved before ``confounded_shape`` existed tied the rough variances to the spectrum with
    ``idiosyncratic_shape`` also where a few shared visit times confound the noise; files written now keep 64."""
    rng = np.random.default_rng(0)
    times = np.array([0.0, 1.0, 2.0, 3.0])  # four shared times under six functions: visit_times = 4
    df = pd.DataFrame({"subject": np.repeat(np.arange(30), 4), "time": np.tile(times, 30)})
    df["y"] = rng.normal(size=30).repeat(4) + 0.5 * df["time"] + rng.normal(0, 0.3, len(df))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deep = dmlmm.DeepMixtureLMM((2, 1), (1, 1), basis=dmlmm.SplineBasis(6), random_state=0, max_iter=40,
                                    response_transform=None).fit(df, "subject", "time", "y")
    assert deep.prior_.visit_times == 4 and deep.prior_.confounded_shape == 64.0
    deep.save(tmp_path / "m.dmlmm")
    assert dmlmm.load(tmp_path / "m.dmlmm").prior_.confounded_shape == 64.0

    def strip(meta):
        del meta["prior"]["args"]["confounded_shape"]

    _rewrite(tmp_path / "m.dmlmm", tmp_path / "old.dmlmm", strip)
    old = dmlmm.load(tmp_path / "old.dmlmm")
    # six functions: the shape of the schedule is 4 (idiosyncratic_shape_for), recorded in the file and kept
    assert old.prior_.confounded_shape == old.prior_.idiosyncratic_shape == deep.prior_.idiosyncratic_shape == 4.0
    rough = old.prior_._rough
    np.testing.assert_allclose(old.prior_._alpha_d[rough] / deep.prior_._alpha_d[rough], 4.0 / 64.0)


def test_newer_format_version_is_refused(models, tmp_path):
    models["deep"].save(tmp_path / "m.dmlmm")
    _rewrite(tmp_path / "m.dmlmm", tmp_path / "new.dmlmm", lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=rf"written by a newer dmlmm \(format version {FORMAT_VERSION + 1}\); upgrade dmlmm"):
        dmlmm.load(tmp_path / "new.dmlmm")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "not a dmlmm model file"),
        (b"subject,time,y\n1,0.1,2.0\n", "not a dmlmm model file"),
        (bytes(range(256)) * 4, "not a dmlmm model file"),
    ],
)
def test_foreign_files_are_refused(tmp_path, content, match):
    path = tmp_path / "x.dmlmm"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        dmlmm.load(path)


def test_other_zip_files_and_other_formats_are_refused(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(ModelFileError, match="no metadata.json"):
        dmlmm.load(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"format": "something-else", "format_version": 1}))
    with pytest.raises(ModelFileError, match="not a dmlmm model file"):
        dmlmm.load(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", "{not json")
    with pytest.raises(ModelFileError, match="corrupt"):
        dmlmm.load(path)


def test_corrupt_files_are_refused(models, tmp_path):
    good = tmp_path / "m.dmlmm"
    models["deep"].save(good)
    raw = good.read_bytes()
    (tmp_path / "trunc.dmlmm").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError):
        dmlmm.load(tmp_path / "trunc.dmlmm")
    _rewrite(good, tmp_path / "noarr.dmlmm", arrays=b"garbage")
    with pytest.raises(ModelFileError, match="corrupt"):
        dmlmm.load(tmp_path / "noarr.dmlmm")
    _rewrite(good, tmp_path / "cls.dmlmm", lambda m: m.update(model_class="os.system"))
    with pytest.raises(ModelFileError, match="unknown model class"):
        dmlmm.load(tmp_path / "cls.dmlmm")

    def evil_type(m):
        m["params"]["fields"]["noise"]["type"] = "subprocess.Popen"

    _rewrite(good, tmp_path / "type.dmlmm", evil_type)
    with pytest.raises(ModelFileError, match="unknown parameter type"):
        dmlmm.load(tmp_path / "type.dmlmm")
    _rewrite(good, tmp_path / "field.dmlmm", lambda m: m["fitted"].pop("elbo_"))
    with pytest.raises(ModelFileError, match="corrupt"):
        dmlmm.load(tmp_path / "field.dmlmm")


def test_missing_file_and_unfitted_model(tmp_path):
    with pytest.raises(FileNotFoundError):
        dmlmm.load(tmp_path / "nope.dmlmm")
    with pytest.raises(dmlmm.NotFittedError):
        dmlmm.DeepMixtureLMM().save(tmp_path / "m.dmlmm")
    assert not (tmp_path / "m.dmlmm").exists()


def test_tree_flattening_is_generic():
    from dmlmm.expfam import Gaussian, InvGamma
    from dmlmm.inference.engine import VariationalParams

    p = VariationalParams(InvGamma(np.array(2.0), np.array(3.0)), InvGamma(np.ones(2), np.ones(2)), None,
                          (Gaussian(np.eye(2), np.zeros(2)),))
    arrays: dict = {}
    node = flatten_tree(p, "params", arrays)
    assert set(arrays) == {"params.noise.shape", "params.noise.rate", "params.noise_aux.shape",
                           "params.noise_aux.rate", "params.prior.0.precision", "params.prior.0.shift"}
    from dmlmm.io import _param_classes

    back = unflatten_tree(json.loads(json.dumps(node)), arrays, _param_classes())
    assert back.fixed is None and isinstance(back.prior, tuple)
    assert np.array_equal(back.prior[0].precision, np.eye(2))


def test_saving_to_a_folder_or_into_a_missing_one_names_the_path_given(models, tmp_path):
    """The errors named the temporary file ('/.tmp.xxx.tmp') instead of the path the user gave."""
    model = next(iter(models.values()))
    with pytest.raises(IsADirectoryError, match=rf"^cannot save the model to '{tmp_path}': it is a folder; give a "
                                                r"file name in it"):
        save_model(model, tmp_path)
    missing = tmp_path / "no" / "model.dmlmm"
    with pytest.raises(FileNotFoundError, match=r"the folder '.*no' does not exist \(create it first\)$"):
        save_model(model, missing)
    assert list(tmp_path.iterdir()) == []


def test_saving_a_generator_random_state_says_it_is_not_kept(models, tmp_path):
    """A numpy Generator as random_state is written as None (its state is no hyperparameter): said, where the
    loaded model's random_state silently became None and a refit of it drew other starts."""
    m = models["mixture"]
    old = m.random_state
    try:
        m.random_state = np.random.default_rng(3)
        with pytest.warns(UserWarning, match=r"random_state is a Generator, which a model file does not keep: the "
                                             r"loaded model has random_state=None"):
            m.save(tmp_path / "g.dmlmm")
    finally:
        m.random_state = old
    assert dmlmm.load(tmp_path / "g.dmlmm").random_state is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.save(tmp_path / "int.dmlmm")
