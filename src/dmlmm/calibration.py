"""Do a model's forecast bands hold what they claim on the user's own data? A last-visit check.

:func:`check_bands` holds out each subject's last visit, fits a fresh copy of the model (same
hyperparameters) to the rest, forecasts each held-out visit from the subject's earlier ones
(``predict_trajectory(kind="observation")``) and counts how many fall inside their bands. A band
is a promise: 95 % bands should hold about 95 % of the held-out visits. The check says how many
did, with a binomial (Wilson) interval for that fraction, on which side the misses fall, and how
coverage changes with the forecast horizon; it warns when the bands are too narrow to trust.

Last visits are the hardest test a longitudinal model meets: they are forecasts (often years
ahead), and where subjects leave the study for reasons linked to the outcome (death, transplant,
recovery), no model that assumes visits are missing at random will cover them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

from ._recorded import recorded
from .data import without_missing
from .models.membership_design import without_unknown_baseline
from .models.params import check_flag, check_interval, positive_int
from .exceptions import CalibrationWarning
from .response_transform import forward, transform_candidates

__all__ = ["BandCheck", "check_bands"]

#: Subjects per call of ``predict_trajectory`` (it predicts every subject at every time asked).
_CHUNK = 500


@dataclass(frozen=True)
class BandCheck:
    """Result of :func:`check_bands`.

    Attributes
    ----------
    table : DataFrame, one row per held-out observation: subject, time, observed, mean, lower,
        upper, inside (bool), horizon (time since the subject's last training visit).
    level : float
        The bands' nominal coverage.
    coverage : float
        Fraction of held-out observations inside their band.
    interval : (float, float)
        Wilson 95 % interval of the coverage.
    below, above : float
        Fractions below and above their band.
    by_horizon : DataFrame
        Coverage by horizon (tertiles, or each distinct horizon where there are at most three):
        horizon_from, horizon_to, observations, coverage.
    log_scale : BandCheck or None
        The same check with the model fitted to ``log_transform`` of the response (its table on
        that scale; coverage is the same on either scale), run only when these bands are too
        narrow, the response is never negative and no transform was applied; else None.
    log_transform : str or None
        ``"log"`` (a positive response) or ``"log1p"`` (zeros present), with ``log_scale``.
    """

    table: pd.DataFrame
    level: float
    coverage: float
    interval: tuple[float, float]
    below: float
    above: float
    by_horizon: pd.DataFrame
    log_scale: BandCheck | None = None
    log_transform: str | None = None

    @property
    def n(self) -> int:
        return len(self.table)

    @property
    def too_narrow(self) -> bool:
        """Whether the nominal level lies above the coverage's 95 % interval."""
        return self.level > self.interval[1]

    @property
    def too_wide(self) -> bool:
        """Whether the nominal level lies below the coverage's 95 % interval: the bands hold more than they
        claim (a band of 100 % coverage may be far wider than the data's range and say little)."""
        return self.level < self.interval[0]

    def summary(self) -> str:
        lo, hi = self.interval
        lines = [
            f"{100 * self.level:g} % forecast bands of each subject's last visit, held out: "
            f"{100 * self.coverage:.1f} % inside (95 % interval {100 * lo:.1f}-{100 * hi:.1f} %, "
            f"{self.n} observations); {100 * self.below:.1f} % below, {100 * self.above:.1f} % above.",
        ]
        for _, r in self.by_horizon.iterrows():
            lines.append(f"  horizon {r['horizon_from']:.3g}-{r['horizon_to']:.3g}: {100 * r['coverage']:.1f} % "
                         f"of {int(r['observations'])}")
        if self.too_narrow:
            lines.append("The bands are too narrow here: forecasts are less certain than they claim.")
        if self.too_wide:
            lines.append("The bands are too wide here: forecasts are more certain than they claim (median width "
                         f"{self._median_width():.3g}; the held-out values span {self._observed_range():.3g}).")
        if self.log_scale is not None:
            lines.append(self._log_scale_text())
        return "\n".join(lines)

    def _median_width(self) -> float:
        return float((self.table["upper"] - self.table["lower"]).median())

    def _observed_range(self) -> float:
        return float(self.table["observed"].max() - self.table["observed"].min())

    def _log_scale_text(self) -> str:
        alt, f = self.log_scale, self.log_transform
        lo, hi = alt.interval
        text = (f"Fitted to {f}(y) instead, the bands held {100 * alt.coverage:.1f} % of the same visits "
                f"(95 % interval {100 * lo:.1f}-{100 * hi:.1f} %)")
        if alt.coverage > self.coverage and not alt.too_narrow:
            return text + f": model {f}(y) (response_transform={f!r}; command line: --transform {f})."
        return text + "."


def _wilson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    z = st.norm.ppf(0.5 + conf / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _split_last(data: pd.DataFrame, subject: str, time: str, min_visits: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows and held-out rows (every row at the last visit time of subjects with at least
    ``min_visits`` distinct visit times)."""
    visits = data.groupby(subject, sort=False, observed=True)[time].transform("nunique")
    last = data.groupby(subject, sort=False, observed=True)[time].transform("max")
    held = (visits >= min_visits) & (data[time] == last)
    return data.loc[~held], data.loc[held]


#: Fewest last visits that a band check counts.
MIN_LAST_VISITS = 10


def check_enough_last_visits(data: pd.DataFrame, subject: str, time: str, min_visits: int = 2,
                             held: pd.DataFrame | None = None) -> None:
    """A ValueError unless at least :data:`MIN_LAST_VISITS` subjects have ``min_visits`` distinct visit times
    (so that a check has last visits to forecast); the command line asks before its fit, which it ran in full
    before refusing. ``held``: the held-out rows, where already split."""
    if held is None:
        held = _split_last(data, subject, time, min_visits)[1]
    if held[subject].nunique() < MIN_LAST_VISITS:
        n_all = data[subject].nunique()
        who = (f"the data have {n_all} subjects" if n_all < MIN_LAST_VISITS else f"only {held[subject].nunique()} "
               f"of the {n_all} subjects have at least {min_visits} distinct visit times")
        raise ValueError(f"{who}: too few last visits to check the bands (at least {MIN_LAST_VISITS} are needed)")


def _check(model, data: pd.DataFrame, subject: str, time: str, response: str, fit_kwargs: dict, level: float,
           min_visits: int) -> BandCheck:
    """One last-visit check: split, refit a fresh copy of ``model``, forecast, count."""
    train, held = _split_last(data, subject, time, min_visits)
    check_enough_last_visits(data, subject, time, min_visits, held)
    table, caught = recorded(lambda: _forecast_last(model, train, held, subject, time, response, fit_kwargs, level))
    for message in dict.fromkeys((w.category, str(w.message)) for w in caught):  # each once, said where it came from
        warnings.warn(f"check_bands, refitting without each subject's last visit and forecasting it: {message[1]}",
                      message[0], stacklevel=3)
    n, k = len(table), int(table["inside"].sum())
    h = table["horizon"]
    groups = h if h.nunique() <= 3 else pd.qcut(h, 3, labels=False, duplicates="drop")
    by_h = table.groupby(groups).agg(horizon_from=("horizon", "min"), horizon_to=("horizon", "max"),
                                      observations=("inside", "size"), coverage=("inside", "mean")).reset_index(drop=True)
    return BandCheck(table, level, k / n, _wilson(k, n), float((table["observed"] < table["lower"]).mean()),
                     float((table["observed"] > table["upper"]).mean()), by_h)


def _forecast_last(model, train: pd.DataFrame, held: pd.DataFrame, subject: str, time: str, response: str,
                   fit_kwargs: dict, level: float) -> pd.DataFrame:
    """A fresh copy of ``model`` fitted to ``train`` and its ``level`` observation bands at the ``held`` visits:
    one row per held-out visit (subject, time, observed, mean, lower, upper, inside, horizon since the
    subject's last training visit)."""
    fresh = type(model)(**model.get_params(deep=False))
    fresh.fit(train, subject=subject, time=time, response=response, **fit_kwargs)
    ids = held[subject].drop_duplicates().to_numpy()
    parts = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        rows = train[train[subject].isin(chunk)]
        times = np.unique(held.loc[held[subject].isin(chunk), time].to_numpy(dtype=float))
        pred = fresh.predict_trajectory(rows, times=times, interval=level, kind="observation")
        # the mixtures name the identifying columns subject / time, the LMM keeps the user's names
        pred = pred.rename(columns={subject if subject in pred.columns else "subject": "subject",
                                    time if time in pred.columns else "time": "time"})
        parts.append(pred[["subject", "time", "mean", "lower", "upper"]])
    pred = pd.concat(parts, ignore_index=True)
    obs = pd.DataFrame({"subject": held[subject].to_numpy(), "time": held[time].to_numpy(dtype=float),
                        "observed": held[response].to_numpy(dtype=float)})
    prev = train.groupby(subject, observed=True)[time].max()
    table = obs.merge(pred, on=["subject", "time"], how="left", validate="many_to_one")
    table["inside"] = (table["observed"] >= table["lower"]) & (table["observed"] <= table["upper"])
    table["horizon"] = table["time"] - prev.reindex(table["subject"]).to_numpy(dtype=float)
    return table


def check_bands(
    model,
    data: pd.DataFrame,
    *,
    subject: str = "subject",
    time: str = "time",
    response: str = "y",
    covariates: Sequence[str] | str | None = None,
    level: float = 0.95,
    min_visits: int = 2,
    warn: bool = True,
    transform: str | None = None,
    dropna: bool = False,
) -> BandCheck:
    """Hold out each subject's last visit, refit, forecast it, and count the bands that hold it.

    Parameters
    ----------
    model : an unfitted or fitted dmlmm model (``DeepMixtureLMM``, ``MixtureLMM`` or a longitudinal
        ``LinearMixedModel``); a fresh copy with the same hyperparameters is fitted, the model
        itself is not changed.
    data : DataFrame
        Long data, one row per observation.
    subject, time, response : str
        Column names.
    covariates : list of str or str, optional
        Passed to ``fit``.
    level : float
        Nominal coverage of the bands, in (0, 1).
    min_visits : int
        Only subjects with at least this many distinct visit times have their last one held out
        (at least 2, so that each forecast is conditioned on an earlier visit).
    warn : bool
        Emit a :class:`~dmlmm.exceptions.CalibrationWarning` when ``level`` lies above the
        coverage's 95 % interval (saying what the log-scale check found, when it ran), or below it
        (bands wider than the errors need, with their median width and the held-out values' span).
    transform : str, optional
        The transform already applied to ``response`` (the command line's ``--transform``); any
        value but None and ``"none"`` skips the log-scale check, as does a model's own
        ``response_transform``.
    dropna : bool
        Drop rows with missing values in the columns used (with a warning) instead of raising.

    Returns
    -------
    BandCheck
    """
    level = check_interval(level, "level")
    if not positive_int(min_visits) or min_visits < 2:
        raise ValueError(f"min_visits must be an integer of at least 2 (a forecast needs an earlier visit), got "
                         f"{min_visits!r}")
    if not hasattr(model, "get_params") or not hasattr(model, "fit"):
        raise TypeError(f"model must be an unfitted dmlmm model (e.g. DeepMixtureLMM()), got {model!r}")
    check_flag(dropna, "dropna")
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    for role, col in (("subject", subject), ("time", time), ("response", response)):
        if col not in data.columns:
            raise ValueError(f"{role} column {col!r} is not in the data; columns: {', '.join(map(str, data.columns))}")
    if model.get_params(deep=False).get("formula") is not None:
        raise ValueError("check_bands needs a model of the longitudinal form (subject, time, response columns and a "
                         "spline basis of time); this LinearMixedModel has a formula")
    if dropna:
        data = without_missing(data, subject, time, response, covariates, stacklevel=3)
        data = without_unknown_baseline(data, subject, model.get_params(deep=False).get("membership_covariates"),
                                        stacklevel=3)
    fit_kwargs = {} if covariates is None else {"covariates": covariates}
    check = _check(model, data, subject, time, response, fit_kwargs, float(level), int(min_visits))
    own = model.get_params(deep=False).get("response_transform")  # the model's own transform
    y = data[response].to_numpy(dtype=float)
    logs = transform_candidates("auto", y)[1:]  # the log scale, if the response is never negative
    if check.too_narrow and transform in (None, "none") and own in (None, "none") and logs:
        f = logs[0]
        logged = data.assign(**{response: forward(y, f, response)})
        alt = _check(model, logged, subject, time, response, fit_kwargs, float(level), int(min_visits))
        check = replace(check, log_scale=alt, log_transform=f)
    if warn and check.too_wide:
        lo, hi = check.interval
        warnings.warn(
            f"{100 * level:g} % bands held {100 * check.coverage:.1f} % of the {check.n} held-out last visits "
            f"(95 % interval {100 * lo:.1f}-{100 * hi:.1f} %): the bands are wider than the forecasts' errors need "
            f"(median width {check._median_width():.3g}, the held-out values span {check._observed_range():.3g})",
            CalibrationWarning,
            stacklevel=2,
        )
    if warn and check.too_narrow:
        lo, hi = check.interval
        warnings.warn(
            f"{100 * level:g} % bands held {100 * check.coverage:.1f} % of the {check.n} held-out last visits "
            f"(95 % interval {100 * lo:.1f}-{100 * hi:.1f} %): forecasts here are less certain than their "
            f"bands claim ({100 * check.below:.1f} % fell below, {100 * check.above:.1f} % above)"
            + ("" if check.log_scale is None else ". " + check._log_scale_text()),
            CalibrationWarning,
            stacklevel=2,
        )
    return check
