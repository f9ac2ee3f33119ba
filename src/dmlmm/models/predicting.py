"""What a fitted model says about subjects: clusters, trajectories, draws and log scores.

A mixin of :class:`~dmlmm.models.base.VariationalLongitudinalModel`. Every method takes
new data (a long frame, or a :class:`~dmlmm.data.Longitudinal`), builds its columns with the
fitted design and conditions each subject's random effects on its observations
(:mod:`dmlmm.prediction`): cluster probabilities (``predict_proba``, ``predict``), curves
with bands (``predict_trajectory``), draws (``sample_trajectories``) and log predictive
densities (``score_samples``, ``score``).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd

from ..columns import as_numeric
from ..continuation import Continuation
from ..data import REPEATED_ROWS, Longitudinal
from ..sufficient import SufficientStats
from ..distributed import is_dask_collection
from ..exceptions import DataError, ExtrapolationWarning
from ..heldout import warn_held_out_frames
from ..inference.engine import noise_moments
from ..inference.local import local_step
from ..prediction import ConditionalMixture, condition, mixture_quantiles
from ..prediction_scales import condition_with_scales
from ..response_transform import log_jacobian
from .design import latest_rows
from .frames import FrameLike
from .params import check_interval, check_random_state, positive_int

__all__ = ["Predicting"]


def _observed_counts(d: Longitudinal) -> np.ndarray:
    """Each subject's number of observed responses (N,): the observations a prediction conditions on."""
    if d.response is None:
        return np.zeros(d.n_subjects, dtype=int)
    return np.bincount(d.codes[np.isfinite(d.response)], minlength=d.n_subjects)


class Predicting:
    """Mixin: ``predict_proba``, ``predict``, ``predict_trajectory``, ``sample_trajectories``, ``score``."""

    # -------------------------------------------------------------- clusters
    def _data(self, df: FrameLike, require_response: bool = True) -> Longitudinal:
        self._check_fitted()
        return self.design_.data_from(df, require_response=require_response)

    def predict_proba(self, df: FrameLike) -> pd.DataFrame:
        """Posterior cluster (path) probabilities of each subject in ``df``: DataFrame (subjects x clusters).

        Rows without a response count for nothing: a subject with none gets the prior weights.
        A dask DataFrame gives a lazy dask DataFrame (:mod:`dmlmm.distributed.predict`)."""
        return self._posterior_frame(df, "predict_proba", self._proba_frame)

    def predict(self, df: FrameLike) -> pd.Series:
        """Most probable cluster of each subject in ``df`` (Series indexed by subject)."""
        return self._labels_from(self.predict_proba(df))

    def predict_group_proba(self, df: FrameLike) -> pd.DataFrame:
        """Posterior probabilities of the first-layer components (coarser grouping)."""
        return self._posterior_frame(df, "predict_group_proba", self._group_frame)

    def _posterior_frame(self, df: FrameLike, method: str, to_frame) -> pd.DataFrame:
        """``to_frame(responsibilities, subjects)`` of ``df``'s local step; a dask frame runs ``method``
        partition by partition (:mod:`dmlmm.distributed.predict`)."""
        if is_dask_collection(df):
            from ..distributed.predict import predict_partitions

            return predict_partitions(self, df, method)
        d = self._data(df, require_response=False)
        response = self.design_.columns.response
        if isinstance(df, pd.DataFrame) and response not in df.columns:  # e.g. a misspelled or renamed column
            warnings.warn(f"the data have no response column '{response}': every subject gets the prior's class "
                          "probabilities (nothing is conditioned on)", UserWarning, stacklevel=3)
        if self._scales_df() is not None:  # each subject's residual scale integrated out (exactly, given the globals)
            cm, subjects, _ = self._conditional(d, df, keep_components=False)
            return to_frame(cm.weights, subjects)
        return to_frame(self._local(d, df).resp, d.subjects)

    def predict_group(self, df: FrameLike) -> pd.Series:
        return self._labels_from(self.predict_group_proba(df))

    def _local(self, data: Longitudinal, frame: FrameLike):
        stats = self.design_.stats(data)
        pp, _ = self.prior_.path_prior(self.params_.prior)
        nm = noise_moments(self.params_, self.design_.n_fixed, self.prior_.path_components())
        Z = self._membership_matrix(frame, data)
        offsets = None
        if Z is not None:  # the membership model's probabilities (as in every prediction) in place of E[log pi]
            first = self.prior_.path_components()[:, 0]
            dirichlet, _ = self.prior_.first_layer_dirichlet(self.params_.prior)
            offsets = self._membership_log_p1(Z)[:, first] - dirichlet.mean_log[first]
        local = local_step(stats, pp, nm, self.hard_assignment, log_weight=offsets)
        empty = stats.n_obs == 0
        if empty.any():
            # no observation: the prior's path weights, E[pi] or, with membership covariates, each subject's
            # membership probabilities times the deeper layers' weights (the local step's q(c) is the mean-field
            # optimum, off them by the paths' expected log-prior normalisers: 0.579 against membership
            # probabilities of 0.565)
            mix = self.prior_.point_mixture(self.params_.prior)
            weights = (mix.weights / mix.weights.sum())[None] if Z is None else np.exp(self._path_log_weights(Z, mix))
            local = replace(local, resp=np.where(empty[:, None], weights, local.resp))
        return local

    # -------------------------------------------------------------- trajectories
    def _conditional(self, d: Longitudinal | None, frame: FrameLike = None, cont: Continuation | None = None,
                     keep_components: bool = True) -> tuple[ConditionalMixture, pd.Index, np.ndarray]:
        """Posterior mixture of b per subject (or the prior for d=None), subjects, last covariates (N, P).

        With ``cont``, b with the continuation coordinates beyond the basis range (:meth:`_continuation`).
        With subject-level residual scales (``noise_df``) each subject's scale is integrated out
        (:mod:`dmlmm.prediction_scales`), and the components carry their own residual variances.
        """
        mix, w, s2 = self._mixture(cont), self._w(), self._sigma2_std()
        D, P = mix.means.shape[1], self.design_.n_fixed
        if d is None:
            stats = SufficientStats(np.zeros(1, int), np.zeros(1), np.zeros((1, D)), np.zeros((1, D, D)),
                                    np.zeros((1, P)), np.zeros((1, P, P)), np.zeros((1, D, P)))
            subjects, lw, fixed_rows = pd.Index(["population"], name="subject"), None, np.zeros((1, P))
        else:
            stats = self.design_.stats(d, cont)
            last = np.r_[d.offsets[1:] - 1]
            lw = self._path_log_weights(self._membership_matrix(frame, d), mix)
            subjects, fixed_rows = d.subjects, self.design_.F(d.covariates[last])
        df = self._scales_df()
        if df is None:
            cm = condition(stats, mix, w, s2, keep_components=keep_components, log_weights=lw)
        else:
            cm = condition_with_scales(stats, mix, w, s2, df, keep_components=keep_components, log_weights=lw)
        return cm, subjects, fixed_rows

    def predict_noise(self, df: FrameLike, *, level: str = "subject") -> pd.Series:
        """Each subject's posterior mean residual variance given its observations in ``df`` (model scale:
        the log scale with a ``response_transform``), Series indexed by subject.

        With subject-level residual scales (``noise_df``) it is ``E[sigma^2 v_i | y_i]``, the scale
        integrated over its posterior given the fitted globals: a noisy subject's is large, a new subject
        without observations gets the prior's mean (infinite for ``nu <= 2``). Without them, every
        subject's path residual variance averaged over its cluster probabilities (``sigma2_`` for
        shared noise)."""
        self._check_fitted()
        if is_dask_collection(df):
            raise TypeError("predict_noise needs a pandas DataFrame: call .compute() on the dask frame (or on the "
                            "subjects of interest) first")
        d = self._prediction_data(df, level)
        cm, subjects, _ = self._conditional(d, df)
        var = np.bincount(cm.subject, weights=cm.weight * self._noise_var(cm), minlength=len(subjects))
        if cm.noise_var is not None and d is not None:  # no data: the prior mean of sigma^2 v, nu / (nu - 2)
            df_ = self._scales_df()
            empty = _observed_counts(d) == 0
            prior_mean = np.inf if df_ <= 2 else df_ / (df_ - 2)
            # E[sigma^2_c] over the prior's path weights (the components of a subject without data)
            base = np.bincount(cm.subject, weights=cm.weight * self._sigma2_std()[cm.path], minlength=len(subjects))
            var = np.where(empty, base * prior_mean, var)
        return pd.Series(var * self.design_.y_scale**2, index=subjects, name="residual_variance")

    def _scales_df(self) -> float | None:
        """The degrees of freedom of the subject-level residual scales, None without them."""
        scales = getattr(self.params_, "scales", None)
        return None if scales is None else float(scales.df)

    def _noise_var(self, cm: ConditionalMixture) -> np.ndarray:
        """(A,) the residual variance of a new observation under each component of ``cm`` (standardised scale)."""
        return self._sigma2_std()[cm.path] if cm.noise_var is None else cm.noise_var

    def _continuation(self, *times) -> Continuation | None:
        """The continuation beyond the basis range for a prediction at all of ``times`` (arrays, or
        Longitudinal data; :mod:`dmlmm.continuation`); None when none of them lies beyond it."""
        t = [np.asarray(x.time if isinstance(x, Longitudinal) else x, dtype=float).reshape(-1)
             for x in times if x is not None]
        return self.design_.continuation_for(np.concatenate(t) if t else np.zeros(0))

    def _grid(self, times) -> np.ndarray:
        if times is None:
            return np.linspace(*self.design_.basis.window, 100)
        t = as_numeric(np.ravel(np.asarray(times, dtype=object)), "times")
        if not np.isfinite(t).all():
            raise DataError("prediction times must be finite numbers")
        return t

    def predict_trajectory(
        self,
        df: FrameLike | None = None,
        times: np.ndarray | None = None,
        interval: float = 0.95,
        kind: str = "curve",
        *,
        level: str = "subject",
    ) -> pd.DataFrame:
        """Each subject's predictive distribution at ``times`` given its observations in ``df``.

        Parameters
        ----------
        df : DataFrame, Longitudinal or dask.dataframe.DataFrame, optional
            Observations to condition on; None gives the population (prior mixture), labelled "population".
            A Dask frame (every subject's rows in one partition) gives a lazy dask DataFrame, each
            partition predicted on its worker (:mod:`dmlmm.distributed.predict`).
            Rows with a missing response (or a frame without the response column) are not conditioned
            on: a new patient given only by its covariates gets the population curve at those
            covariates (the last row's), and a patient with a few early visits a forecast from them.
        times : (T,) array, optional
            Times to predict at (default: 100 points over the basis range).
        interval : float
            Central probability of the band.
        kind : {"curve", "observation"}
            The noise-free curve, or a new measurement (adds the residual variance).
        level : {"subject", "population"}
            ``"population"``: each subject of ``df`` gets the population curve at its covariates (its
            responses are not conditioned on), as :class:`~dmlmm.LinearMixedModel` gives it.

        Returns
        -------
        DataFrame with columns subject, time, mean, lower, upper (user scale) and
        beyond_last_visit (True where the time lies after the subject's last observation:
        a forecast; always False for the population curve).

        With a ``response_transform`` all of them are on the data's scale: lower and upper are the
        quantiles of the log-scale mixture mapped back (exact), mean is its mean mapped back (for
        one Gaussian component the median; :mod:`dmlmm.response_transform`).

        The bands integrate over the posterior uncertainty of the global parameters
        (component means and loadings, fixed effects), not only over the subject's own.
        """
        self._check_fitted()
        if kind not in ("curve", "observation"):
            raise ValueError(f"kind must be 'curve' or 'observation', got {kind!r}")
        interval = check_interval(interval)
        if is_dask_collection(df):  # lazily, partition by partition on the workers
            from ..distributed.predict import trajectory_partitions

            t = self._grid(times)
            self.design_.X(t)  # times outside the basis range: the warning (or error) here, not on a worker
            return trajectory_partitions(self, df, times=t, interval=interval, kind=kind, level=level)
        d = self._prediction_data(df, level)
        t = self._grid(times)
        cont = self._continuation(t, d)
        cm, subjects, fixed_rows = self._conditional(d, df, cont)
        Xn = self.design_.X_continued(t, cont)  # (T, D [+ continuation])
        F3 = self._fixed_at_times(d, df, fixed_rows, t)  # (N, T, P)
        fw = F3 @ self._w()  # (N, T)
        mean_a = cm.mean @ Xn.T + fw[cm.subject]
        # diag(X C_a X') per component: one batched matrix product, then row sums (einsum's three-operand
        # loop took half of a prediction's time)
        var_a = np.sum((cm.cov @ Xn.T) * Xn.T, axis=1) + self._fixed_var(F3)[cm.subject]
        if kind == "observation":
            var_a = var_a + self._noise_var(cm)[:, None]
        sd_a = np.sqrt(np.maximum(var_a, 0.0))
        N = len(subjects)
        mean = np.zeros((N, len(t)))
        np.add.at(mean, cm.subject, cm.weight[:, None] * mean_a)
        alpha = (1 - interval) / 2
        q = mixture_quantiles(cm.weight, mean_a, sd_a, cm.subject, np.array([alpha, 1 - alpha]))
        user = self.design_.to_user_scale
        return pd.DataFrame(
            {
                "subject": np.repeat(subjects.to_numpy(), len(t)),
                "time": np.tile(t, N),
                "mean": user(mean).reshape(-1),
                "lower": user(q[:, 0]).reshape(-1),
                "upper": user(q[:, 1]).reshape(-1),
                "beyond_last_visit": (t[None, :] > self._last_times(d, N, level)[:, None]).reshape(-1),
            }
        )

    def _prediction_data(self, df: FrameLike | None, level: str) -> Longitudinal | None:
        """``df`` as the fitted design reads it; at ``level="population"`` without its responses."""
        if level not in ("subject", "population"):
            raise ValueError(f"level must be 'subject' or 'population', got {level!r}")
        d = None if df is None else self._data(df, require_response=False)
        response = self.design_.columns.response
        if level == "subject" and isinstance(df, pd.DataFrame) and response not in df.columns:  # e.g. renamed
            warnings.warn(f"the data have no response column '{response}': every subject gets the population's "
                          "prediction (nothing is conditioned on; level='population' asks for it quietly)",
                          UserWarning, stacklevel=4)
        return d.without_response() if d is not None and level == "population" else d

    @staticmethod
    def _last_times(d: Longitudinal | None, n: int, level: str = "subject") -> np.ndarray:
        """Each subject's last observation time (N,); +inf for the population (nothing is beyond)."""
        if d is None or level == "population":
            return np.full(n, np.inf)
        observed = np.zeros(len(d.time), dtype=bool) if d.response is None else np.isfinite(d.response)
        return np.maximum.reduceat(np.where(observed, d.time, -np.inf), d.offsets[:-1])

    def _fixed_var(self, fixed_rows: np.ndarray) -> np.ndarray:
        """Posterior variance of f'w for covariate rows (..., P), shape (...), standardised scale."""
        if self.params_.fixed is None or fixed_rows.shape[-1] == 0:
            return np.zeros(fixed_rows.shape[:-1])
        return np.einsum("...p,pq,...q->...", fixed_rows, self._w_cov(), fixed_rows)

    def _fixed_at_times(self, d: Longitudinal | None, df: FrameLike, fixed_rows: np.ndarray,
                        t: np.ndarray) -> np.ndarray:
        """Each subject's standardised covariate row at each prediction time, (N, T, P).

        The covariates are the subject's latest visit's; when the covariate formula uses time (e.g.
        ``diet * time``) its columns are rebuilt at every prediction time, so a time-varying
        effect is drawn along the curve. The population curve (``d`` None) has the mean covariates,
        and with such a formula the training subjects' columns rebuilt at each time and averaged
        (:meth:`LongitudinalDesign.population_fixed`).
        """
        enc = self.design_.encoding
        if d is None and fixed_rows.shape[1]:
            population = self.design_.population_fixed(t)  # (T, P), None where the covariates do not use time
            if population is not None:
                return population[None]
        if getattr(enc, "time", None) is None or d is None or fixed_rows.shape[1] == 0:
            return np.broadcast_to(fixed_rows[:, None, :], (len(fixed_rows), len(t), fixed_rows.shape[1]))
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"the covariates {list(enc.columns)} use the time column: predict from a data frame "
                            "(the covariate values are rebuilt at every prediction time)")
        cols = self.design_.columns
        last = latest_rows(df, cols.subject, cols.time)  # each subject's latest visit, whatever the rows' order
        return self.design_.fixed_at_times(last.loc[d.subjects].reset_index(), t)  # the subjects in d's order

    def sample_trajectories(
        self,
        df: FrameLike | None = None,
        times: np.ndarray | None = None,
        n_samples: int = 100,
        kind: str = "curve",
        random_state=None,
        *,
        level: str = "subject",
    ) -> pd.DataFrame:
        """Draws from each subject's predictive distribution: columns subject, sample, time, value.

        Same ``df``, ``times``, ``kind`` and ``level`` as :meth:`predict_trajectory`."""
        self._check_fitted()
        if not positive_int(n_samples):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if kind not in ("curve", "observation"):
            raise ValueError(f"kind must be 'curve' or 'observation', got {kind!r}")
        check_random_state(random_state)
        rng = np.random.default_rng(random_state)
        d = self._prediction_data(df, level)
        t = self._grid(times)
        cont = self._continuation(t, d)
        cm, subjects, fixed_rows = self._conditional(d, df, cont)
        Xn = self.design_.X_continued(t, cont)
        N, S = len(subjects), int(n_samples)
        # choose a component per (subject, draw) by inverse-CDF within each subject's block of pairs
        cum = np.cumsum(cm.weight)
        block_start = np.r_[0.0, np.bincount(cm.subject, weights=cm.weight, minlength=N).cumsum()[:-1]]
        u = block_start[:, None] + rng.random((N, S)) * np.bincount(cm.subject, weights=cm.weight, minlength=N)[:, None]
        comp = np.searchsorted(cum, u, side="right").clip(0, len(cm.weight) - 1)  # (N, S)
        chol = np.linalg.cholesky(cm.cov + 1e-12 * np.eye(cm.cov.shape[-1]))
        z = rng.standard_normal((N, S, chol.shape[-1]))
        b = cm.mean[comp] + np.einsum("nsde,nse->nsd", chol[comp], z)
        w = self._w()
        F3 = self._fixed_at_times(d, df, fixed_rows, t)  # (N, T, P)
        if self.params_.fixed is not None and len(w):  # the fixed effects' posterior uncertainty too
            chol_w = np.linalg.cholesky(self._w_cov() + 1e-12 * np.eye(len(w)))
            w = w + rng.standard_normal((N, S, len(w))) @ chol_w.T  # (N, S, P)
            fw = np.einsum("ntp,nsp->nst", F3, w)
        else:
            fw = (F3 @ w)[:, None, :]
        curve = b @ Xn.T + fw
        if kind == "observation":
            sd = np.sqrt(self._noise_var(cm)[comp])  # (N, S): the drawn component's residual SD
            curve = curve + sd[:, :, None] * rng.standard_normal(curve.shape)
        return pd.DataFrame(
            {
                "subject": np.repeat(subjects.to_numpy(), S * len(t)),
                "sample": np.tile(np.repeat(np.arange(S), len(t)), N),
                "time": np.tile(t, N * S),
                "value": self.design_.to_user_scale(curve).reshape(-1),
            }
        )

    # -------------------------------------------------------------- scores
    def score_samples(self, df: FrameLike, condition_on: pd.DataFrame | None = None) -> pd.Series:
        """Log predictive density of each subject's observations in ``df`` (user scale).

        With ``condition_on`` (other observations of the same subjects), the density of
        ``df``'s observations given those: the held-out log score. A dask DataFrame (and ``condition_on``
        partitioned alike) gives a lazy dask Series, partition by partition
        (:func:`dmlmm.distributed.predict.score_partitions`).
        """
        if is_dask_collection(df) or is_dask_collection(condition_on):
            from ..distributed.predict import score_partitions

            return score_partitions(self, df, condition_on)
        d = self._data(df)
        if condition_on is not None:
            if isinstance(df, Longitudinal) or isinstance(condition_on, Longitudinal):
                raise TypeError("condition_on needs data frames for both arguments")
            c = self._data(condition_on)
            cols = self.design_.columns
            warn_held_out_frames(df, condition_on, cols.subject, cols.time, cols.response)
            cont = self._continuation(d, c)  # one continuation for all three densities
            lm = self._log_marginal(d, df, cont)
            frame = pd.concat([df, condition_on], ignore_index=True)
            with warnings.catch_warnings():  # said of df and condition_on already, with their own row labels
                warnings.filterwarnings("ignore", message=REPEATED_ROWS)
                warnings.simplefilter("ignore", ExtrapolationWarning)
                both = self._data(frame)
                lm_both = pd.Series(self._log_marginal(both, frame, cont), index=both.subjects)
            lm_c = pd.Series(self._log_marginal(c, condition_on, cont), index=c.subjects)
            out = pd.Series(lm, index=d.subjects)
            has = out.index.intersection(lm_c.index)
            out.loc[has] = lm_both.loc[has] - lm_c.loc[has]
            return out.rename("log_score")
        lm = self._log_marginal(d, df, self._continuation(d))
        return pd.Series(lm, index=d.subjects, name="log_score")

    def _log_marginal(self, d: Longitudinal, frame: FrameLike, cont: Continuation | None = None) -> np.ndarray:
        cm, _, _ = self._conditional(d, frame, cont, keep_components=False)
        return cm.log_marginal - _observed_counts(d) * np.log(self.design_.y_scale) + self._log_jacobian(d)

    def _log_jacobian(self, d: Longitudinal) -> np.ndarray:
        """Per subject (N,), sum of log |dz/dy| over its observations: densities of z = transform(y)
        become densities of y (:mod:`dmlmm.response_transform`); zeros without a transform."""
        tr = self.design_.transform
        if tr is None or d.response is None:
            return np.zeros(d.n_subjects)
        observed = np.isfinite(d.response)
        return np.bincount(d.codes[observed], weights=log_jacobian(d.response[observed], tr), minlength=d.n_subjects)

    def score(self, df: FrameLike, condition_on: pd.DataFrame | None = None) -> float:
        """Mean over subjects of :meth:`score_samples` (computed, for Dask frames too)."""
        mean = self.score_samples(df, condition_on).mean()
        return float(mean.compute() if is_dask_collection(mean) else mean)
