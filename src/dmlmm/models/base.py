"""The user API shared by the variational longitudinal models (scikit-learn conventions).

Subclasses only say which random-effects prior they use (:meth:`_make_prior`);
fitting, clustering, prediction, scoring and summaries live here.
"""

from __future__ import annotations

import copy
import warnings
from time import perf_counter
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.special import logsumexp, ndtri

from .._estimator import HyperParameters
from ..data import Longitudinal
from ..sufficient import SufficientStats
from ..distributed import is_dask_collection
from ..exceptions import DataError, EmptyComponentWarning, NotFittedError
from ..inference.engine import VariationalParams, VIConfig, init_noise_and_fixed, noise_moments
from ..inference.local import local_step
from ..inference.noise import is_per_cluster, path_groups, per_cluster
from ..inference.starts import run_vi_with_starts
from ..inference.stochastic import StochasticSettings, run_vi_stochastic
from ..prediction import ConditionalMixture, condition, fixed_effects_cov, mixture_quantiles
from ..priors.base import PointMixture, RandomEffectsPrior
from ..priors.membership import first_layer_resp, membership_init, membership_laplace_cov, stick_log_probs
from .design import LongitudinalDesign
from .membership_design import MembershipDesign
from .params import check_model_params, check_random_state, positive_int

__all__ = ["VariationalLongitudinalModel", "ridge_estimates", "pooled_ridge"]

FrameLike = pd.DataFrame | Longitudinal
_INIT_SMOOTHING = 1e-3  # ridge penalty per unit roughness of the starting per-subject fits


def ridge_estimates(
    stats: SufficientStats,
    penalty: float | np.ndarray = 0.5,
    roughness: np.ndarray | None = None,
    pooled: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Per-subject ridge fits of b_i shrunk towards the pooled fit, shape (N, D) (batched solves).

    ``penalty`` is a scalar or one value per coordinate (D,). With ``roughness`` (D,) the
    pooled fit and the subjects' fits are also penalised by ``_INIT_SMOOTHING * roughness``:
    with sparse, tied visit times an unpenalised pooled curve can swing wildly between the
    visits in directions the data do not see, and would start the fit there. ``pooled``: the
    pooled fit (:func:`pooled_ridge`) when it was computed elsewhere (from more subjects than ``stats``).
    """
    D = stats.dim_random
    rough = np.zeros(D) if roughness is None else _INIT_SMOOTHING * np.asarray(roughness, dtype=float)
    if pooled is None:
        pooled = pooled_ridge(stats.total(), stats.n_subjects, roughness)
    b0, w0 = pooled
    lhs = stats.XtX + (np.broadcast_to(penalty, (D,)) + rough) * np.eye(D)
    r = stats.Xty - stats.XtF @ w0 + penalty * b0
    return np.linalg.solve(lhs, r[..., None])[..., 0]


def _init_factory(
    stats: SufficientStats, b_hat: np.ndarray, config: VIConfig, kind: str, Z: np.ndarray | None = None
) -> Callable[[np.ndarray | None], Callable[[RandomEffectsPrior, np.random.Generator], VariationalParams]]:
    """``make_init(rows)``: the starting point of a fit to the subjects at positions ``rows`` (None: all).

    ``b_hat`` (N, D) are the per-subject ridge fits; the noise and fixed-effect factors start from
    the selected subjects' statistics, and with ``kind == "cluster"`` each start gets one residual
    variance per first-layer component; with membership covariates ``Z`` (N, Q) each start gets
    the membership model's prior factor, sized to its first layer.
    """

    def make_init(rows: np.ndarray | None):
        st, bh = (stats, b_hat) if rows is None else (stats.subset(rows), b_hat[rows])
        noise, aux, fixed = init_noise_and_fixed(st, bh, config)

        def init(p: RandomEffectsPrior, g: np.random.Generator) -> VariationalParams:
            nz, ax = noise, aux
            if kind == "cluster":  # one residual variance per first-layer component of this start
                nz, ax = per_cluster(noise, aux, int(p.path_components()[:, 0].max()) + 1)
            k1 = int(p.path_components()[:, 0].max()) + 1
            gamma = None if Z is None else membership_init(k1, Z.shape[1], config.membership_scale)
            return VariationalParams(nz, ax, fixed, p.init_params(bh, g), gamma)

        return init

    return make_init



def pooled_ridge(
    totals: SufficientStats, n_subjects: int, roughness: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The pooled fit (b0 (D,), w0 (P,)) that :func:`ridge_estimates` shrinks towards.

    ``totals`` holds the statistics summed over all ``n_subjects`` subjects (one row).
    """
    D, P = totals.dim_random, totals.dim_fixed
    rough = np.zeros(D) if roughness is None else _INIT_SMOOTHING * np.asarray(roughness, dtype=float)
    A = np.zeros((D + P, D + P))
    A[:D, :D] = totals.XtX[0]
    A[:D, D:] = totals.XtF[0]
    A[D:, :D] = A[:D, D:].T
    A[D:, D:] = totals.FtF[0]
    rhs = np.r_[totals.Xty[0], totals.Fty[0]]
    A[:D, :D] += np.diag(rough * max(1.0, float(n_subjects)))
    pooled = np.linalg.solve(A + 1e-8 * np.trace(A) / (D + P) * np.eye(D + P), rhs)
    return pooled[:D], pooled[D:]


class VariationalLongitudinalModel(HyperParameters):
    """Base class: y_i = F_i w + X_i b_i + e_i with a pluggable prior on b_i, fitted by VI.

    Fitted attributes (after :meth:`fit`)
    ----------------------------------------
    design_ : LongitudinalDesign (basis, covariate encoding, standardisation).
    prior_ : RandomEffectsPrior (after pruning).
    params_ : VariationalParams.
    elbo_, elbo_history_, n_iter_, converged_, fit_seconds_
    subjects_ : Index of the training subjects.
    labels_ : Series, cluster (path) per subject; clusters are numbered by size, 0 largest.
    responsibilities_ : DataFrame (subjects x clusters).
    groups_, group_proba_ : first-layer grouping, likewise.
    clusters_ : DataFrame, one row per cluster: its components per layer, weight, size.
    n_components_ : tuple, components left per layer after pruning.
    sigma2_ : float, residual variance (user scale); with ``noise="cluster"`` the pooled value,
        the per-cluster variances weighted by their expected numbers of observations.
    sigma2_by_cluster_ : Series, residual variance of each first-layer group (``groups_``
        numbering; all equal to ``sigma2_`` with shared noise).
    noise_ : str, the noise model fitted ("shared" or "cluster"; with ``noise="auto"`` the one
        with the higher ELBO).
    fixed_effects_ : Series, covariate effects (user scale).
    random_effects_ : DataFrame, E[b_i] on the user's scale (curve = offset_ + X b + F w).
    cluster_means_ : DataFrame (cluster, time, mean, lower, upper, mean_lower, mean_upper, weight) on a
        grid: ``lower``/``upper`` hold 95 % of the cluster's subject curves, ``mean_lower``/``mean_upper``
        the 95 % credible band of the cluster's mean curve (the posterior uncertainty of its parameters).
    """

    _model_name = "model"

    # -------------------------------------------------------------- subclass hooks
    def _make_prior(self, dim: int, n_subjects: int, roughness: np.ndarray | None = None) -> RandomEffectsPrior:  # pragma: no cover
        raise NotImplementedError

    def _check_params(self) -> None:
        check_model_params(self)

    def _config(self, n_subjects: int, first_layer: int) -> VIConfig:
        bs = self.batch_size
        if bs == "auto":
            bs = None if n_subjects <= 5000 else int(min(max(0.05 * n_subjects, 2 * first_layer), 1024))
        elif bs in (None, "full"):
            bs = None
        else:
            bs = int(bs)
            if bs < 1:
                raise ValueError(f"batch_size must be a positive integer, 'auto' or 'full', got {self.batch_size}")
            bs = None if bs >= n_subjects else bs
        return VIConfig(
            max_iter=int(self.max_iter), tol=float(self.tol), batch_size=bs,
            hard_assignment=bool(self.hard_assignment), noise_scale=float(self.noise_scale),
            prune_threshold=0.1 if self.prune else 0.0,
        )

    # -------------------------------------------------------------- fitting
    def fit(
        self,
        data: FrameLike,
        subject: str = "subject",
        time: str = "time",
        response: str = "y",
        covariates: Sequence[str] | None = None,
        *,
        dropna: bool = False,
    ):
        """Fit to a long frame (one row per observation) or a :class:`Longitudinal`.

        Parameters
        ----------
        data : DataFrame, Longitudinal or dask.dataframe.DataFrame
            A Dask frame (every subject's rows in one partition) is fitted on the workers of the
            current ``distributed.Client`` by the same algorithm (:mod:`dmlmm.distributed`,
            docs/dask.md); the per-subject tables are then dask collections.
        subject, time, response : str
            Column names.
        covariates : list of str, optional
            Fixed-effect covariates (numeric, or categorical which are dummy coded).
        dropna : bool
            Drop rows with missing values (with a warning) instead of raising.

        Returns
        -------
        self
        """
        self._check_params()
        if is_dask_collection(data):  # per-subject work on the Dask workers (dmlmm.distributed)
            if self._membership_columns():
                raise NotImplementedError(
                    "membership_covariates are not supported for Dask DataFrames yet: fit in memory "
                    "(e.g. on df.compute() or a subsample), or leave membership_covariates out"
                )
            from ..distributed.fit import fit_dask

            return fit_dask(self, data, subject, time, response, covariates, dropna=dropna)
        if isinstance(data, Longitudinal):
            d = data
        else:
            d = Longitudinal.from_frame(data, subject, time, response, covariates, dropna=dropna)
        if d.n_subjects < 2:
            raise DataError(
                f"only one subject ({d.subjects[0]}) in the data: a mixed model needs at least two subjects "
                "to learn how subjects vary"
            )
        design = LongitudinalDesign.learn(d, self.basis, self.smoothing)
        Z = None
        if self._membership_columns():
            design.membership, Z = MembershipDesign.learn(data, d.columns.subject, self._membership_columns(), d.subjects)
        stats = design.stats(d).with_membership(Z)
        t0 = perf_counter()
        rough = design.roughness
        b_hat = ridge_estimates(stats, 0.5, rough)
        best = None
        # "auto": both noise models, each from the same random state, the higher ELBO kept
        kinds = ("shared", "cluster") if self._noise_kind() == "auto" else (self._noise_kind(),)
        for kind in kinds:
            rng = np.random.default_rng(self.random_state)
            for _ in range(int(self.n_init)):
                prior = self._make_prior(stats.dim_random, d.n_subjects, rough)
                config = self._config(d.n_subjects, int(prior.path_components()[:, 0].max()) + 1)
                make_init = _init_factory(stats, b_hat, config, kind, Z)
                resize = lambda sizes: self._sized(sizes)._make_prior(stats.dim_random, d.n_subjects, rough)  # noqa: E731
                callback = self._progress_callback()
                # delete moves compare against an emptied component's cost, which the membership model changes
                moves = self.delete_moves and not config.hard_assignment and Z is None
                if config.batch_size is None:
                    # the requested start and smaller ones are explored; the best runs on (inference/starts.py)
                    res = run_vi_with_starts(stats, prior, make_init(None), resize, config, rng, moves=moves,
                                             callback=callback)
                else:  # warm start on a subsample, natural gradients, full passes (inference/stochastic.py)
                    res = run_vi_stochastic(stats, prior, make_init, resize, config, rng, self._stochastic_settings(),
                                            moves=moves, callback=callback)
                if callback is not None:
                    callback.close()
                if best is None or res.elbo > best.elbo:
                    best = res
        best.seconds = perf_counter() - t0
        self._set_fitted(d, design, best)
        self._fixed_cov = None
        if design.n_fixed:
            self._fixed_cov = fixed_effects_cov(stats, self._mixture(), self._sigma2_std(), best.local.resp,
                                                config.fixed_var)
        self._membership_cov = None
        if Z is not None:
            resp1 = first_layer_resp(best.local.resp, best.prior.path_components()[:, 0])
            self._membership_cov = membership_laplace_cov(best.params.membership, Z, resp1, config.membership_scale)
        return self

    def _stochastic_settings(self) -> StochasticSettings:
        """Settings of a minibatch fit: the warm start's subsample size from ``subsample``."""
        n = getattr(self, "subsample", "auto")
        return StochasticSettings() if n == "auto" else StochasticSettings(subsample=int(n))

    def _sized(self, sizes: tuple[int, ...]) -> "VariationalLongitudinalModel":
        """A copy of this model with ``sizes`` components per layer (for the smaller starts)."""
        other = copy.copy(self)
        other.n_components = tuple(sizes) if isinstance(self.n_components, (tuple, list)) else int(sizes[0])
        return other

    def _progress_callback(self):
        if not getattr(self, "progress", False):
            return None
        from tqdm.auto import tqdm

        # no total: the fit stops at convergence, usually far below max_iter (a bar to max_iter would stall
        # at a few per cent); the count runs over every stage (starting sizes, delete moves, final run)
        bar = tqdm(total=None, desc=f"fitting {self._model_name}", unit="it", leave=False)

        class _Cb:
            def __call__(self, it, elbo):
                bar.update(1)
                bar.set_postfix(elbo=f"{elbo:.2f}")

            def close(self):
                bar.close()

        return _Cb()

    def _set_fitted(self, d: Longitudinal, design: LongitudinalDesign, res) -> None:
        resp = res.local.resp
        self._set_fitted_globals(design, res, resp.sum(axis=0), resp.T @ np.diff(d.offsets), stacklevel=4)
        self.subjects_ = d.subjects
        self.responsibilities_ = self._proba_frame(resp, d.subjects)
        self.labels_ = self._labels_from(self.responsibilities_)
        self.group_proba_ = self._group_frame(resp, d.subjects)
        self.groups_ = self._labels_from(self.group_proba_)
        self.random_effects_ = pd.DataFrame(
            design.spline_coefficients(res.local.mean_b) * design.y_scale, index=d.subjects,
            columns=design.basis.column_names,
        )

    def _set_fitted_globals(
        self, design: LongitudinalDesign, res, sizes: np.ndarray, path_n_obs: np.ndarray, stacklevel: int = 3
    ) -> None:
        """Everything fitted except the per-subject tables.

        ``sizes`` (M,): sum_i r_ic; ``path_n_obs`` (M,): sum_i r_ic n_i (the paths' expected observations).
        """
        self.design_ = design
        self.prior_ = res.prior
        self.params_ = res.params
        self.elbo_ = float(res.elbo)
        self.elbo_history_ = np.asarray(res.elbo_history)
        self.n_iter_ = int(res.n_iter)
        self.converged_ = bool(res.converged)
        self.fit_seconds_ = float(res.seconds)
        self.components_kept_ = [np.asarray(k) for k in res.kept]
        self.n_components_ = tuple(len(k) for k in res.kept)
        self.n_moves_ = int(res.moves)
        self._path_order = np.argsort(-sizes, kind="stable")
        self._set_cluster_tables(sizes)
        s = design.y_scale
        self.offset_ = design.y_shift
        self._set_sigma2(path_n_obs)
        w = self._w()
        self.fixed_effects_ = pd.Series(w * s / design.cov_scale, index=list(design.fixed_names), dtype=float, name="estimate")
        self.cluster_means_ = self._cluster_curves()
        requested = self.prior_.layer_counts(res.params.prior)  # after pruning
        if len(requested[0]) == 1 and self._requested_first_layer() > 1:
            warnings.warn(
                "all first-layer components but one ended empty and were pruned: "
                "the data show no cluster structure this model can support (every subject is in one cluster)",
                EmptyComponentWarning,
                stacklevel=stacklevel,
            )

    def _noise_kind(self) -> str:
        return getattr(self, "noise", "shared")

    def _set_sigma2(self, path_n_obs: np.ndarray) -> None:
        """sigma2_ (pooled) and sigma2_by_cluster_ on the user's scale; ``path_n_obs`` (M,) sum_i r_ic n_i."""
        s2 = np.atleast_1d(np.asarray(self.params_.noise.mean, dtype=float)) * self.design_.y_scale**2
        k1 = len(self.components_kept_[0])
        first = self.prior_.path_components()[:, 0]
        if s2.size == 1:
            pooled, by_group = float(s2[0]), np.full(k1, float(s2[0]))
        else:
            n_g = np.bincount(first, weights=path_n_obs, minlength=k1)
            pooled = float(n_g @ s2 / n_g.sum()) if n_g.sum() > 0 else float(s2.mean())
            by_group = s2[self._group_order]
        self.sigma2_ = pooled
        self.noise_ = "cluster" if is_per_cluster(self.params_.noise) else "shared"
        self.sigma2_by_cluster_ = pd.Series(by_group, index=pd.RangeIndex(k1, name="group"), name="sigma2")

    def _requested_first_layer(self) -> int:
        k = self.n_components
        return int(k) if np.isscalar(k) else int(tuple(k)[0])

    # -------------------------------------------------------------- cluster bookkeeping
    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(...) first")

    def _check_subject_tables(self, what: str) -> None:
        """An error for ``what`` while the per-subject tables of a Dask fit are still on the cluster."""
        if is_dask_collection(getattr(self, "responsibilities_", None)):
            raise TypeError(
                f"{what} needs the per-subject tables, which this Dask fit left on the cluster: "
                "call dmlmm.distributed.collect(model) first (it gathers them into pandas)"
            )

    def _set_cluster_tables(self, sizes: np.ndarray) -> None:
        paths = self.prior_.path_components()  # (M, L) in pruned numbering
        order = self._path_order
        mix = self.prior_.point_mixture(self.params_.prior)
        cols = {f"layer{l + 1}": self.components_kept_[l][paths[order, l]] for l in range(paths.shape[1])}
        self.clusters_ = pd.DataFrame(
            {**cols, "weight": mix.weights[order], "n_subjects": sizes[order]},
            index=pd.RangeIndex(len(order), name="cluster"),
        )
        first = paths[:, 0]
        k1 = len(self.components_kept_[0])
        gsize = np.bincount(first, weights=sizes, minlength=k1)
        self._group_order = np.argsort(-gsize, kind="stable")
        self._group_of_path = np.empty(k1, dtype=int)
        self._group_of_path[self._group_order] = np.arange(k1)

    def _proba_frame(self, resp: np.ndarray, subjects: pd.Index) -> pd.DataFrame:
        return pd.DataFrame(resp[:, self._path_order], index=subjects, columns=pd.RangeIndex(resp.shape[1], name="cluster"))

    def _group_frame(self, resp: np.ndarray, subjects: pd.Index) -> pd.DataFrame:
        first = self.prior_.path_components()[:, 0]
        k1 = len(self.components_kept_[0])
        onehot = np.eye(k1)[self._group_of_path[first]]
        return pd.DataFrame(resp @ onehot, index=subjects, columns=pd.RangeIndex(k1, name="group"))

    @staticmethod
    def _labels_from(proba: pd.DataFrame) -> pd.Series:
        if is_dask_collection(proba):  # a Dask prediction (dmlmm.distributed.predict): labels per partition
            from ..distributed.outputs import labels_of

            return proba.map_partitions(labels_of)
        return pd.Series(proba.to_numpy().argmax(axis=1), index=proba.index, name=proba.columns.name)

    def _w(self) -> np.ndarray:
        P = self.design_.n_fixed
        if self.params_.fixed is None:
            return np.zeros(P)
        return self.params_.fixed.moments()[0]

    # -------------------------------------------------------------- cluster prediction
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
        return local_step(stats, pp, nm, self.hard_assignment, log_weight=offsets)

    # -------------------------------------------------------------- membership by covariates
    def _membership_columns(self) -> list[str]:
        cols = getattr(self, "membership_covariates", None)
        return [] if cols is None else [cols] if isinstance(cols, str) else list(cols)

    def _membership_matrix(self, frame: FrameLike, d: Longitudinal) -> np.ndarray | None:
        """Z (N, Q) of the subjects of ``d`` (None without a membership model)."""
        m = self.design_.membership
        return None if m is None else m.matrix(frame, self.design_.columns.subject, d.subjects)

    def _membership_log_p1(self, Z: np.ndarray) -> np.ndarray:
        """log p(first-layer component) (N, K_1) of subjects with membership covariates Z (N, Q), at E[Gamma]."""
        return stick_log_probs(Z @ self.params_.membership.moments()[0].T)

    def _path_log_weights(self, Z: np.ndarray | None, mix: PointMixture) -> np.ndarray | None:
        """Each subject's log prior path weights (N, M) under the membership model (plug-in E[Gamma])."""
        if Z is None:
            return None
        log_p1 = self._membership_log_p1(Z)
        first = self.prior_.path_components()[:, 0]
        dirichlet, _ = self.prior_.first_layer_dirichlet(self.params_.prior)
        with np.errstate(divide="ignore"):
            lw = np.log(mix.weights) - np.log(dirichlet.mean[first]) + log_p1[:, first]
        return lw - logsumexp(lw, axis=1, keepdims=True)

    def fixed_effects_table(self, interval: float = 0.95) -> pd.DataFrame:
        """Fixed effects with their posterior SD and credible interval (user scale).

        Columns ``estimate`` (= :attr:`fixed_effects_`), ``sd``, ``lower``, ``upper``; one row
        per coded covariate. The posterior of the fixed effects is Gaussian, q(w).
        """
        self._check_fitted()
        if not 0 < interval < 1:
            raise ValueError(f"interval must be in (0, 1), got {interval}")
        est = self.fixed_effects_.to_numpy(dtype=float)
        P = len(est)
        if self.params_.fixed is None or P == 0:
            sd = np.zeros(P)
        else:
            factor = self.design_.y_scale / self.design_.cov_scale
            sd = np.sqrt(np.diag(self._w_cov())) * factor
        z = float(ndtri(0.5 + interval / 2))
        return pd.DataFrame({"estimate": est, "sd": sd, "lower": est - z * sd, "upper": est + z * sd},
                            index=self.fixed_effects_.index)

    @property
    def membership_coefficients_(self) -> pd.DataFrame | None:
        """Coefficients of the membership model on the user's scale, with SDs and 95 % intervals.

        One row per (stick, covariate): stick j gives the log-odds of being in first-layer group
        ``group`` rather than in one of the groups ``versus`` (the later components), among the
        subjects not in an earlier one (a continuation-ratio logit; with two groups, plain
        logistic regression of ``group``). The intercept is at covariates 0 (numeric) and the
        reference levels (categorical); slopes are per unit of each covariate. None without
        ``membership_covariates``. Estimates are posterior means; SDs come from the curvature of
        the expected log-likelihood there (:func:`~dmlmm.priors.membership.membership_laplace_cov`):
        the variational factor's own are too narrow under the Jaakkola-Jordan bound (23 % below
        the maximum-likelihood standard errors on a simulated two-group example).
        """
        self._check_fitted()
        q = self.params_.membership
        if q is None:
            return None
        mean = q.moments()[0]  # (S, Q)
        cov = self._membership_cov  # (S, Q, Q)
        T = self.design_.membership.to_user_scale()
        est = mean @ T.T
        sd = np.sqrt(np.maximum(np.einsum("qa,sab,rb->sqr", T, cov, T).diagonal(axis1=1, axis2=2), 0.0))
        names = self.design_.membership.names
        groups = self._group_of_path  # model component -> reported group
        S, Q = est.shape
        rows = pd.MultiIndex.from_product([range(S), names], names=["stick", "covariate"])
        z = float(ndtri(0.975))
        return pd.DataFrame({
            "group": np.repeat(groups[:S], Q),
            "versus": np.repeat([", ".join(map(str, groups[j + 1:])) for j in range(S)], Q),
            "estimate": est.reshape(-1), "sd": sd.reshape(-1),
            "lower95": (est - z * sd).reshape(-1), "upper95": (est + z * sd).reshape(-1),
        }, index=rows)

    def membership_probabilities(self, df: pd.DataFrame) -> pd.DataFrame:
        """Prior probabilities of the first-layer groups from the membership covariates alone.

        What the membership model says before any visit: subjects x groups (group numbering as
        :attr:`group_proba_`), at the posterior mean of the coefficients. Needs a model fitted with
        ``membership_covariates``; ``df`` needs the subject column and those covariates.
        """
        self._check_fitted()
        m = self.design_.membership
        if m is None:
            raise ValueError("this model was fitted without membership_covariates")
        subjects = pd.Index(pd.unique(df[self.design_.columns.subject]), name="subject")
        Z = m.matrix(df, self.design_.columns.subject, subjects)
        p = np.exp(self._membership_log_p1(Z))[:, self._group_order]
        return pd.DataFrame(p, index=subjects, columns=pd.RangeIndex(p.shape[1], name="group"))

    def _data(self, df: FrameLike, require_response: bool = True) -> Longitudinal:
        self._check_fitted()
        return self.design_.data_from(df, require_response=require_response)

    def predict_proba(self, df: FrameLike) -> pd.DataFrame:
        """Posterior cluster (path) probabilities of each subject in ``df``: DataFrame (subjects x clusters).

        Rows without a response count for nothing: a subject with none gets the prior weights.
        A dask DataFrame gives a lazy dask DataFrame (:mod:`dmlmm.distributed.predict`)."""
        if is_dask_collection(df):
            from ..distributed.predict import predict_partitions

            return predict_partitions(self, df, "predict_proba")
        d = self._data(df, require_response=False)
        return self._proba_frame(self._local(d, df).resp, d.subjects)

    def predict(self, df: FrameLike) -> pd.Series:
        """Most probable cluster of each subject in ``df`` (Series indexed by subject)."""
        return self._labels_from(self.predict_proba(df))

    def predict_group_proba(self, df: FrameLike) -> pd.DataFrame:
        """Posterior probabilities of the first-layer components (coarser grouping)."""
        if is_dask_collection(df):
            from ..distributed.predict import predict_partitions

            return predict_partitions(self, df, "predict_group_proba")
        d = self._data(df, require_response=False)
        return self._group_frame(self._local(d, df).resp, d.subjects)

    def predict_group(self, df: FrameLike) -> pd.Series:
        return self._labels_from(self.predict_group_proba(df))

    # -------------------------------------------------------------- trajectories
    def _mixture(self) -> PointMixture:
        """The prior of b for prediction, with the posterior uncertainty of the globals integrated in."""
        return self.prior_.point_mixture(self.params_.prior, integrate_globals=True)

    def _sigma2_std(self) -> np.ndarray:
        """Residual variance of each path (M,), standardised scale (one shared value, or its first-layer group's)."""
        q = self.params_.noise
        return np.atleast_1d(np.asarray(q.mean, dtype=float))[path_groups(q, self.prior_.path_components())]

    def _conditional(self, d: Longitudinal | None, frame: FrameLike = None) -> tuple[ConditionalMixture, pd.Index, np.ndarray]:
        """Posterior mixture of b per subject (or the prior for d=None), subjects, last covariates (N, P)."""
        mix, w, s2 = self._mixture(), self._w(), self._sigma2_std()
        D, P = self.design_.basis.n_basis, self.design_.n_fixed
        if d is None:
            empty = SufficientStats(np.zeros(1, int), np.zeros(1), np.zeros((1, D)), np.zeros((1, D, D)),
                                    np.zeros((1, P)), np.zeros((1, P, P)), np.zeros((1, D, P)))
            return condition(empty, mix, w, s2), pd.Index(["population"], name="subject"), np.zeros((1, P))
        stats = self.design_.stats(d)
        last = np.r_[d.offsets[1:] - 1]
        lw = self._path_log_weights(self._membership_matrix(frame, d), mix)
        return condition(stats, mix, w, s2, log_weights=lw), d.subjects, self.design_.F(d.covariates[last])

    def _grid(self, times) -> np.ndarray:
        if times is None:
            return np.linspace(self.design_.basis.lower_, self.design_.basis.upper_, 100)
        t = np.asarray(times, dtype=float).reshape(-1)
        if not np.isfinite(t).all():
            raise DataError("prediction times must be finite numbers")
        return t

    def predict_trajectory(
        self,
        df: FrameLike | None = None,
        times: np.ndarray | None = None,
        interval: float = 0.95,
        kind: str = "curve",
    ) -> pd.DataFrame:
        """Each subject's predictive distribution at ``times`` given its observations in ``df``.

        Parameters
        ----------
        df : DataFrame or Longitudinal, optional
            Observations to condition on; None gives the population (prior mixture), labelled "population".
            Rows with a missing response (or a frame without the response column) are not conditioned
            on: a new patient given only by its covariates gets the population curve at those
            covariates (the last row's), and a patient with a few early visits a forecast from them.
        times : (T,) array, optional
            Times to predict at (default: 100 points over the basis range).
        interval : float
            Central probability of the band.
        kind : {"curve", "observation"}
            The noise-free curve, or a new measurement (adds the residual variance).

        Returns
        -------
        DataFrame with columns subject, time, mean, lower, upper (user scale) and
        beyond_last_visit (True where the time lies after the subject's last observation:
        a forecast; always False for the population curve).

        The bands integrate over the posterior uncertainty of the global parameters
        (component means and loadings, fixed effects), not only over the subject's own.
        """
        self._check_fitted()
        if kind not in ("curve", "observation"):
            raise ValueError(f"kind must be 'curve' or 'observation', got {kind!r}")
        if not 0 < interval < 1:
            raise ValueError(f"interval must be in (0, 1), got {interval}")
        d = None if df is None else self._data(df, require_response=False)
        cm, subjects, fixed_rows = self._conditional(d, df)
        t = self._grid(times)
        Xn = self.design_.X(t)  # (T, D)
        fw = fixed_rows @ self._w()  # (N,)
        mean_a = cm.mean @ Xn.T + fw[cm.subject][:, None]
        var_a = np.einsum("td,ade,te->at", Xn, cm.cov, Xn) + self._fixed_var(fixed_rows)[cm.subject][:, None]
        if kind == "observation":
            var_a = var_a + self._sigma2_std()[cm.path][:, None]
        sd_a = np.sqrt(np.maximum(var_a, 0.0))
        N = len(subjects)
        mean = np.zeros((N, len(t)))
        np.add.at(mean, cm.subject, cm.weight[:, None] * mean_a)
        alpha = (1 - interval) / 2
        q = mixture_quantiles(cm.weight, mean_a, sd_a, cm.subject, np.array([alpha, 1 - alpha]))
        s, sh = self.design_.y_scale, self.design_.y_shift
        return pd.DataFrame(
            {
                "subject": np.repeat(subjects.to_numpy(), len(t)),
                "time": np.tile(t, N),
                "mean": (sh + s * mean).reshape(-1),
                "lower": (sh + s * q[:, 0]).reshape(-1),
                "upper": (sh + s * q[:, 1]).reshape(-1),
                "beyond_last_visit": (t[None, :] > self._last_times(d, N)[:, None]).reshape(-1),
            }
        )

    @staticmethod
    def _last_times(d: Longitudinal | None, n: int) -> np.ndarray:
        """Each subject's last observation time (N,); +inf for the population (nothing is beyond)."""
        if d is None:
            return np.full(n, np.inf)
        observed = np.zeros(len(d.time), dtype=bool) if d.response is None else np.isfinite(d.response)
        return np.maximum.reduceat(np.where(observed, d.time, -np.inf), d.offsets[:-1])

    def _fixed_var(self, fixed_rows: np.ndarray) -> np.ndarray:
        """Posterior variance of F_i w for each subject's covariate row (N,), standardised scale."""
        if self.params_.fixed is None or fixed_rows.shape[1] == 0:
            return np.zeros(len(fixed_rows))
        return np.einsum("np,pq,nq->n", fixed_rows, self._w_cov(), fixed_rows)

    def _w_cov(self) -> np.ndarray:
        """Posterior covariance of the fixed effects (P, P), standardised scale, the random effects
        integrated out (:func:`~dmlmm.prediction.fixed_effects_cov`)."""
        cov = getattr(self, "_fixed_cov", None)
        return self.params_.fixed.moments()[1] if cov is None else cov

    def sample_trajectories(
        self,
        df: FrameLike | None = None,
        times: np.ndarray | None = None,
        n_samples: int = 100,
        kind: str = "curve",
        random_state=None,
    ) -> pd.DataFrame:
        """Draws from each subject's predictive distribution: columns subject, sample, time, value."""
        self._check_fitted()
        if not positive_int(n_samples):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        if kind not in ("curve", "observation"):
            raise ValueError(f"kind must be 'curve' or 'observation', got {kind!r}")
        check_random_state(random_state)
        rng = np.random.default_rng(random_state)
        d = None if df is None else self._data(df, require_response=False)
        cm, subjects, fixed_rows = self._conditional(d, df)
        t = self._grid(times)
        Xn = self.design_.X(t)
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
        if self.params_.fixed is not None and len(w):  # the fixed effects' posterior uncertainty too
            chol_w = np.linalg.cholesky(self._w_cov() + 1e-12 * np.eye(len(w)))
            w = w + rng.standard_normal((N, S, len(w))) @ chol_w.T  # (N, S, P)
            fw = np.einsum("np,nsp->ns", fixed_rows, w)[:, :, None]
        else:
            fw = (fixed_rows @ w)[:, None, None]
        curve = b @ Xn.T + fw
        if kind == "observation":
            sd = np.sqrt(self._sigma2_std()[cm.path[comp]])  # (N, S): the drawn path's residual SD
            curve = curve + sd[:, :, None] * rng.standard_normal(curve.shape)
        s, sh = self.design_.y_scale, self.design_.y_shift
        return pd.DataFrame(
            {
                "subject": np.repeat(subjects.to_numpy(), S * len(t)),
                "sample": np.tile(np.repeat(np.arange(S), len(t)), N),
                "time": np.tile(t, N * S),
                "value": (sh + s * curve).reshape(-1),
            }
        )

    # -------------------------------------------------------------- scores
    def score_samples(self, df: FrameLike, condition_on: pd.DataFrame | None = None) -> pd.Series:
        """Log predictive density of each subject's observations in ``df`` (user scale).

        With ``condition_on`` (other observations of the same subjects), the density of
        ``df``'s observations given those: the held-out log score.
        """
        d = self._data(df)
        lm = self._log_marginal(d, df)
        if condition_on is not None:
            if isinstance(df, Longitudinal) or isinstance(condition_on, Longitudinal):
                raise TypeError("condition_on needs data frames for both arguments")
            c = self._data(condition_on)
            frame = pd.concat([df, condition_on], ignore_index=True)
            both = self._data(frame)
            lm_both = pd.Series(self._log_marginal(both, frame), index=both.subjects)
            lm_c = pd.Series(self._log_marginal(c, condition_on), index=c.subjects)
            out = pd.Series(lm, index=d.subjects)
            has = out.index.intersection(lm_c.index)
            out.loc[has] = lm_both.loc[has] - lm_c.loc[has]
            return out.rename("log_score")
        return pd.Series(lm, index=d.subjects, name="log_score")

    def _log_marginal(self, d: Longitudinal, frame: FrameLike) -> np.ndarray:
        stats = self.design_.stats(d)
        mix = self._mixture()
        lw = self._path_log_weights(self._membership_matrix(frame, d), mix)
        cm = condition(stats, mix, self._w(), self._sigma2_std(), keep_components=False, log_weights=lw)
        return cm.log_marginal - stats.n_obs * np.log(self.design_.y_scale)

    def score(self, df: FrameLike, condition_on: pd.DataFrame | None = None) -> float:
        """Mean over subjects of :meth:`score_samples`."""
        return float(self.score_samples(df, condition_on).mean())

    # -------------------------------------------------------------- summaries
    def _cluster_curves(self, n_grid: int = 100, interval: float = 0.95) -> pd.DataFrame:
        mix = self._mixture()
        order = self._path_order
        t = self._grid(None)[:n_grid]
        Xn = self.design_.X(t)
        z = float(ndtri(0.5 + interval / 2))
        m = mix.means[order] @ Xn.T
        sd = np.sqrt(np.maximum(np.einsum("td,cde,te->ct", Xn, mix.covs[order], Xn), 0))
        # the cluster's own curve: what the posterior uncertainty of its parameters adds
        plug = self.prior_.point_mixture(self.params_.prior)
        extra = mix.covs[order] - plug.covs[order]
        sd_mean = np.sqrt(np.maximum(np.einsum("td,cde,te->ct", Xn, extra, Xn), 0))
        s, sh = self.design_.y_scale, self.design_.y_shift
        K = len(order)
        return pd.DataFrame(
            {
                "cluster": np.repeat(np.arange(K), len(t)),
                "time": np.tile(t, K),
                "mean": (sh + s * m).reshape(-1),
                "lower": (sh + s * (m - z * sd)).reshape(-1),
                "upper": (sh + s * (m + z * sd)).reshape(-1),
                "mean_lower": (sh + s * (m - z * sd_mean)).reshape(-1),
                "mean_upper": (sh + s * (m + z * sd_mean)).reshape(-1),
                "weight": np.repeat(mix.weights[order], len(t)),
            }
        )

    def summary(self) -> str:
        """A text report: data, convergence, clusters, noise and fixed effects."""
        self._check_fitted()
        lines = [
            f"{type(self).__name__}: {len(self.subjects_)} subjects, basis {self.design_.basis!r}",
            f"  ELBO {self.elbo_:.3f} after {self.n_iter_} iterations "
            f"({'converged' if self.converged_ else 'NOT converged'}; {self.n_moves_} delete move(s) accepted), "
            f"{self.fit_seconds_:.2f} s",
            f"  components per layer after pruning: {self.n_components_}",
            f"  residual SD {np.sqrt(self.sigma2_):.4g}"
            + (f" (pooled; by group: {', '.join(f'{v:.4g}' for v in np.sqrt(self.sigma2_by_cluster_))})"
               if self.noise_ == "cluster" else ""),
        ]
        if len(self.fixed_effects_):
            lines.append("  fixed effects (posterior mean, SD and 95 % credible interval, per unit of each covariate):")
            lines.append("    " + self.fixed_effects_table().to_string(float_format=lambda v: f"{v:.4g}").replace("\n", "\n    "))
        coef = self.membership_coefficients_
        if coef is not None:
            lines.append("  membership by covariates (log-odds of the group against the later ones, among subjects "
                         "not in an earlier one):")
            lines.append("    " + coef.to_string(float_format=lambda v: f"{v:.4g}").replace("\n", "\n    "))
        tab = self.clusters_[self.clusters_["n_subjects"] >= 0.5]
        lines.append(f"  clusters holding subjects: {len(tab)} of {len(self.clusters_)} paths")
        lines.append("    " + tab.to_string(float_format=lambda v: f"{v:.3f}").replace("\n", "\n    "))
        return "\n".join(lines)

    def save(self, path) -> None:
        """Write the fitted model to one file (format: :mod:`dmlmm.io`); read it back with :func:`dmlmm.load`."""
        from ..io import save_model

        self._check_subject_tables("save()")
        save_model(self, path)

    # -------------------------------------------------------------- class summaries (lcmm's summarytable, postprob)
    def class_summary(self) -> pd.DataFrame:
        """The classes found and how clear-cut they are, as lcmm's ``summarytable``.

        One row per level of classes: ``cluster`` (the clusters, paths through the layers) and,
        for a deep model, ``cluster_layer1`` (the first-layer groups), numbered as in the
        outputs (``clusters.csv``). Columns: ``components`` (classes the model kept at that
        level), ``classes`` (those holding subjects as their most probable class), ``elbo``,
        ``neg2_elbo`` (-2 ELBO, on the scale of BIC: lower is better), ``icl`` (-2 ELBO + 2 EN,
        EN the entropy of the clusters: an ICL that also rewards clear-cut classes; lower is
        better), ``entropy`` (EN at that level), ``relative_entropy`` (1 - EN / (N log K),
        lcmm's entropy: 1 = every subject certain of its class), then ``n_class<k>`` and
        ``%class<k>`` (subjects assigned to class k and their share in %). The ELBO-based
        columns are the model's, the same on every row; the formulas and their justification
        are in :mod:`dmlmm.summaries`.
        """
        from ..summaries import model_class_summary

        self._check_fitted()
        self._check_subject_tables("class_summary()")
        return model_class_summary(self)

    def posterior_table(self, level: str = "cluster") -> pd.DataFrame:
        """Posterior class probabilities by assigned class, as lcmm's ``postprob``.

        Parameters
        ----------
        level : {"cluster", "cluster_layer1"}
            The clusters, or (deep models) the first-layer groups; numbered as in ``clusters.csv``.

        Returns
        -------
        DataFrame, one row per class holding subjects (index: the assigned class):
        ``subjects``, ``%subjects``, ``mean_p<k>`` (the mean posterior probability of class k
        among the subjects assigned to the row's class) and ``%p>0.7``, ``%p>0.8``, ``%p>0.9``
        (the share of them, in %, whose probability of their class exceeds 0.7, 0.8, 0.9).
        """
        from ..summaries import model_posterior_table

        self._check_fitted()
        self._check_subject_tables("posterior_table()")
        return model_posterior_table(self, level)
