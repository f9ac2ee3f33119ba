"""The HTML report: self-contained, every section and figure present (rendered without a browser)."""

from __future__ import annotations

import base64
import re
import warnings

import numpy as np
import pandas as pd
import pytest

import dmlmm
from dmlmm.report import cluster_numbering, collect_results, pick_examples, render_report, write_report
from dmlmm.simulate import dgp1

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sim():
    return dgp1(2, n_subjects=40)


@pytest.fixture(scope="module")
def results(sim):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.DeepMixtureLMM((3, 2), (2, 1), basis=dmlmm.SplineBasis(6), random_state=0, max_iter=60).fit(sim.data)
    return collect_results(m, sim.data)


def images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', html)]


def test_collect_results_tables(results, sim):
    m = results.model
    assert list(results.trajectories.columns) == ["subject", "time", "mean", "lower", "upper", "beyond_last_visit",
                                                  "cluster", "probability", "cluster_layer1"]
    assert len(results.trajectories) == 100 * 40
    assert list(results.clusters.columns) == ["subject", "cluster", "probability", "cluster_layer1"]
    cmap, gmap = cluster_numbering(m)
    assert np.array_equal(results.clusters["cluster"], cmap[m.labels_.to_numpy()])
    assert np.array_equal(results.clusters["cluster_layer1"], gmap[m.groups_.to_numpy()])
    # numbered without gaps, and the trajectories carry each subject's clusters
    for col in ("cluster", "cluster_layer1"):
        assert sorted(results.clusters[col].unique()) == list(range(results.clusters[col].nunique()))
    merged = results.trajectories.drop_duplicates("subject").set_index("subject")
    pd.testing.assert_frame_equal(merged[["cluster", "probability", "cluster_layer1"]],
                                  results.clusters.set_index("subject"), check_names=False)
    assert set(results.cluster_curves["cluster"]) >= set(results.clusters["cluster"])
    assert results.facts["subjects"] == "40"
    assert list(results.data.columns) == ["subject", "time", "response"] and len(results.data) == len(sim.data)
    # the headline ELBO is the class summary's (the data's scale; it read elbo_, the internal scale)
    assert results.facts["ELBO (on the data's scale)"] == f"{results.class_summary['elbo'].iloc[0]:.2f}"
    assert results.facts["ELBO (on the data's scale)"] == f"{m.elbo_data_scale_:.2f}" != f"{m.elbo_:.2f}"


def test_report_is_self_contained_with_all_sections(results, sim, tmp_path):
    table = pd.DataFrame({"components": [(3, 2), (3, 2)], "latent_dims": [(1, 1), (2, 1)], "elbo": [-1.0, -2.0],
                          "heldout_score": [np.nan, np.nan], "effective_components": [(2, 1), (2, 1)],
                          "n_clusters": [2, 2], "seconds": [0.1, 0.2], "selected": [True, False], "error": [None, None]})
    path = write_report(tmp_path / "r.html", results, title="Test <report>", source="sim.csv", selection=table,
                        known_labels=sim.labels, label_name="true group")
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "Test &lt;report&gt;" in html
    for sid in ("data", "clusters", "examples", "membership", "labels", "elbo", "selection", "summary"):
        assert f'<section id="{sid}">' in html, sid
    imgs = images(html)
    assert len(imgs) == 5 and all(b.startswith(PNG) and len(b) > 5000 for b in imgs)
    assert "src=\"http" not in html and "<script" not in html  # nothing fetched from elsewhere
    assert 'class="sel"' in html and "Adjusted Rand index" in html
    assert "DeepMixtureLMM: 40 subjects" in html  # the model summary


def test_report_without_optional_parts(results):
    html = render_report(results)
    assert 'id="selection"' not in html and 'id="labels"' not in html
    assert len(images(html)) == 5


def test_report_with_text_subject_labels_of_pandas_string_dtype(sim):
    """Subject labels of pandas' "string" dtype (a Dask fit's, or pandas' own Parquet and CSV readers with
    that dtype): their comparisons hold NA where the object dtype's are False."""
    data = sim.data.assign(subject=lambda d: ("s" + d["subject"].astype(str)).astype("string"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=30).fit(data)
    html = render_report(collect_results(m, data))
    assert len(images(html)) == 5 and "s17" in html


def test_examples_cover_every_cluster(results):
    picked = pick_examples(results, 9)
    assert len(picked) == 9 and len(set(picked)) == 9
    lab = results.clusters.set_index("subject")["cluster"]
    assert set(lab.loc[picked]) == set(lab)


def test_report_for_a_linear_mixed_model(sim):
    lmm = pytest.importorskip("dmlmm.lmm")
    m = lmm.LinearMixedModel(basis=dmlmm.SplineBasis(6), method="reml").fit(sim.data, subject="subject", time="time",
                                                                             response="y")
    res = collect_results(m, sim.data)
    assert res.clusters is None and res.elbo_history is None
    assert res.trajectories.groupby("subject").size().eq(100).all()
    html = render_report(res)
    assert 'id="examples"' in html and 'id="membership"' not in html and "Population curve" in html
    assert len(images(html)) == 3


def test_covariate_effects_section_only_with_covariates(results, sim):
    assert 'id="effects"' not in render_report(results)
    df = sim.data.copy()
    codes = df["subject"].astype("category").cat.codes
    df["z"] = np.random.default_rng(0).normal(size=codes.max() + 1)[codes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(8), random_state=0, max_iter=60, membership_covariates=["z"])
        m.fit(df, covariates=["z"])
    html = render_report(collect_results(m, df))
    assert 'id="effects"' in html and "covariate effects" in html


def test_report_names_the_scale_of_a_transformed_response(sim):
    """A never-negative response fitted with response_transform="auto": the facts say which scale was
    kept and both bounds; the trajectories are on the data's scale (never below zero with log)."""
    data = sim.data.assign(y=np.exp(sim.data["y"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=60).fit(data)
    res = collect_results(m, data)
    assert m.response_transform_ == "log"
    fact = res.facts["response modelled as"]
    assert fact.startswith("log(y) (ELBO on the data's scale: none ") and ", log " in fact
    assert (res.trajectories["lower"] > 0).all()
    plain = collect_results(dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=60)
                            .fit(sim.data), sim.data)
    assert "response modelled as" not in plain.facts  # negative values: fitted as given, nothing to say


def test_report_tables_print_counts_as_whole_numbers():
    """A row mixing counts and shares was read as floats (pandas' iterrows), so the cluster table printed
    '20.000' subjects; each column keeps its own type."""
    from dmlmm.report.page import _table

    html = _table(pd.DataFrame({"subjects": [20, 7], "share": [0.741, 0.259]}, index=pd.Index([0, 1], name="cluster")))
    assert "<td>20</td><td>0.741</td>" in html and "20.000" not in html
