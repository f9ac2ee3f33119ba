"""Class membership by covariates: the fitted membership model as a user sees it.

A mixin of :class:`~dmlmm.models.base.VariationalLongitudinalModel`. With
``membership_covariates`` the first-layer weights depend on each subject's covariates
through a continuation-ratio logit (:mod:`dmlmm.priors.membership` holds its variational
updates, :mod:`dmlmm.models.membership_design` its covariate columns). Here: the covariate
matrix of new subjects, the prior path weights every prediction uses, the coefficients
table and the probabilities from the covariates alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import logsumexp, ndtri

from ..data import Longitudinal
from ..exceptions import DataError
from ..priors.base import PointMixture
from ..priors.membership import stick_log_probs
from .frames import FrameLike

__all__ = ["Membership"]


class Membership:
    """Mixin: the membership model's design matrix, log prior weights and coefficient table."""

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
        the maximum-likelihood standard errors on a simulated two-group example). Where the
        covariates separate the groups (almost) perfectly the likelihood has no finite maximum and
        the size of those coefficients is the prior's: the fit says so (IdentifiabilityWarning).
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
        column = self.design_.columns.subject
        if not isinstance(df, pd.DataFrame) or column not in df.columns:
            have = list(df.columns) if isinstance(df, pd.DataFrame) else type(df).__name__
            raise DataError(f"membership_probabilities needs a data frame with the subject column {column!r} and the "
                            f"membership covariates {list(m.encoding.columns)}; got {have}")
        subjects = pd.Index(pd.unique(df[column]), name=column)  # as predict_proba names it
        Z = m.matrix(df, self.design_.columns.subject, subjects)
        p = np.exp(self._membership_log_p1(Z))[:, self._group_order]
        return pd.DataFrame(p, index=subjects, columns=pd.RangeIndex(p.shape[1], name="group"))
