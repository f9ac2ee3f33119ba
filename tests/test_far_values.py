"""Response values far from all the others (a data-entry slip, a -999 code, a unit error) are named in a
DataWarning by every model's fit; real skewed measurements are not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dmlmm import DataError, DataWarning, LinearMixedModel, MixtureLMM, SplineBasis
from dmlmm.simulate import dgp1
from dmlmm.standardise import (
    FAR_LOG_SPREADS, FAR_SPREADS, far_values, response_scale, robust_centre_spread, warn_far_values,
)


def test_far_values_against_the_robust_spread():
    rng = np.random.default_rng(0)
    y = rng.normal(5.0, 1.0, 500)
    centre, spread = robust_centre_spread(y)
    assert abs(centre - 5.0) < 0.15 and abs(spread - 1.0) < 0.1  # the median and SD of a normal sample
    y[[3, 7]] = [centre + 1.01 * FAR_SPREADS * spread, centre - 0.99 * FAR_SPREADS * spread]  # one past, one short
    y[11] = np.nan  # missing values are other checks' business
    assert np.flatnonzero(far_values(y)).tolist() == [3]
    assert not far_values(np.r_[1.0, 2.0, 3.0, 1e9]).any()  # under 5 values: nothing to tell a bulk from
    assert not far_values(np.full(20, 2.0)).any()  # constant: its own error elsewhere


def test_mostly_equal_values_fall_back_to_the_deviations_that_are_not_zero():
    y = np.r_[np.zeros(60), np.arange(1.0, 41.0)]  # over half the values 0: the median absolute deviation is 0
    centre, spread = robust_centre_spread(y)
    assert centre == 0.0 and spread == pytest.approx(1.4826 * 20.5)  # median of 1..40
    assert not far_values(y).any()
    assert far_values(np.r_[y, 1e5])[-1]
    # the warning says which spread it used: 1.4826 x 21 = 31.1, the median of the deviations 1..40 and 1e5 (before,
    # "from the median absolute deviation", which is 0 here)
    with pytest.warns(DataWarning, match=r"more than 100 robust spreads \(spread 31.1: 1.4826 x median absolute "
                                         r"deviation, over the values off the median where most equal it\) from its "
                                         r"median 0: 100000 \(row 100\)"):
        warn_far_values(np.r_[y, 1e5])
    # the standardisation measures a dominated response by the same spread: one value of 1e12 among them is
    # refused, sd 9.9e10 over 1.4826 x 21 (the median of the 41 deviations that are not 0: 1..40 and 1e12) = 31.1
    # (before, its spread was the median absolute deviation, 0, and such a response was fitted with neither this
    # error nor the far-value warning, which leaves such a response to this error)
    with pytest.raises(DataError, match=r"\(9.9e\+10\) is 3.2e\+09 times the spread of the rest \(1.4826 x median "
                                        r"absolute deviation, over the values off the median where most equal it: 31.1; "
                                        r"most extreme value 1e\+12"):
        response_scale(np.r_[y, 1e12])


def test_a_positive_skewed_measurement_is_not_far_but_a_slip_among_its_values_is():
    """Log-normal values (a viral load, a concentration): far out on the raw scale, not on the log scale."""
    rng = np.random.default_rng(1)
    y = np.exp(rng.normal(8.0, 2.0, 2000))
    assert (np.abs(y - np.median(y)) / robust_centre_spread(y)[1]).max() > FAR_SPREADS  # raw: a long right tail
    assert not far_values(y).any()
    small = rng.uniform(1.0, 10.0, 300)
    small[0] = 1e6  # 1e6 among 1 to 10: far on both scales
    logs = np.log(small)
    assert abs(logs[0] - np.median(logs)) / robust_centre_spread(logs)[1] > FAR_LOG_SPREADS
    assert np.flatnonzero(far_values(small)).tolist() == [0]


@pytest.mark.filterwarnings("ignore::dmlmm.exceptions.ConvergenceWarning")
def test_every_model_names_the_far_values_and_fits_on():
    df = dgp1(random_state=0, n_subjects=40).data.copy()
    df.loc[5, "y"] = 1e6
    df.loc[17, "y"] = -999.0
    s5, t5, s17, t17 = df.loc[5, "subject"], df.loc[5, "time"], df.loc[17, "subject"], df.loc[17, "time"]
    for model in (MixtureLMM(2, SplineBasis(6), max_iter=5, random_state=0), LinearMixedModel(basis=SplineBasis(6))):
        with pytest.warns(DataWarning) as record:
            model.fit(df)
        said = [w for w in record if w.category is DataWarning]
        assert len(said) == 1 and said[0].filename == __file__  # said once, at the user's call
        text = [str(w.message) for w in said]
        assert text[0].startswith(f"the response 'y' has 2 value(s) more than {FAR_SPREADS:g} robust spreads")
        assert f"1e+06 (subject {s5}, time {t5:g}), -999 (subject {s17}, time {t17:g})" in text[0]
        assert "a missing-value code such as -999" in text[0]
        assert np.isfinite(model.elbo_ if hasattr(model, "elbo_") else model.loglik_)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        MixtureLMM(2, SplineBasis(6), max_iter=5, random_state=0).fit(dgp1(random_state=0, n_subjects=40).data)
        df.loc[5, "y"], df.loc[17, "y"] = 1e9, 0.0  # so extreme that no fit can resolve the rest: the error alone
        with pytest.raises(DataError, match=r"is dominated by a few extreme values"):
            LinearMixedModel(basis=SplineBasis(6)).fit(df)
