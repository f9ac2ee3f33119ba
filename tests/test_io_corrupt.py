"""Damaged and hand-edited model files are refused at load with a ModelFileError (and by the CLI with exit 2)."""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import dmlmm
from dmlmm.cli import main
from dmlmm.io import ModelFileError
from dmlmm.simulate import dgp1


@pytest.fixture(scope="module")
def data():
    df = dgp1(0, n_subjects=20).data.copy()
    df["age"] = df["subject"] * 0.5 + 40.0
    df["arm"] = np.where(df["subject"] % 2 == 0, "a", "b")
    return df


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.DeepMixtureLMM((3, 2), (2, 1), basis=dmlmm.SplineBasis(5), random_state=0, max_iter=15)
        m.fit(data, covariates=["age", "arm"])
    path = tmp_path_factory.mktemp("model") / "m.dmlmm"
    m.save(path)
    return m, path


def _parts(path):
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("metadata.json"))
        arrays = dict(np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False))
    return meta, arrays


def _write(path, meta, arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps(meta))
        zf.writestr("arrays.npz", buf.getvalue())
    return path


def test_an_unedited_rewrite_loads(saved, data, tmp_path):
    m, path = saved
    meta, arrays = _parts(path)
    m2 = dmlmm.load(_write(tmp_path / "same.dmlmm", meta, arrays))
    assert m2.predict_trajectory(data).equals(m.predict_trajectory(data))


def test_single_bit_flips_are_refused_or_harmless(saved, data, tmp_path):
    """60 seeded flips anywhere in the file: a clear ModelFileError, or (a flip in a field nothing
    reads, such as a timestamp) a model that predicts exactly like the original."""
    m, path = saved
    raw = path.read_bytes()
    new = data[data["subject"] < 4]
    ref = m.predict_trajectory(new)
    rng = np.random.default_rng(20261122)
    refused = 0
    for _ in range(60):
        pos, bit = int(rng.integers(len(raw))), int(rng.integers(8))
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << bit
        p = tmp_path / "flip.dmlmm"
        p.write_bytes(bytes(flipped))
        try:
            m2 = dmlmm.load(p)
        except ModelFileError as e:
            assert "flip.dmlmm" in str(e) and "\n" not in str(e), str(e)
            refused += 1
            continue
        assert m2.predict_trajectory(new).equals(ref), f"byte {pos} bit {bit}: loaded but predicts differently"
    assert refused >= 50


def _edit_meta(edit):
    def apply(meta, arrays):
        edit(meta)
    return apply


def _edit_array(key, edit):
    def apply(meta, arrays):
        arrays[key] = edit(arrays[key].copy())
    return apply


def _set(a, index, value):
    a[index] = value
    return a


EDITS = {
    "more basis functions than knots": (_edit_meta(lambda m: m["design"]["basis"].update(n_basis=6)), "knots"),
    "knots out of order": (_edit_meta(lambda m: m["design"]["basis"]["knots_"].reverse()), "increasing order"),
    "zero response scale": (_edit_meta(lambda m: m["design"].update(y_scale=0.0)), "response scale"),
    "negative residual variance": (_edit_meta(lambda m: m["fitted"].update(sigma2_=-1.0)), "sigma2_"),
    "NaN ELBO": (_edit_meta(lambda m: m["fitted"].update(elbo_=float("nan"))), "elbo_"),
    "a covariate scale too few": (_edit_meta(lambda m: m["design"]["cov_scale"].pop()), "covariate scales"),
    "more components than kept": (_edit_meta(lambda m: m["fitted"].update(n_components_=[4, 2])), "n_components_"),
    "NaN in a loading": (_edit_array("params.prior.layers.0.loadings.shift", lambda a: _set(a, (0, 0, 0), np.nan)),
                         "non-finite"),
    "negative noise rate": (_edit_array("params.noise.rate", lambda a: -a), "must be positive"),
    "zero Dirichlet weight": (_edit_array("params.prior.layers.0.weights.alpha", lambda a: _set(a, 0, 0.0)),
                              "must be positive"),
    "indefinite precision": (_edit_array("params.prior.layers.0.loadings.precision", lambda a: -a),
                             "positive definite"),
    "wrong shape of a shift": (_edit_array("params.prior.layers.0.loadings.shift", lambda a: a[:, :-1]), "shape"),
    "responsibilities above 1": (_edit_array("fitted.responsibilities_.0", lambda a: a + 1.0), "outside [0, 1]"),
    "responsibilities not summing to 1": (_edit_array("fitted.responsibilities_.0", lambda a: a * 0.5), "sum to 1"),
    "a subject's row missing": (_edit_array("fitted.responsibilities_.1", lambda a: a[:-1]), "corrupt"),
    "cluster order not a permutation": (_edit_array("fitted._path_order", lambda a: np.zeros_like(a)), "ordering"),
    "random effects of the wrong size": (_edit_array("fitted.random_effects_.0", lambda a: a[:3]), "corrupt"),
    "latent dimension disagreeing with the loadings": (
        _edit_meta(lambda m: m["prior"]["args"].update(latent_dims=[3, 1])), "corrupt"),
    "unknown response transform": (_edit_meta(lambda m: m.update(response_transform="sqrt")), "response_transform"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_hand_edited_files_are_refused(saved, tmp_path, name):
    edit, fragment = EDITS[name]
    meta, arrays = _parts(saved[1])
    edit(meta, arrays)
    path = _write(tmp_path / "edited.dmlmm", meta, arrays)
    with pytest.raises(ModelFileError, match="edited.dmlmm") as info:
        dmlmm.load(path)
    assert fragment in str(info.value) and "corrupt" in str(info.value)


def _predict(model_path, data, tmp_path):
    csv = tmp_path / "d.csv"
    data.to_csv(csv, index=False)
    return CliRunner().invoke(main, ["predict", str(model_path), str(csv)], catch_exceptions=False)


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_predict_refuses_corrupt_files_in_one_line(saved, data, tmp_path):
    m, path = saved
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:  # a flip inside the compressed arrays: a bad CRC or a zlib error
        info = zf.getinfo("arrays.npz")
    raw[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0x10
    flipped = tmp_path / "flipped.dmlmm"
    flipped.write_bytes(bytes(raw))
    assert "flipped.dmlmm' is corrupt" in _one_error_line(_predict(flipped, data, tmp_path))
    meta, arrays = _parts(path)
    arrays["params.noise.shape"] = np.array(np.nan)
    nan = _write(tmp_path / "nan.dmlmm", meta, arrays)
    line = _one_error_line(_predict(nan, data, tmp_path))
    assert "nan.dmlmm' is corrupt" in line and "non-finite" in line
