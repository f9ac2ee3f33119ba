"""Model selection over a grid of deep-mixture sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dmlmm
from dmlmm.selection import TABLE_COLUMNS, latent_grid, select_model
from dmlmm.simulate import dgp1


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return dgp1(0, n_subjects=50).data


SMALL = dict(basis=dmlmm.SplineBasis(6), max_iter=25)


def test_elbo_criterion_picks_the_highest_elbo_and_reports_invalid_candidates(data):
    best, table = select_model(data, components=[(4, 2)], latent_dims=[(2, 1), (1, 1), (9, 1)], **SMALL)
    assert list(table.columns) == TABLE_COLUMNS
    assert len(table) == 3
    bad = table.iloc[2]
    assert "latent_dims[0] = 9" in bad["error"] and np.isnan(bad["elbo"]) and not bad["selected"]
    ok = table.iloc[:2]
    assert ok["error"].isna().all() and np.isfinite(ok["elbo"]).all()
    assert table["selected"].sum() == 1
    chosen = table[table["selected"]].iloc[0]
    assert chosen["elbo"] == ok["elbo"].max()
    assert best.latent_dims == chosen["latent_dims"] and best.elbo_data_scale_ == chosen["elbo"]
    assert best.n_components_ == chosen["effective_components"]
    assert ok["heldout_score"].isna().all() and (ok["seconds"] > 0).all()


def test_heldout_criterion_scores_and_refits_on_all_data(data):
    best, table = select_model(data, components=[(3, 2), (2,)], latent_dims=[(2, 1), (1, 1)],
                               criterion="heldout", heldout_fraction=0.3, **SMALL)
    ok = table[table["error"].isna()]
    assert len(ok) == 2 and table[table["components"] == (2,)]["error"].str.contains("one entry per layer").all()
    assert np.isfinite(ok["heldout_score"]).all()
    chosen = table[table["selected"]].iloc[0]
    assert chosen["heldout_score"] == ok["heldout_score"].max()
    assert len(best.subjects_) == data["subject"].nunique()  # refitted on everything
    assert best.design_.stats(best.design_.data_from(data)).n_obs.sum() == len(data)


def test_parallel_matches_serial(data):
    kw = dict(components=[(3, 2)], latent_dims=[(2, 1), (1, 1)], **SMALL)
    b1, t1 = select_model(data, n_jobs=1, **kw)
    b2, t2 = select_model(data, n_jobs=2, **kw)
    pd.testing.assert_series_equal(t1["elbo"], t2["elbo"])
    pd.testing.assert_frame_equal(b1.predict_proba(data), b2.predict_proba(data))


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="criterion"):
        select_model(data, criterion="aic")
    with pytest.raises(ValueError, match="no valid candidate"):
        select_model(data, components=[(3, 2)], latent_dims=[(9, 1)], **SMALL)
    with pytest.raises(TypeError, match="set by select_model"):
        select_model(data, n_components=(3, 2))
    with pytest.raises(dmlmm.DataError, match="not found"):
        select_model(data, response="nope")


def test_latent_grid():
    assert latent_grid(2, 10) == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert latent_grid(1, 2) == [(1,), (2,)]


def test_models_and_components_are_chosen_too(data):
    seen = []
    best, table = select_model(data, components=[(3, 2)], latent_dims=[(1, 1)], models=("deep", "mixture"),
                               mixture_components=(1, 2), on_result=lambda row, done, total: seen.append((done, total)),
                               **SMALL)
    assert table["model"].tolist() == ["deep", "mixture", "mixture"]
    assert table["components"].tolist() == [(3, 2), (1,), (2,)] and table["latent_dims"].tolist()[1:] == [None, None]
    assert sorted(seen) == [(1, 3), (2, 3), (3, 3)]
    chosen = table[table["selected"]].iloc[0]
    assert chosen["elbo"] == table["elbo"].max() and best.elbo_data_scale_ == chosen["elbo"]
    assert isinstance(best, dmlmm.MixtureLMM if chosen["model"] == "mixture" else dmlmm.DeepMixtureLMM)
    _, t = select_model(data, models="mixture", mixture_components=(0, 2), **SMALL)
    assert "one positive integer" in t["error"].iloc[0] and t["selected"].iloc[1]
    with pytest.raises(ValueError, match="models"):
        select_model(data, models=("lmm",))


def test_heldout_criterion_without_visits_to_hold_out_says_so_up_front():
    """Every subject seen once: nothing can be held out (one visit always stays in training). The selection used
    to fit the first candidate and then fail scoring an empty frame ("nothing to fit")."""
    from dmlmm import DataError, SplineBasis
    from dmlmm.selection import select_model
    from dmlmm.simulate import dgp1

    one = dgp1(random_state=0, n_subjects=40).data.groupby("subject").head(1)
    with pytest.raises(DataError, match=r"criterion='heldout' .* every subject has one visit, so none can be held out: use criterion='elbo'"):
        select_model(one, components=[(3, 2)], latent_dims=[(1, 1)], criterion="heldout", basis=SplineBasis(6))


def test_an_empty_grid_says_which_arguments_left_it_empty():
    """latent_dims=[] left no candidate and the error read 'no valid candidate: ' with nothing after it."""
    from dmlmm import SplineBasis
    from dmlmm.selection import select_model
    from dmlmm.simulate import dgp1

    with pytest.raises(ValueError, match=r"the grid is empty: models=\['deep'\] with components=\[\(3, 2\)\], "
                                         r"latent_dims=\[\]"):
        select_model(dgp1(0, n_subjects=30).data, components=[(3, 2)], latent_dims=[], models=("deep",),
                     basis=SplineBasis(6))


def test_dropna_drops_the_rows_once_and_every_candidate_fits_the_rest(data):
    """The error for missing values says 'Pass dropna=True': select_model takes it (it used to pass it on to the
    models, which failed with a TypeError); the rows are said once, by the frame's own labels."""
    import warnings

    holed = data.copy()
    holed.index = holed.index + 500
    holed.loc[[503, 517], "y"] = np.nan
    with pytest.raises(dmlmm.DataError, match=r"Pass dropna=True"):
        select_model(holed, components=[(2, 1)], latent_dims=[(1, 1)], **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        best, table = select_model(holed, components=[(2, 1)], latent_dims=[(1, 1)], criterion="heldout",
                                   dropna=True, **SMALL)
    said = [str(w.message) for w in caught if str(w.message).startswith("dropped ")]
    assert said == [f"dropped 2 of {len(data)} row(s) with missing or infinite values (column 'y': 2 (rows [503, 517]))"], said
    assert int(best.design_.stats(best.design_.data_from(data.drop(index=[3, 17]))).n_obs.sum()) == len(data) - 2
    assert np.isfinite(table["heldout_score"]).all()
    clean, _ = select_model(data.drop(index=[3, 17]), components=[(2, 1)], latent_dims=[(1, 1)],
                            criterion="heldout", **SMALL)
    assert best.elbo_ == clean.elbo_
