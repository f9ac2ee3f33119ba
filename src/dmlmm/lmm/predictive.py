"""What a fitted ``LinearMixedModel`` predicts: the API every dmlmm model shares.

``predict_trajectory``, ``sample_trajectories``, ``score_samples`` / ``score``,
``predict`` / ``predict_proba`` (one cluster) and the named fitted arrays
``weights_``, ``means_``, ``covariances_``, written once for the three forms of
the model (formula, design matrices, spline basis of time).

Each subject's random effects come from one place (:meth:`_subject_posteriors`):

- a subject of the fitted data, given its fitted rows or no responses: its fitted posterior (BLUP
  and its conditional covariance);
- a subject with other observed responses in the data given: conditioned on them, as the mixtures do,
  ``b | y ~ N(Q^{-1} Z'(y - F beta) / sigma^2, Q^{-1})``, ``Q = Sigma^{-1} + Z'Z / sigma^2``
  (a forecast for a new patient from its first visits, or for a fitted one from its newer visits);
- otherwise the population: ``b ~ N(0, Sigma)``.

Every band adds the uncertainty of the fixed effects, ``k' Cov(beta) k`` with
``k = f - H_i' z`` (``H_i``: how the subject's effects move with beta).

With a ``response_transform_`` the model is one of z = transform(y): responses given to condition
on or to score are transformed first, bands and draws map back through the inverse (quantiles to
quantiles; the ``mean`` column is the back-transformed mean of z, y's median), and densities add
the Jacobian log|dz/dy| (:mod:`dmlmm.response_transform`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..columns import as_numeric
from .._linalg import cholesky, sym
from ..exceptions import DataError
from ..heldout import warn_held_out_frames
from ..data import REPEATED_ROWS, Longitudinal
from ..models.design import latest_rows
from ..models.params import check_interval, check_random_state, positive_int
from ..prediction import condition, log_marginal
from ..response_transform import forward, inverse, log_jacobian
from ..sufficient import sufficient_stats
from ..priors.base import PointMixture
from .design import LongitudinalDesignBuilder, MatrixDesignBuilder, NewRows, factorize_groups
from .formula import FormulaDesignBuilder

__all__ = ["PredictiveLMM", "fitted_rows"]

_POPULATION = "population"


def fitted_rows(Z: np.ndarray, y: np.ndarray, codes: np.ndarray, n_subjects: int) -> np.ndarray:
    """Each subject's observed rows summarised, (S, 1 + 2q): their number, ``Z'1`` and ``Z'y`` (``y`` on the
    model's scale; rows with a missing response left out). A prediction given a fitted subject's own rows
    uses its fitted posterior, given other rows it conditions on them (:meth:`PredictiveLMM._subject_posteriors`)."""
    seen = np.isfinite(y)
    Z, y, codes = Z[seen], y[seen], codes[seen]
    out = np.zeros((n_subjects, 1 + 2 * Z.shape[1]))
    np.add.at(out, codes, np.c_[np.ones(len(y)), Z, Z * y[:, None]])
    return out


@dataclass(frozen=True)
class _Posteriors:
    """Random-effects posteriors of the distinct subjects of some rows (user scale).

    Attributes
    ----------
    labels : (S,) subject labels ("population" for rows without a subject)
    row_subject : (m,) position of each row's subject in ``labels``
    b : (S, q) posterior means; cov_b : (S, q, q) Cov(b | beta); sens : (S, q, p) H_i
    last_time : (S,) time of each subject's last observation (+inf: none)
    """

    labels: np.ndarray
    row_subject: np.ndarray
    b: np.ndarray
    cov_b: np.ndarray
    sens: np.ndarray
    last_time: np.ndarray


class PredictiveLMM:
    """Mixin of :class:`~dmlmm.LinearMixedModel`: prediction, sampling, scoring (see module docstring)."""

    # ------------------------------------------------------------------ named fitted arrays
    @property
    def weights_(self) -> np.ndarray:
        """Cluster weights, (1,): the linear mixed model is a one-cluster mixture."""
        self._check_fitted()
        return np.ones(1)

    @property
    def means_(self) -> np.ndarray:
        """Prior mean of the random effects per cluster, (1, q): the mean curve's coefficients in the
        longitudinal form (as the mixtures' ``means_``), zero in the formula and design-matrix forms."""
        self._check_fitted()
        q = self.cov_re_.shape[0]
        mu = self._mean_coefficients
        return (mu if len(mu) else np.zeros(q)).reshape(1, q).copy()

    @property
    def covariances_(self) -> np.ndarray:
        """Random-effects covariance per cluster, (1, q, q) (``cov_re_`` as an array)."""
        self._check_fitted()
        return self.cov_re_.to_numpy()[None]

    # ------------------------------------------------------------------ rows and responses
    @property
    def _transform(self) -> str | None:
        """The fitted scale (None: the response as given; models saved before it existed have none)."""
        return getattr(self, "response_transform_", None)

    def _response_name(self) -> str | None:
        b = self.builder_
        if isinstance(b, FormulaDesignBuilder):
            return b.parsed_.response
        if isinstance(b, LongitudinalDesignBuilder):
            return b.columns_.response
        return None

    def _rows(self, data, subject, X, Z, groups, times=None):
        """Design rows, the response at each row (NaN: none), the rows' times (longitudinal form) and
        which rows are output rows (the others are observations added only to condition on)."""
        b = self.builder_
        if isinstance(b, MatrixDesignBuilder):
            if data is not None or times is not None:
                raise ValueError("this model was fitted on design matrices: use X=..., Z=..., groups=...")
            rows = b.transform(X, Z, groups)
            return rows, None, None, np.ones(len(rows.Z), dtype=bool)
        if any(a is not None for a in (X, Z, groups)):
            raise ValueError("X / Z / groups are for models fitted on design matrices")
        if isinstance(data, pd.DataFrame):
            self._check_frame(data, subject, times)
        if times is not None:
            if not isinstance(b, LongitudinalDesignBuilder):
                raise ValueError("times= is for the longitudinal form (a spline basis of time); "
                                 "give the rows to predict at as a data frame")
            covs = list(b.encoding_.columns)
            if data is None and covs:  # the curve depends on them (said as missing)
                c = b.columns_
                if subject is None:
                    raise DataError(
                        f"this model has covariates {covs}: the population curve is at given covariate values; pass "
                        f"them with the times, e.g. predict_trajectory(pd.DataFrame({{'{c.time}': times, "
                        + ", ".join(f"'{v}': ..." for v in covs) + "}))")
                raise DataError(
                    f"this model has covariates {covs}: the curve of subject {subject!r} needs their values; pass its rows "
                    f"(or one row with its covariates) as data with the times, e.g. predict_trajectory(df[df['{c.subject}'] "
                    f"== {subject!r}], times=times)")
            data = self._grid_frame(data, subject, times)
        if data is None:
            raise DataError("nothing to predict at: pass a data frame (or, for the longitudinal form, times)")
        rows = b.transform(data, subject=subject)
        y = None
        name = self._response_name()
        if isinstance(data, pd.DataFrame) and name in data.columns:
            y = forward(pd.to_numeric(data[name], errors="coerce").to_numpy(dtype=float), self._transform, name,
                        fitted=True)
        t = rows.frame[b.columns_.time].to_numpy(dtype=float) if isinstance(b, LongitudinalDesignBuilder) else None
        keep = np.ones(len(rows.Z), dtype=bool)
        if isinstance(data, pd.DataFrame) and "__observed__" in data.columns:
            keep = ~data["__observed__"].to_numpy(dtype=bool)
        return rows, y, t, keep

    def _check_frame(self, data: pd.DataFrame, subject, times) -> None:
        """DataError for a frame the fitted design cannot read (columns, times, covariates: the longitudinal
        builder's own checks on the frame as given, so that messages name its row labels, which the builder's
        transform and the grid rows of ``times`` renumber) or with an infinite response (a missing one marks a
        row to predict at)."""
        b = self.builder_
        if isinstance(b, LongitudinalDesignBuilder):
            cols = b.columns_
            df = data if cols.subject in data.columns else data.assign(**{cols.subject: subject or _POPULATION})
            # with the response where the frame has it: rows entered twice are said, as at fit
            Longitudinal.from_frame(df, subject=cols.subject, time=cols.time,
                                    response=cols.response if cols.response in df.columns else None,
                                    encoding=b.encoding_, require_response=False, action="predict or score")
        name = self._response_name()
        if name is not None and name in data.columns:
            inf = np.isinf(as_numeric(data[name], f"column '{name}'"))
            if inf.any():
                raise DataError(
                    f"{int(inf.sum())} row(s) have infinite values: column '{name}': {int(inf.sum())} (rows "
                    f"{list(data.index[inf][:10])}). Drop or impute those rows first (a missing response marks a row "
                    "to predict at)"
                )

    def _grid_frame(self, data, subject, times) -> pd.DataFrame:
        """Rows at ``times`` for every subject of ``data`` (the covariates of its latest visit), or the population."""
        cols = self.builder_.columns_
        t = as_numeric(np.ravel(np.asarray(times, dtype=object)), "times")
        if not np.isfinite(t).all():
            raise DataError(f"times has {int((~np.isfinite(t)).sum())} missing or infinite value(s)")
        if data is None:
            frame = pd.DataFrame({cols.time: t})
            return frame if subject is None else frame.assign(**{cols.subject: subject})
        if not isinstance(data, pd.DataFrame) or cols.subject not in data.columns:
            raise DataError(f"with times=, data must be a data frame with the subject column '{cols.subject}'")
        # each subject's covariates at its latest visit, whatever the rows' order (subjects in order of appearance)
        last = latest_rows(data, cols.subject, cols.time)
        covs = [c for c in last.columns if c not in (cols.time, cols.response)]
        grid = last[covs].loc[last.index.repeat(len(t))].reset_index()
        grid[cols.time] = np.tile(t, len(last))
        if cols.response not in data.columns:
            return grid
        # keep the observations (to condition new subjects on); they are dropped from the output
        obs = data[[cols.subject, cols.time, cols.response] + covs].assign(__observed__=True)
        return pd.concat([grid.assign(__observed__=False), obs], ignore_index=True)

    # ------------------------------------------------------------------ posteriors of the rows' subjects
    def _subject_posteriors(self, rows: NewRows, y: np.ndarray | None, t: np.ndarray | None,
                            level: str) -> _Posteriors:
        est = self.estimate_
        q, p = est.cov_re.shape[0], len(est.beta)
        m = len(rows.Z)
        if level == "population" or rows.subjects is None:
            return _Posteriors(np.array([_POPULATION], dtype=object), np.zeros(m, dtype=int), np.zeros((1, q)),
                               est.cov_re[None], np.zeros((1, q, p)), np.array([np.inf]))
        codes, labels = factorize_groups(rows.subjects)
        S = len(labels)
        pos = self._subjects.get_indexer(pd.Index(labels, dtype=object))
        b, cov_b, sens = np.zeros((S, q)), np.repeat(est.cov_re[None], S, 0), np.zeros((S, q, p))
        known = pos >= 0
        b[known], cov_b[known], sens[known] = est.b[pos[known]], est.cov_b[pos[known]], est.beta_sensitivity[pos[known]]
        last = np.full(S, np.inf)
        if t is not None and getattr(self, "_last_times", None) is not None:
            last[known] = self._last_times[pos[known]]
        has_y = np.zeros(m, dtype=bool) if y is None else np.isfinite(y)
        new_obs = has_y & ~self._same_rows_as_fitted(rows, y, codes, pos, S)[codes]
        if new_obs.any():
            self._condition_new(rows, y, codes, new_obs, b, cov_b, sens)
            if t is not None:
                seen = np.bincount(codes[new_obs], minlength=S) > 0
                lt = np.full(S, -np.inf)
                np.maximum.at(lt, codes[new_obs], t[new_obs])
                last[seen] = lt[seen]
        unknown = ~known & (np.bincount(codes[has_y], minlength=S) == 0)
        if unknown.any():
            shown = labels[unknown][:10].tolist()
            more = f" and {int(unknown.sum()) - 10} more" if unknown.sum() > 10 else ""
            warnings.warn(
                f"subject(s) {shown}{more} were not in the data the model was fitted on and have no observed "
                "response here: their predictions are at the population level", UserWarning, stacklevel=4)
        return _Posteriors(np.asarray(labels, dtype=object), codes, b, cov_b, sens, last)

    def _same_rows_as_fitted(self, rows: NewRows, y: np.ndarray | None, codes: np.ndarray, pos: np.ndarray,
                             S: int) -> np.ndarray:
        """(S,) whether each subject's rows with a response here are the rows it was fitted on (their number,
        ``Z'1`` and ``Z'y`` agree); those subjects keep their fitted posterior, the others with responses are
        conditioned on them. Models saved before the fitted rows were kept: every fitted subject is the same."""
        known = pos >= 0
        mine = getattr(self, "_fitted_rows", None)
        if mine is None or y is None or not known.any():
            return known
        here = fitted_rows(rows.Z, y, codes, S)[known]
        there = mine[pos[known]]
        tol = 1e-9 * (np.abs(there) + np.abs(here) + 1e-300).max(axis=1, keepdims=True)
        same = np.zeros(S, dtype=bool)
        same[known] = (here[:, 0] == there[:, 0]) & np.all(np.abs(here - there) <= tol, axis=1)
        return same

    def _prior_mixture(self) -> PointMixture:
        """The random-effects prior N(0, Sigma) as a one-component mixture (user scale)."""
        cov = self.estimate_.cov_re
        return PointMixture(np.ones(1), np.zeros((1, cov.shape[0])), cov[None])

    def _condition_new(self, rows: NewRows, y, codes, mask, b, cov_b, sens) -> None:
        """Posterior of new subjects' random effects from their observed rows (fills b, cov_b, sens in place),
        by :func:`dmlmm.prediction.condition` with beta held at its estimate (a singular Sigma, a boundary fit, is
        conditioned on in the covariance form: :data:`dmlmm.prediction.SINGULAR_COV`)."""
        est = self.estimate_
        resid = y[mask] - rows.F[mask] @ est.beta  # from the fixed part (as _log_density: no cancellation)
        st = sufficient_stats(resid, rows.Z[mask], rows.F[mask], codes[mask], len(b))
        cm = condition(st, self._prior_mixture(), np.zeros_like(est.beta), est.sigma2)
        who = np.flatnonzero(st.n_obs > 0)
        b[who], cov_b[who] = cm.mean[who], cm.cov[who]
        sens[who] = cm.cov[who] @ st.XtF[who] / est.sigma2  # d E[b | y, beta] / d beta = -H

    def _moments(self, rows: NewRows, post: _Posteriors) -> tuple[np.ndarray, np.ndarray]:
        est = self.estimate_
        F, Z, j = rows.F, rows.Z, post.row_subject
        mean = (F @ est.beta if F.shape[1] else np.zeros(len(Z))) + np.einsum("mq,mq->m", Z, post.b[j])
        k = F - np.einsum("mqp,mq->mp", post.sens[j], Z)
        var = np.einsum("mi,mij,mj->m", Z, post.cov_b[j], Z) + np.einsum("mi,ij,mj->m", k, est.cov_beta, k)
        return mean, var

    # ------------------------------------------------------------------ public API
    def predict_trajectory(self, data=None, times=None, interval: float = 0.95, kind: str = "curve", *,
                           level: str = "subject", subject=None, X=None, Z=None, groups=None) -> pd.DataFrame:
        """Each subject's curve (or a new observation) with a pointwise band.

        Parameters
        ----------
        data : pandas.DataFrame or array of times, optional
            Formula form: rows with the formula's right-hand-side columns (and the grouping column for
            subject-level predictions). Longitudinal form: rows with the subject and time columns (+
            covariates), or an array of times together with ``subject=``. Rows that carry the response
            are conditioned on (a new subject's forecast, or a fitted subject's updated record); a fitted
            subject given its fitted rows, or none with a response, keeps its fitted posterior.
        times : array, optional
            Longitudinal form: predict every subject of ``data`` (or ``subject``, or the population
            when both are None) at these times; rows of ``data`` with a response are conditioned on.
        interval : float
            Central probability of the pointwise normal band.
        kind : {"curve", "observation"}
            The mean response, or a new measurement (adds ``sigma^2``).
        level : {"subject", "population"}
            ``"population"``: ``F beta`` with the random effects integrated out.
        subject : label, optional
            Subject for all rows (when ``data`` has no subject column or is an array of times).
        X, Z, groups : array-like
            Design-matrix form: new fixed / random design rows and group labels.

        Returns
        -------
        pandas.DataFrame
            Identifying columns (subject / time when applicable), ``mean``, ``lower``, ``upper``, and
            for the longitudinal form ``beyond_last_visit`` (the time lies after the subject's last
            observation: a forecast).
        """
        self._check_fitted()
        if level not in ("subject", "population"):
            raise ValueError(f"level must be 'subject' or 'population', got {level!r}")
        if kind not in ("curve", "observation"):
            raise ValueError(f"kind must be 'curve' or 'observation', got {kind!r}")
        interval = check_interval(interval)
        if times is None and data is not None and not isinstance(data, pd.DataFrame) \
                and isinstance(self.builder_, LongitudinalDesignBuilder):
            data, times = None, data  # an array of times
        rows, y, t, keep = self._rows(data, subject, X, Z, groups, times)
        post = self._subject_posteriors(rows, y, t, level)
        mean, var = self._moments(rows, post)
        if kind == "observation":
            var = var + self.sigma2_
        half = sps.norm.ppf(0.5 + 0.5 * float(interval)) * np.sqrt(np.clip(var, 0.0, None))
        out = rows.frame.copy()
        tr = self._transform
        out["mean"], out["lower"], out["upper"] = inverse(mean, tr), inverse(mean - half, tr), inverse(mean + half, tr)
        if t is not None:
            out["beyond_last_visit"] = t > post.last_time[post.row_subject]
        return out[keep].reset_index(drop=True) if not keep.all() else out

    def sample_trajectories(self, data=None, times=None, n_samples: int = 100, kind: str = "curve",
                            random_state=None, *, level: str = "subject", subject=None, X=None, Z=None,
                            groups=None) -> pd.DataFrame:
        """Joint draws of each subject's curve at the rows (same arguments as :meth:`predict_trajectory`).

        A draw takes ``beta`` from its posterior, then each subject's random effects given that
        ``beta`` (they move by ``-H_i (beta - beta_hat)``), so draws are coherent across a subject's
        rows. Returns the mixtures' layout: the subject column (where the rows have one), ``sample``, the rows'
        other identifying columns (the time) and ``value``, subject by subject (sorted by label), each subject's
        rows for draw 0, then draw 1, ...
        """
        self._check_fitted()
        if not positive_int(n_samples):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if kind not in ("curve", "observation"):
            raise ValueError(f"kind must be 'curve' or 'observation', got {kind!r}")
        if level not in ("subject", "population"):
            raise ValueError(f"level must be 'subject' or 'population', got {level!r}")
        check_random_state(random_state)
        rng = np.random.default_rng(random_state)
        if times is None and data is not None and not isinstance(data, pd.DataFrame) \
                and isinstance(self.builder_, LongitudinalDesignBuilder):
            data, times = None, data
        rows, y, t, keep = self._rows(data, subject, X, Z, groups, times)
        post = self._subject_posteriors(rows, y, t, level)
        est, S = self.estimate_, int(n_samples)
        p, q = len(est.beta), est.cov_re.shape[0]
        d_beta = np.zeros((S, 0))  # (S, p) draws of beta - beta_hat
        if p:
            d_beta = rng.standard_normal((S, p)) @ cholesky(sym(est.cov_beta), "fixed-effects covariance").T
        L = cholesky(sym(post.cov_b), "random-effects covariance")  # (K, q, q): cov_b is Cov(b | beta)
        z = rng.standard_normal((S, len(post.labels), q))
        b = post.b[None] - np.einsum("kqp,sp->skq", post.sens, d_beta) + np.einsum("kqr,skr->skq", L, z)
        F, Zr, j = rows.F, rows.Z, post.row_subject
        value = (est.beta[None] + d_beta) @ F.T + np.einsum("mq,smq->sm", Zr, b[:, j])  # (S, m)
        if kind == "observation":
            value = value + np.sqrt(self.sigma2_) * rng.standard_normal(value.shape)
        frame = rows.frame.reset_index(drop=True)
        frame, value, j = frame[keep].reset_index(drop=True), value[:, keep], j[keep]
        # the mixtures' order: subject by subject (their labels' order), draw by draw, the subject's rows; at the
        # population level every row has the one population posterior, so the rows' own subjects set the order
        subjects = None if rows.subjects is None else np.asarray(rows.subjects, dtype=object)[keep]
        who = j if level == "subject" or subjects is None else _label_codes(subjects)
        row, draw = np.tile(np.arange(len(frame)), S), np.repeat(np.arange(S), len(frame))
        order = np.lexsort((row, draw, who[row]))
        out = frame.loc[row[order]].reset_index(drop=True)
        out.insert(0 if subjects is None else _subject_columns(frame, subjects), "sample", draw[order])
        out["value"] = inverse(value.reshape(-1)[order], self._transform)
        return out

    def _log_density(self, data, X, Z, y, groups) -> pd.Series:
        """log N(z_i; F_i beta, Z_i Sigma Z_i' + sigma^2 I) + sum log|dz/dy| per subject (plug-in; z = y
        without a transform), indexed by subject."""
        b = self.builder_
        if isinstance(b, MatrixDesignBuilder):
            if y is None:
                raise DataError("score for the design-matrix form needs X=, Z=, y= (and groups=)")
            rows = b.transform(X, Z, groups)
            yv = np.asarray(y, dtype=float).reshape(-1)
        else:
            name = self._response_name()
            if not isinstance(data, pd.DataFrame) or name not in data.columns:
                raise DataError(f"scoring needs a data frame with the response column '{name}'")
            self._check_frame(data, None, None)
            group = self.design_info_.get("group_name")
            if self.design_info_.get("grouped") and group is not None and group not in data.columns:
                raise DataError(f"scoring needs the subject column {group!r}; the columns are {list(data.columns)}")
            yv = as_numeric(data[name], f"column '{name}'")
            bad = ~np.isfinite(yv)
            if bad.any():
                raise DataError(
                    f"column '{name}' has {int(bad.sum())} missing or infinite value(s) (rows "
                    f"{list(data.index[bad][:10])}): drop those rows first; scores, and the visits they condition on, "
                    "need observed responses")
            rows = b.transform(data)
        if len(yv) != len(rows.Z) or not np.isfinite(yv).all():
            raise DataError("the response to score must be finite, one value per row")
        zv = forward(yv, self._transform, self._response_name() or "y", fitted=True)
        subj = rows.subjects if rows.subjects is not None else np.array([_POPULATION] * len(yv), dtype=object)
        codes, labels = factorize_groups(subj)
        est = self.estimate_
        # the residuals from the fixed part, not z itself: the density comes from the subjects' sums of squares,
        # where a response far from zero (1e6 + small variation) lost every digit to cancellation
        resid = zv - rows.F @ est.beta
        st = sufficient_stats(resid, rows.Z, rows.F, codes, len(labels))
        jac = np.bincount(codes, weights=log_jacobian(zv, self._transform), minlength=len(labels))
        return pd.Series(log_marginal(st, self._prior_mixture(), np.zeros_like(est.beta), est.sigma2) + jac,
                         index=self._label_index(labels), name="log_score")

    def _label_index(self, labels) -> pd.Index:
        """Subject labels as the mixtures give them: named as the training subjects, integers as integers."""
        return pd.Index(labels, name=self._subjects.name).infer_objects()

    def score_samples(self, data=None, condition_on=None, *, X=None, Z=None, y=None, groups=None) -> pd.Series:
        """Log predictive density of each subject's observations (plug-in estimates, user scale).

        With ``condition_on`` (other observations of the same subjects, a data frame), the density of
        ``data``'s observations given those: the held-out log score.
        """
        self._check_fitted()
        out = self._log_density(data, X, Z, y, groups)
        if condition_on is None:
            return out
        if not isinstance(data, pd.DataFrame) or not isinstance(condition_on, pd.DataFrame):
            raise TypeError("condition_on needs data frames for both arguments")
        b = self.builder_
        cols = getattr(b, "columns_", None)
        if cols is not None:
            warn_held_out_frames(data, condition_on, cols.subject, cols.time, cols.response)
        elif isinstance(b, FormulaDesignBuilder):
            warn_held_out_frames(data, condition_on, self.design_info_["group_name"], None, self._response_name())
        cond = self._log_density(condition_on, None, None, None, None)  # first: its errors name its own rows
        with warnings.catch_warnings():  # said of data and condition_on already, with their own row labels
            warnings.filterwarnings("ignore", message=REPEATED_ROWS)
            both = self._log_density(pd.concat([data, condition_on], ignore_index=True), None, None, None, None)
        has = out.index.intersection(cond.index)
        out.loc[has] = both.loc[has] - cond.loc[has]
        return out

    def score(self, data=None, condition_on=None, **kw) -> float:
        """Mean over subjects of :meth:`score_samples`."""
        return float(self.score_samples(data, condition_on, **kw).mean())

    def predict_proba(self, data=None, **kw) -> pd.DataFrame:
        """Cluster membership probabilities: one cluster (column 0), probability one for every subject."""
        labels = self._subject_labels(data, **kw)
        return pd.DataFrame({0: np.ones(len(labels))}, index=labels).rename_axis(self.design_info_["group_name"])

    def predict(self, data=None, **kw) -> pd.Series:
        """Cluster label of each subject: 0 (the linear mixed model has one cluster)."""
        labels = self._subject_labels(data, **kw)
        return pd.Series(np.zeros(len(labels), dtype=int), index=labels, name="cluster")

    def _subject_labels(self, data=None, *, X=None, Z=None, groups=None) -> pd.Index:
        self._check_fitted()
        if data is None and groups is None:
            return self._subjects
        if groups is not None:
            return self._label_index(factorize_groups(np.asarray(groups, dtype=object).reshape(-1))[1])
        name = self.design_info_["group_name"]
        if not isinstance(data, pd.DataFrame) or name not in data.columns:
            raise DataError(f"predict needs a data frame with the subject column '{name}'")
        return self._label_index(factorize_groups(data[name].to_numpy(dtype=object))[1]).rename(name)


def _subject_columns(frame: pd.DataFrame, subjects: np.ndarray) -> int:
    """1 where ``frame``'s first column holds the rows' subjects ``subjects`` (the design builders put it
    first when the rows have one), else 0: where a draw's ``sample`` column goes, after the subject as in the
    mixtures' draws."""
    if frame.shape[1] == 0:
        return 0
    first = frame.iloc[:, 0].to_numpy(dtype=object)
    return int(len(first) == len(subjects) and bool(np.all(first == np.asarray(subjects, dtype=object))))


def _label_codes(subjects: np.ndarray) -> np.ndarray:
    """Each row's subject as its rank among the labels (sorted; in order of appearance where labels of
    different types do not sort)."""
    try:
        return pd.factorize(subjects, sort=True)[0]
    except TypeError:
        return pd.factorize(subjects)[0]
