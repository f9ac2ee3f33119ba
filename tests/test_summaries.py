"""Class summaries (lcmm's summarytable and postprob) against hand computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

import dmlmm
from dmlmm import summaries
from dmlmm.report import cluster_table
from dmlmm.simulate import dgp1

# four subjects, two classes: assigned 0, 0, 1, 1
P = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.05, 0.95]])
# -sum p log p by row, worked out by hand: 0.3250830, 0.6730117, 0.5004024, 0.1985153
EN = 0.3250830 + 0.6730117 + 0.5004024 + 0.1985153


def test_entropy_and_relative_entropy_by_hand():
    assert summaries.classification_entropy(P) == pytest.approx(EN, abs=1e-6)
    # 1 - EN / (N log K) = 1 - 1.6970124 / (4 log 2)
    assert summaries.relative_entropy(P) == pytest.approx(1 - 1.6970124 / 2.7725887, abs=1e-6)
    assert summaries.relative_entropy(np.eye(3)) == 1.0 and summaries.classification_entropy(np.eye(3)) == 0.0
    assert summaries.relative_entropy(np.full((5, 4), 0.25)) == pytest.approx(0.0)
    assert np.isnan(summaries.relative_entropy(np.ones((3, 1))))
    assert summaries.icl(-100.0, P) == pytest.approx(200.0 + 2 * EN, abs=1e-5)


def test_posterior_table_by_hand():
    t = summaries.posterior_table(P)
    assert list(t.index) == [0, 1]
    assert list(t.columns) == ["subjects", "%subjects", "mean_p0", "mean_p1", "%p>0.7", "%p>0.8", "%p>0.9"]
    assert t["subjects"].tolist() == [2, 2] and t["%subjects"].tolist() == [50.0, 50.0]
    # class 0: subjects (0.9, 0.1) and (0.6, 0.4); class 1: (0.2, 0.8) and (0.05, 0.95)
    assert t.loc[0, ["mean_p0", "mean_p1"]].tolist() == pytest.approx([0.75, 0.25])
    assert t.loc[1, ["mean_p0", "mean_p1"]].tolist() == pytest.approx([0.125, 0.875])
    assert t.loc[0, ["%p>0.7", "%p>0.8", "%p>0.9"]].tolist() == [50.0, 50.0, 0.0]  # 0.9 is not above 0.9
    assert t.loc[1, ["%p>0.7", "%p>0.8", "%p>0.9"]].tolist() == [100.0, 50.0, 50.0]  # 0.8 is not above 0.8


def test_classes_without_subjects_and_given_labels():
    p = np.array([[0.7, 0.25, 0.05], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    t = summaries.posterior_table(p)
    assert list(t.index) == [0, 2]  # class 1 holds nobody: no row, but its column is there
    assert t.loc[2, "mean_p1"] == pytest.approx(0.2)
    sizes = summaries.class_sizes(p)
    assert sizes["subjects"].tolist() == [1, 0, 2]
    assert sizes["expected"].tolist() == pytest.approx([1.0, 0.65, 1.35])
    row = summaries.summary_row(p, elbo=-10.0)
    assert row["components"] == 3 and row["classes"] == 2 and "n_class1" not in row
    assert row["n_class2"] == 2 and row["%class2"] == pytest.approx(200 / 3)
    # labels given (e.g. the model's, which may break ties differently) take precedence
    t2 = summaries.posterior_table(p, labels=[0, 1, 2])
    assert list(t2.index) == [0, 1, 2]
    shown = summaries.display_posterior(t)
    assert "mean P(others)" in shown.columns and list(shown.index) == ["0", "2"]
    with pytest.raises(ValueError, match="probabilities"):
        summaries.posterior_table(np.array([[0.5, 0.6]]))
    with pytest.raises(ValueError, match="one class number"):
        summaries.posterior_table(p, labels=[0, 5, 1])


@pytest.fixture(scope="module")
def soft_fit():
    """A deep mixture on sparse data (4 visits per subject): two clusters, some memberships uncertain."""
    d = dgp1(3, n_subjects=80).data
    d = d[d.groupby("subject").cumcount() % 3 == 0]  # every third visit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.DeepMixtureLMM((4, 2), (1, 1), basis=dmlmm.SplineBasis(6), random_state=0, max_iter=200).fit(d)
    return m


def test_model_class_summary_against_a_hand_computation(soft_fit):
    m = soft_fit
    table = m.class_summary()
    assert list(table.index) == ["cluster", "cluster_layer1"]
    clusters = cluster_table(m, m.responsibilities_, m.group_proba_)  # the numbering of clusters.csv
    for level, proba, column in (("cluster", m.responsibilities_, "cluster"),
                                 ("cluster_layer1", m.group_proba_, "cluster_layer1")):
        p = proba.to_numpy()
        n, k = p.shape
        en = -sum(v * math.log(v) for v in p.ravel() if v > 0)
        row = table.loc[level]
        assert row["entropy"] == pytest.approx(en, rel=1e-10)
        assert row["relative_entropy"] == pytest.approx(1 - en / (n * math.log(k)), rel=1e-10)
        assert 0 < en and row["relative_entropy"] < 1  # some subjects are uncertain
        # on the data's scale (elbo_ is on the internal standardised one): comparable across transforms, as BIC
        assert row["elbo"] == m.elbo_data_scale_ and row["neg2_elbo"] == -2 * m.elbo_data_scale_ != -2 * m.elbo_
        counts = clusters[column].value_counts().sort_index()
        assert row["classes"] == len(counts) and row["components"] == k
        for c, v in counts.items():
            assert row[f"n_class{c}"] == v and row[f"%class{c}"] == pytest.approx(100 * v / n)
    path_en = -sum(v * math.log(v) for v in m.responsibilities_.to_numpy().ravel() if v > 0)
    assert table["icl"].tolist() == pytest.approx([-2 * m.elbo_data_scale_ + 2 * path_en] * 2, rel=1e-12)


def test_model_posterior_table_numbered_as_clusters_csv(soft_fit):
    m = soft_fit
    clusters = cluster_table(m, m.responsibilities_, m.group_proba_).set_index("subject")
    for level, proba in (("cluster", m.responsibilities_), ("cluster_layer1", m.group_proba_)):
        t = m.posterior_table(level)
        assigned = clusters[level]
        # the model's columns in the output numbering: column j of proba is class mapping[j]
        mapping = summaries.gap_free(m.labels_.to_numpy() if level == "cluster" else m.groups_.to_numpy(),
                                     proba.shape[1])
        p = pd.DataFrame(proba.to_numpy(), index=proba.index).rename(columns=dict(enumerate(mapping)))
        for c in sorted(assigned.unique()):
            members = p.loc[assigned.index[assigned == c]]
            assert t.loc[c, "subjects"] == len(members)
            for j in p.columns:
                assert t.loc[c, f"mean_p{j}"] == pytest.approx(members[j].mean(), rel=1e-12)
            own = members[c]
            for thr in (0.7, 0.8, 0.9):
                assert t.loc[c, f"%p>{thr:g}"] == pytest.approx(100 * (own > thr).mean())
    with pytest.raises(ValueError, match="level"):
        m.posterior_table("layer2")


def test_one_layer_model_has_one_level(spline_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(5), random_state=0, max_iter=50).fit(
            spline_data, subject="id", time="t", response="y")
    assert list(m.class_summary().index) == ["cluster"]
    text = summaries.class_summary_text(m.class_summary(), {"cluster": m.posterior_table()})
    assert "summarytable" in text and "postprob" in text and "cluster_layer1" not in text


def test_clusters_table_numbers_each_layer_as_the_outputs():
    """clusters_'s layer columns number each layer's components by size, 0 largest, so layer1 is the group of
    groups_, clusters.csv's cluster_layer1 and the membership tables (it held the requested components' own
    numbers: on this fit the larger cluster, group 0, said 'layer1 1'); components_kept_ still maps them back."""
    d = dgp1(3, n_subjects=80).data
    d = d[d.groupby("subject").cumcount() % 3 == 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.DeepMixtureLMM((4, 2), (1, 1), basis=dmlmm.SplineBasis(6), random_state=1, max_iter=200).fit(d)
    assert len(m.components_kept_[0]) == 2 and m.n_components_ == (2, 1)
    tab = m.clusters_
    for layer, kept in enumerate(m.components_kept_, start=1):
        col = tab[f"layer{layer}"]
        assert sorted(col.unique()) == list(range(len(kept)))
        size = tab.groupby(col)["n_subjects"].sum()
        assert (size.diff().dropna() <= 0).all()  # 0 largest
    # each cluster's layer1 is the group that its subjects are in
    held = pd.crosstab(m.labels_, m.groups_)
    for c in held.index:
        assert held.loc[c].idxmax() == tab.loc[c, "layer1"]
    assert np.allclose(m.group_proba_.sum().to_numpy(), tab.groupby("layer1")["n_subjects"].sum().to_numpy())
