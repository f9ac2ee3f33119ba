"""A fitted model in tables and text: summary, fixed effects, cluster curves, class summaries.

A mixin of :class:`~dmlmm.models.base.VariationalLongitudinalModel`. The class summaries
(lcmm's ``summarytable`` and ``postprob``) are pure functions of :mod:`dmlmm.summaries`,
imported lazily (that room sits above the models).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtri

from ..response_transform import scale_text
from .params import check_interval

#: What the summaries (this one, the command line's) say of a membership model that kept one class.
ONE_CLASS_MEMBERSHIP = "one class was kept, so membership has no coefficients (every subject is in that class)"

__all__ = ["Tables"]


class Tables:
    """Mixin: ``summary``, ``fixed_effects_table``, ``class_summary``, ``posterior_table`` and the cluster curves."""

    def fixed_effects_table(self, interval: float = 0.95) -> pd.DataFrame:
        """Fixed effects with their posterior SD and credible interval (user scale).

        Columns ``estimate`` (= :attr:`fixed_effects_`), ``sd``, ``lower``, ``upper``; one row
        per coded covariate. The posterior of the fixed effects is Gaussian, q(w).
        """
        self._check_fitted()
        interval = check_interval(interval)
        est = self.fixed_effects_.to_numpy(dtype=float)
        P = len(est)
        if self.params_.fixed is None or P == 0:
            sd = np.zeros(P)
        else:
            factor = self.design_.y_scale / self.design_.covariate_sd
            sd = np.sqrt(np.diag(self._w_cov())) * factor
        z = float(ndtri(0.5 + interval / 2))
        return pd.DataFrame({"estimate": est, "sd": sd, "lower": est - z * sd, "upper": est + z * sd},
                            index=self.fixed_effects_.index)

    def _cluster_curves(self, n_grid: int = 100, interval: float = 0.95) -> pd.DataFrame:
        """Each cluster's mean curve and bands on a grid, user scale: ``cluster_means_`` (set by ``fit``); at the
        mean covariates, and with a covariate formula that uses time, the training subjects' fixed part at each
        time averaged."""
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
        population = self.design_.population_fixed(t)  # a covariate formula that uses time: its average part
        if population is not None:
            m = m + (population @ self._w())[None, :]
            fixed_var = self._fixed_var(population)[None, :]
            sd, sd_mean = np.sqrt(sd**2 + fixed_var), np.sqrt(sd_mean**2 + fixed_var)
        user = self.design_.to_user_scale
        K = len(order)
        return pd.DataFrame(
            {
                "cluster": np.repeat(np.arange(K), len(t)),
                "time": np.tile(t, K),
                "mean": user(m).reshape(-1),
                "lower": user(m - z * sd).reshape(-1),
                "upper": user(m + z * sd).reshape(-1),
                "mean_lower": user(m - z * sd_mean).reshape(-1),
                "mean_upper": user(m + z * sd_mean).reshape(-1),
                "weight": np.repeat(mix.weights[order], len(t)),
            }
        )

    def _scale_text(self) -> str:
        """``log1p(y) (ELBO on the data's scale: none ..., log1p ...)``: the scale the response was
        modelled on, with the bounds "auto" weighed; empty for a response fitted as given alone."""
        return scale_text(self.design_.columns.response, self.design_.transform, getattr(self, "elbo_by_transform_", {}))

    def summary(self) -> str:
        """A text report: data, convergence, clusters, noise and fixed effects."""
        self._check_fitted()
        lines = [
            f"{type(self).__name__}: {len(self.subjects_)} subjects, basis {self.design_.basis!r}",
            f"  ELBO {self.elbo_:.3f} on the model's standardised scale"
            + (f" ({self.elbo_data_scale_:.2f} on the data's scale, as the class summary)"
               if getattr(self, "elbo_data_scale_", None) is not None else "")
            + f" after {self.n_iter_} iterations "
            f"({'converged' if self.converged_ else 'NOT converged'}; {self.n_moves_} delete move(s) accepted), "
            f"{self.fit_seconds_:.2f} s",
            f"  components per layer after pruning: {self.n_components_}",
            f"  residual SD {np.sqrt(self.sigma2_):.4g}"
            + (f" (pooled; by group: {', '.join(f'{v:.4g}' for v in np.sqrt(self.sigma2_by_cluster_))})"
               if self.noise_ == "cluster" else "")
            + (f" on the {self.design_.transform} scale" if self.design_.transform else ""),
        ]
        scale = self._scale_text()
        if scale:
            lines.append(f"  response modelled as {scale}; curves and bands on the data's scale")
        cov = getattr(self.prior_, "covariance", None)
        if cov is not None:
            lines.append("  subjects' deviations: " + (
                "P-spline covariance (any covariance of level and trend, one learned roughness variance per cluster)"
                if cov == "pspline" else "full covariance (one inverse-Wishart matrix over all spline coefficients)"))
        if len(self.fixed_effects_):
            lines.append("  fixed effects (posterior mean, SD and 95 % credible interval, per unit of each covariate):")
            lines.append("    " + self.fixed_effects_table().to_string(float_format=lambda v: f"{v:.4g}").replace("\n", "\n    "))
        coef = self.membership_coefficients_
        if coef is not None and not len(coef):
            lines.append(f"  membership by covariates: {ONE_CLASS_MEMBERSHIP}")
        elif coef is not None:
            lines.append("  membership by covariates (log-odds of the group against the later ones, among subjects "
                         "not in an earlier one):")
            lines.append("    " + coef.to_string(float_format=lambda v: f"{v:.4g}").replace("\n", "\n    "))
        tab = self.clusters_[self.clusters_["n_subjects"] >= 0.5]
        lines.append(f"  clusters holding subjects: {len(tab)} of {len(self.clusters_)} paths")
        lines.append("    " + tab.to_string(float_format=lambda v: f"{v:.3f}").replace("\n", "\n    "))
        return "\n".join(lines)

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
        columns are the model's, the same on every row, from ``elbo_data_scale_`` (the bound on log p(y) of
        the response as given, so that fits with different response transforms, and lcmm's BIC, compare;
        ``elbo_`` is on the model's internal standardised scale); the formulas and their justification
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
