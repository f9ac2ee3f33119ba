"""The user API shared by the variational longitudinal models (scikit-learn conventions).

Subclasses only say which random-effects prior they use (:meth:`_make_prior`). The class
below assembles one mixin per job, each in its own module:

- :mod:`dmlmm.models.fitting` (``Fitting``): ``fit`` and the fitted attributes it sets;
  :mod:`dmlmm.models.starting` holds where a fit starts (``ridge_estimates``);
- :mod:`dmlmm.models.clusters` (``ClusterState``): the clusters numbered by size, the
  per-subject probability tables, ``weights_``, ``means_``, ``covariances_``;
- :mod:`dmlmm.models.predicting` (``Predicting``): ``predict_proba``, ``predict``,
  ``predict_trajectory``, ``sample_trajectories``, ``score_samples``, ``score``;
- :mod:`dmlmm.models.membership` (``Membership``): class membership by covariates;
- :mod:`dmlmm.models.tables` (``Tables``): ``summary``, ``fixed_effects_table``,
  ``class_summary``, ``posterior_table``.

What they all use lives here: the fitted check, the fitted globals as prediction reads them
(standardised scale) and ``save``.
"""

from __future__ import annotations

import numpy as np

from .._estimator import HyperParameters
from .. import continuation
from ..distributed import is_dask_collection
from ..exceptions import NotFittedError
from ..inference.noise import path_groups
from ..priors.base import PointMixture, RandomEffectsPrior
from .clusters import ClusterState
from .fitting import Fitting
from .frames import FrameLike
from .membership import Membership
from .params import check_model_params
from .predicting import Predicting
from .starting import pooled_ridge, ridge_estimates  # their home; importable from here as before
from .tables import Tables

__all__ = ["VariationalLongitudinalModel", "ridge_estimates", "pooled_ridge", "FrameLike"]


class VariationalLongitudinalModel(Tables, Membership, Predicting, ClusterState, Fitting, HyperParameters):
    """Base class: y_i = F_i w + X_i b_i + e_i with a pluggable prior on b_i, fitted by VI.

    Fitted attributes (after :meth:`fit`)
    ----------------------------------------
    design_ : LongitudinalDesign (basis, covariate encoding, standardisation).
    prior_ : RandomEffectsPrior (after pruning).
    params_ : VariationalParams.
    elbo_, elbo_history_, n_iter_, converged_, fit_seconds_
        The ELBO and its trace are on the model's internal (standardised, transformed) scale.
    elbo_data_scale_ : float
        The same bound as a bound on log p(y) of the response as given (the standardisation's and
        the transform's log-Jacobians added): comparable between fits of the same data on different
        scales (``select_model`` compares it).
    response_transform_ : None, "log" or "log1p"
        The scale fitted (``response_transform="auto"`` chooses it).
    elbo_by_transform_ : dict
        ``elbo_data_scale_`` of the best fit on each scale tried ("none", "log", "log1p").
    "User scale" below is the response's units, or with a ``response_transform`` (``response_transform_``
    not None) the units of its log: coefficients and variances describe the model's scale, while
    curves, bands, draws and scores are on the data's own.
    subjects_ : Index of the training subjects.
    labels_ : Series, cluster (path) per subject; clusters are numbered by size, 0 largest.
    responsibilities_ : DataFrame (subjects x clusters).
    groups_, group_proba_ : first-layer grouping, likewise.
    clusters_ : DataFrame, one row per cluster: its component in each layer (``layer1``, ``layer2``, ...:
        numbered by size within the layer, 0 largest, so ``layer1`` is the cluster's group in ``groups_``,
        ``cluster_layer1`` and the membership tables; ``components_kept_`` maps them back to the requested
        components), weight, and ``n_subjects``, the expected number of subjects (their probabilities summed;
        ``labels_`` counts each subject's most probable cluster, as the class tables do).
    n_components_ : tuple, components left per layer after pruning.
    sigma2_ : float, residual variance (user scale); with ``noise="cluster"`` the pooled value,
        the per-cluster variances weighted by their expected numbers of observations.
    sigma2_by_cluster_ : Series, residual variance of each first-layer group (``groups_``
        numbering; all equal to ``sigma2_`` with shared noise).
    noise_ : str, the noise model fitted ("shared" or "cluster"; with ``noise="auto"`` the one
        with the higher ELBO).
    fixed_effects_ : Series, covariate effects (user scale).
    random_effects_ : DataFrame, E[b_i] on the user's scale (curve = offset_ + X b + F w).
    weights_, means_, covariances_ : (M,), (M, D), (M, D, D) arrays: each cluster's prior weight and
        the mean and covariance of its spline coefficients (user scale, ``clusters_`` order); the
        linear mixed model has the same attributes with one cluster.
    cluster_means_ : DataFrame (cluster, time, mean, lower, upper, mean_lower, mean_upper, weight) on a
        grid: ``lower``/``upper`` hold 95 % of the cluster's subject curves, ``mean_lower``/``mean_upper``
        the 95 % credible band of the cluster's mean curve (the posterior uncertainty of its parameters).
    """

    _model_name = "model"

    # -------------------------------------------------------------- subclass hooks
    def _make_prior(self, dim: int, n_subjects: int, roughness: np.ndarray | None = None,
                    visit_times: int | None = None) -> RandomEffectsPrior:  # pragma: no cover
        raise NotImplementedError

    def _check_params(self) -> None:
        check_model_params(self)

    # -------------------------------------------------------------- shared by the mixins
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

    # -------------------------------------------------------------- the fitted globals, standardised scale
    def _w(self) -> np.ndarray:
        """Posterior mean of the fixed effects (P,), standardised scale (zeros without covariates)."""
        P = self.design_.n_fixed
        if self.params_.fixed is None:
            return np.zeros(P)
        return self.params_.fixed.moments()[0]

    def _mixture(self, cont: continuation.Continuation | None = None) -> PointMixture:
        """The prior of b for prediction, with the posterior uncertainty of the globals integrated in.

        With ``cont`` (times beyond the basis range, see :mod:`dmlmm.continuation`) b carries the
        smoothness prior's continuation coordinates too, N(0, kappa_c) on each path c.
        """
        mix = self.prior_.point_mixture(self.params_.prior, integrate_globals=True)
        if cont is None:
            return mix
        kappa = self.prior_.continuation_intensity(self.params_.prior) * self.design_.continuation_unit
        return continuation.augment_mixture(mix, kappa, cont.n_columns)

    def _sigma2_std(self) -> np.ndarray:
        """Residual variance of each path (M,), standardised scale (one shared value, or its first-layer group's)."""
        q = self.params_.noise
        return np.atleast_1d(np.asarray(q.mean, dtype=float))[path_groups(q, self.prior_.path_components())]

    def _w_cov(self) -> np.ndarray:
        """Posterior covariance of the fixed effects (P, P), standardised scale, the random effects
        integrated out (:func:`~dmlmm.prediction.fixed_effects_cov`)."""
        cov = getattr(self, "_fixed_cov", None)
        return self.params_.fixed.moments()[1] if cov is None else cov

    def save(self, path) -> None:
        """Write the fitted model to one file (format: :mod:`dmlmm.io`); read it back with :func:`dmlmm.load`."""
        from ..io import save_model

        self._check_subject_tables("save()")
        save_model(self, path)
