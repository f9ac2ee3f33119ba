"""The mixture models: the classical mixture of LMMs and the deep mixture (DMLMM)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from ..basis import SplineBasis
from ..exceptions import IdentifiabilityWarning
from ..priors.dmfa import DeepMixturePrior, idiosyncratic_shape_for
from ..priors.gaussian import GaussianMixturePrior
from ..priors.smoothing import rough_mask
from .base import VariationalLongitudinalModel

__all__ = ["MixtureLMM", "DeepMixtureLMM"]


def _warn_noise_confounded(n_times: int, n_basis: int, what: str, advice: str, stacklevel: int) -> None:
    """The IdentifiabilityWarning of data that confound the residual variance with the subjects' curves
    (:func:`~dmlmm.models.design.noise_confounded`): what is wrong there (``what``) and what to use (``advice``);
    ``stacklevel`` as for ``warnings.warn`` called here."""
    warnings.warn(
        f"every subject is observed at (some of) the same {n_times} distinct times, no more than the {n_basis} "
        f"basis functions: {what} (the subjects' curves can absorb the measurement noise), so curves may pass "
        f"through the observations and bands for new observations be too narrow; use {advice} or fewer basis "
        "functions than distinct times",
        IdentifiabilityWarning,
        stacklevel=stacklevel,
    )


def _reduce_components(k: int, n_subjects: int) -> int:
    """At most one component per subject in a layer (the fit says so once: :func:`_warn_components`; a deeper
    layer of 1000 components for 40 subjects took 20 times as long, for nothing)."""
    return min(k, n_subjects)


def _warn_components(k: int, n_subjects: int, what: str, stacklevel: int) -> None:
    """Once per fit, in the calling process (not in each candidate, nor in worker processes, which printed
    it raw to the terminal and left it out of the command line's report)."""
    if k > n_subjects:
        warnings.warn(f"{what}={k} exceeds the number of subjects ({n_subjects}); using {n_subjects} components",
                      IdentifiabilityWarning, stacklevel=stacklevel)


class MixtureLMM(VariationalLongitudinalModel):
    """Mixture of linear mixed models (growth-mixture model) with full covariances, by VI.

    ``y_i = F_i w + X_i b_i + e_i``, ``b_i ~ sum_k pi_k N(mu_k, Sigma_k)``, X_i a spline basis of time.

    Parameters
    ----------
    n_components : int
        K; an overfitted K is fine: the sparse Dirichlet prior empties unneeded components,
        which are pruned.
    basis : SplineBasis, optional
        Default ``SplineBasis()`` (20 cubic B-splines, knots following the visits) over the
        data's time range; give ``lower``/``upper`` to cover a study window.
    smoothing : int or None
        Order of the smoothness prior on the curves (2: a second-order P-spline, flat on
        straight lines; its strength is learned from the data). None: no smoothness prior
        (the research code's model, which needs a small basis).
    concentration : float
        Dirichlet parameter of the weights.
    cov_scale : float
        Half-t scale of the random-effect SDs (Huang-Wand prior; standardised scale).
    covariance : {"auto", "pspline", "full"}
        Each component's covariance of the subjects' deviations. "full": one inverse-Wishart
        (Huang-Wand) matrix over all spline coordinates, so any rough direction can carry
        variance. "pspline": a random polynomial (full covariance over the penalty's null space)
        plus a smooth random curve whose roughness is one learned variance per component (the
        subject-specific P-spline; docs/models.md). "auto" (default): with a smoothness prior both
        are fitted and the higher ELBO is kept (twice the time), except where every subject is seen at
        (some of) the same few times, no more than the basis functions: there a full covariance cannot
        tell the measurement noise from the curves, and the P-spline one is fitted alone (asking for
        "full" there warns); without a smoothness prior (``smoothing=None``) "full". The covariance
        used is ``prior_.covariance``.
    noise_scale : float
        Half-Cauchy scale of the residual SD (standardised scale).
    noise : {"shared", "cluster", "auto"}
        One residual variance for all subjects, or one per (first-layer) component, each
        with the same half-Cauchy prior; predictions then use each cluster's own. "auto"
        fits both (twice the time) and keeps the one with the higher ELBO (``noise_``).
    noise_df : None, "auto" or float > 0
        Subject-level residual scales: subject i's residual variance is ``sigma2 v_i`` with
        ``v_i ~ IG(nu/2, nu/2)``, so each subject's residuals are multivariate Student-t with
        ``nu = noise_df`` degrees of freedom and a noisy subject's visits count for less (its
        curve, band and cluster follow from its own scale). "auto" learns ``nu`` (between 1 and
        1000: 1000 is the Gaussian model) by the ELBO; None (default): one residual variance for all
        subjects. With ``noise="cluster"`` subject i's residual variance in cluster k is
        ``sigma2_k v_i``. In memory (full batch or minibatch) or on a Dask frame, where each subject's
        scale stays on its worker (docs/dask.md). Fitted ``noise_df_`` and ``subject_noise_``
        (docs/models.md, "Residual variance per subject").
    response_transform : {"auto", None, "log", "log1p"}
        The scale of the model: the response as given (None), log(y) (``"log"``: y > 0) or
        log(1 + y) (``"log1p"``: y > -1, for a response with zeros), for right-skewed responses (exercise hours,
        concentrations, weights, counts). "auto" (default): a response that is never negative is
        fitted on its log scale and as given (up to twice the time: the second gives up once it cannot
        reach the first one's bound) and the fit with the higher ELBO
        as a bound on log p(y) of the response as given is kept (``response_transform_``,
        ``elbo_by_transform_``); a response with negative values is fitted as given. Curves, bands,
        draws and scores are on the user's scale (bands and draws exactly; ``mean`` is the
        back-transformed mean of the log scale, for one Gaussian its median); coefficients and
        ``sigma2_`` describe the model's scale (:mod:`dmlmm.response_transform`).
    membership_covariates : list of str, optional
        Baseline covariates (one value per subject; numeric or categorical) on which class
        membership depends, as lcmm's ``classmb``: the first-layer component probabilities
        are a continuation-ratio (stick-breaking) logit of them, each group's log-odds against
        the later groups among the subjects not in an earlier one (with two groups, logistic
        regression; with more, not lcmm's multinomial coefficients), coefficients N(0, 2.5^2) on
        the standardised covariates, fitted inside the variational bound
        (:mod:`dmlmm.priors.membership`).
        Results in ``membership_coefficients_``; new subjects' class probabilities before any
        visit from :meth:`membership_probabilities`. Delete moves are off with it. In memory or on a
        Dask frame (docs/dask.md).
    max_iter, tol : stopping rule on the ELBO's gain per iteration relative to |ELBO|, never to less than 0.1 nats
        per observation (the ELBO's origin is arbitrary: near zero a purely relative change never stops; docs/models.md).
    batch_size : "auto", "full" or int
        Full-batch coordinate ascent, or a stochastic fit with this minibatch size: a full-batch
        warm start on ``subsample`` subjects, natural-gradient steps until the clustering of a
        fixed check subset stops moving, then full passes (docs/models.md, "Stochastic fits").
        "auto": full batch up to 5,000 subjects, above that min(max(0.05 N, 2 K), 1024).
    subsample : "auto" or int
        Subjects of a stochastic fit's warm start ("auto": 2,000; all when N is smaller).
    n_init : int
        Restarts; the fit with the highest ELBO is kept.
    hard_assignment : bool
        Single best cluster per subject in the local step (as the DMLMM research code).
    delete_moves, prune : bool
        Escape split-cluster optima with delete moves; drop components that empty during a run. With
        ``prune=False`` the fit can still end with fewer components than requested: it explores smaller
        starting sizes too and keeps the start with the highest ELBO (docs/models.md, "Several starting sizes").
    random_state : int, Generator or None
    progress : bool
        Show a progress bar (with ``n_jobs`` > 1: one step per candidate fitted).
    n_jobs : int or None
        Worker processes for the candidates that one fit compares by the ELBO (response scales of
        ``response_transform="auto"``, prior variants such as ``covariance="auto"``, noise models of
        ``noise="auto"``): None or 1 runs them one after the other, -1 on every CPU. The same kept fit
        (:mod:`dmlmm.models.candidates` says when it can differ); each worker holds its own copy of the
        data's statistics and working memory; scripts need the ``if __name__ == "__main__":`` guard
        of any ``multiprocessing`` code. Not used by Dask fits.
    """

    _model_name = "mixture of LMMs"

    def __init__(
        self,
        n_components: int = 5,
        basis: SplineBasis | None = None,
        *,
        smoothing: int | None = 2,
        concentration: float = 0.5,
        cov_scale: float = 2.5,
        covariance: str = "auto",
        noise_scale: float = 1.0,
        noise: str = "shared",
        noise_df: float | str | None = None,
        response_transform: str | None = "auto",
        membership_covariates: Sequence[str] | None = None,
        max_iter: int = 1000,
        tol: float = 1e-5,
        batch_size: int | str = "auto",
        subsample: int | str = "auto",
        n_init: int = 1,
        hard_assignment: bool = False,
        delete_moves: bool = True,
        prune: bool = True,
        random_state=None,
        progress: bool = False,
        n_jobs: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.basis = basis
        self.smoothing = smoothing
        self.concentration = concentration
        self.cov_scale = cov_scale
        self.covariance = covariance
        self.noise_scale = noise_scale
        self.noise = noise
        self.noise_df = noise_df
        self.response_transform = response_transform
        self.membership_covariates = membership_covariates
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.subsample = subsample
        self.n_init = n_init
        self.hard_assignment = hard_assignment
        self.delete_moves = delete_moves
        self.prune = prune
        self.random_state = random_state
        self.progress = progress
        self.n_jobs = n_jobs

    def _make_prior(self, dim: int, n_subjects: int, roughness=None, visit_times=None) -> GaussianMixturePrior:
        k = int(self.n_components)
        if k < 1:
            raise ValueError(f"n_components must be a positive integer, got {self.n_components}")
        k = _reduce_components(k, n_subjects)
        # (the value itself is checked with the other hyperparameters, models/params.py)
        if self.covariance == "pspline" and roughness is None:
            raise ValueError("covariance='pspline' needs the smoothness prior: set smoothing (e.g. 2), "
                             "or covariance='full' for smoothing=None")
        # "auto" arrives here only without variants (no smoothness prior: "full") or from code that builds the
        # prior of this model directly: then the first variant's, "pspline"
        cov = self.covariance if self.covariance != "auto" else ("pspline" if rough_mask(roughness, dim).any() else "full")
        return GaussianMixturePrior(
            dim, k, zero_mean=False, concentration=self.concentration, cov_scale=self.cov_scale, roughness=roughness,
            covariance=cov,
        )

    def _prior_variants(self, noise_confounded: bool = False) -> list["MixtureLMM"]:
        """With ``covariance="auto"`` and a smoothness prior: copies with the P-spline and the full
        covariance (the fit keeps the higher ELBO, the P-spline one on a tie); else this model.

        Why both: on the real data sets of the accuracy harness the P-spline covariance's ELBO is
        higher by 141-333 nats and the full one absorbed the noise; on curves whose coefficients
        are Gaussian with an arbitrary covariance the full one's is higher (by 64 nats at 80 subjects)
        and the P-spline mixture split the one population into 2-3 clusters to mimic it.

        Where the data confound the residual variance with a full covariance (``noise_confounded``,
        :func:`~dmlmm.models.design.noise_confounded`: every subject seen at the same few times, no
        more than the basis functions) the P-spline one alone: the full one's ELBO cannot tell the noise
        from the curves there. On nlme's Spruce (79 trees at the same 13 times, 20 functions) it was
        2.6 nats higher with sigma^2 = 1.4e-5 (the P-spline one: 5.4e-3): a tree's curve went through its
        13 measurements and its band for a new measurement was 0.021 wide against 0.32-0.37."""
        if self.covariance != "auto" or self.smoothing is None:
            return [self]
        return [self._copy_with(covariance=cov) for cov in (("pspline",) if noise_confounded else ("pspline", "full"))]

    def _check_sizes(self, n_subjects: int, stacklevel: int = 3) -> None:
        _warn_components(int(self.n_components), n_subjects, "n_components", stacklevel + 1)

    def _check_noise_identified(self, noise_confounded: bool, n_times: int, n_basis: int, stacklevel: int = 3) -> None:
        """Warn when the full covariance that this model fits (``covariance="full"``, or no smoothness
        prior) cannot tell the residual variance from the curves on these data."""
        if noise_confounded and (self.covariance == "full" or self.smoothing is None):
            _warn_noise_confounded(n_times, n_basis, "under a full covariance of the spline coefficients the residual "
                                   "variance is not identified", "covariance='pspline' (with the smoothness prior, "
                                   "smoothing=2)", stacklevel + 1)


class DeepMixtureLMM(VariationalLongitudinalModel):
    """Deep mixture of linear mixed models (Kock, Klein and Nott): a DMFA prior on the spline coefficients.

    Parameters
    ----------
    n_components : tuple of int
        Components per layer (K_1, ..., K_L), e.g. (10, 5).
    latent_dims : tuple of int
        Latent dimensions (D_1, ..., D_L), each at most the one below (D_0 = n_basis), e.g. (4, 1).
    basis : SplineBasis, optional
        Default ``SplineBasis()`` (20 cubic B-splines, knots following the visits) over the
        data's time range; give ``lower``/``upper`` to cover a study window.
    smoothing : int or None
        Order of the smoothness prior on the curves (see :class:`MixtureLMM`); None: the
        research code's model.
    concentration, mean_scale, loading_scale, delta_scale : float or tuple per layer
        rho_l (Dirichlet), G_l (Cauchy scale^2 of the means), nu_l (horseshoe global scale),
        A_l (half-Cauchy scale of the idiosyncratic SDs); model.md section 4 defaults, except
        ``mean_scale="auto"`` (the default): G_1 = 0.5 and, with a smoothness prior, G_l = 1e-3
        in the deeper layers (l >= 2), whose means then stay near zero unless the data insist (a
        Cauchy's tails): a deeper layer's mean shifts a path along the first layer's loading
        curves, which can carry the population curve in place of the first layer's mean, under
        their smoother prior (docs/models.md, "The deeper layers' means"). A deeper layer left
        with one component has its mean pinned at zero (it is then redundant with the first
        layer's means), whatever ``mean_scale``. Without a smoothness prior, 0.5 in every layer
        and no pinning, as the research code.
    noise : {"shared", "cluster", "auto"}
        One residual variance, or one per first-layer component, or the better of the two
        by the ELBO (see :class:`MixtureLMM`).
    noise_df : None, "auto" or float > 0
        Subject-level residual scales with Student-t tails (see :class:`MixtureLMM`).
    loading_order : {"auto"} or float >= 1
        The loading curves' smoothness: their prior precisions grow like ``lam_d ** loading_order``
        over the Demmler-Reinsch coordinates (the idiosyncratic deviations' like ``lam_d``), see
        docs/models.md. 2 keeps the factors alive as the basis grows, 1 lets loading curves be as
        rough as the deviations; "auto" fits both (from the same random state) and keeps the
        higher ELBO, at twice the cost. The order used is ``prior_.loading_order``. Ignored
        without a smoothness prior.
    polynomial_covariance : {"diagonal", "full", "auto"}
        The first layer's idiosyncratic covariance on the spline coefficients' polynomial
        (level, trend) coordinates, with a smoothness prior: independent variances ("diagonal",
        the default), so that a correlation of level and trend is carried by the factors; or one
        full covariance per component ("full", the block of :class:`MixtureLMM`'s P-spline
        covariance), so that it is there whether or not a factor is switched on; or "auto": both,
        the higher ELBO kept (twice the time; with ``loading_order="auto"`` four fits). "full"
        predicted better where one population's factors were switched off (autism) and worse where
        it merged clusters (pbcseq), where the ELBO preferred "diagonal"; docs/models.md has the
        measurements. The block used is ``prior_.polynomial_covariance``. Ignored without a
        smoothness prior.
    response_transform : {"auto", None, "log", "log1p"}
        As :class:`MixtureLMM`: the response as given, or log(y) / log(1 + y) with results on the
        user's scale; "auto" keeps the better of the two by the ELBO on the data's scale.
    membership_covariates : list of str, optional
        Baseline covariates of first-layer membership (see :class:`MixtureLMM`).
    Other parameters as :class:`MixtureLMM`.
    """

    _model_name = "deep mixture of LMMs"

    def __init__(
        self,
        n_components: tuple[int, ...] = (10, 5),
        latent_dims: tuple[int, ...] = (4, 1),
        basis: SplineBasis | None = None,
        *,
        smoothing: int | None = 2,
        concentration=0.5,
        mean_scale="auto",
        loading_scale=1.0,
        delta_scale=2.5,
        noise_scale: float = 1.0,
        noise: str = "shared",
        noise_df: float | str | None = None,
        loading_order: float | str = "auto",
        polynomial_covariance: str = "diagonal",
        response_transform: str | None = "auto",
        membership_covariates: Sequence[str] | None = None,
        max_iter: int = 1000,
        tol: float = 1e-5,
        batch_size: int | str = "auto",
        subsample: int | str = "auto",
        n_init: int = 1,
        hard_assignment: bool = False,
        delete_moves: bool = True,
        prune: bool = True,
        random_state=None,
        progress: bool = False,
        n_jobs: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.latent_dims = latent_dims
        self.loading_order = loading_order
        self.polynomial_covariance = polynomial_covariance
        self.basis = basis
        self.smoothing = smoothing
        self.concentration = concentration
        self.mean_scale = mean_scale
        self.loading_scale = loading_scale
        self.delta_scale = delta_scale
        self.noise_scale = noise_scale
        self.noise = noise
        self.noise_df = noise_df
        self.response_transform = response_transform
        self.membership_covariates = membership_covariates
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.subsample = subsample
        self.n_init = n_init
        self.hard_assignment = hard_assignment
        self.delete_moves = delete_moves
        self.prune = prune
        self.random_state = random_state
        self.progress = progress
        self.n_jobs = n_jobs

    def _make_prior(self, dim: int, n_subjects: int, roughness=None, visit_times=None) -> DeepMixturePrior:
        ks = tuple(int(k) for k in _as_tuple(self.n_components, "n_components"))
        ds = tuple(int(d) for d in _as_tuple(self.latent_dims, "latent_dims"))
        ks = tuple(_reduce_components(k, n_subjects) for k in ks)  # every layer: at most one component per subject
        order = 2.0 if self.loading_order == "auto" else float(self.loading_order)
        return DeepMixturePrior(
            dim, ks, ds, self.concentration, self._mean_scales(len(ds), roughness is not None), self.loading_scale,
            self.delta_scale, roughness, loading_order=order, visit_times=visit_times,
            polynomial_covariance="diagonal" if self.polynomial_covariance == "auto" else self.polynomial_covariance,
            idiosyncratic_shape=idiosyncratic_shape_for(dim),
        )

    def _mean_scales(self, n_layers: int, smooth: bool):
        """``mean_scale`` per layer: "auto" is 0.5 in the first layer and, with a smoothness prior,
        :data:`DEEP_MEAN_SCALE` in the deeper ones (0.5 everywhere without one, as the research code)."""
        if not (isinstance(self.mean_scale, str) and self.mean_scale == "auto"):
            return self.mean_scale
        return (0.5,) + ((DEEP_MEAN_SCALE if smooth else 0.5),) * (n_layers - 1)

    def _check_sizes(self, n_subjects: int, stacklevel: int = 3) -> None:
        for layer, k in enumerate(_as_tuple(self.n_components, "n_components")):
            _warn_components(int(k), n_subjects, f"n_components[{layer}]", stacklevel + 1)

    def _check_noise_identified(self, noise_confounded: bool, n_times: int, n_basis: int, stacklevel: int = 3) -> None:
        """Warn when, without a smoothness prior, the idiosyncratic variances (free per coordinate, the research
        model) can take the residual variance on these data: measured on nlme's Spruce (13 shared times, 20
        functions), sigma^2 2.5e-4 against 4.8e-3 with the smoothness prior."""
        if noise_confounded and self.smoothing is None:
            _warn_noise_confounded(n_times, n_basis, "without the smoothness prior the residual variance is barely "
                                   "identified", "the smoothness prior (smoothing=2, the default)", stacklevel + 1)

    def _prior_variants(self, noise_confounded: bool = False) -> list["DeepMixtureLMM"]:
        """With a smoothness prior, ``loading_order="auto"`` (orders 2 and 1) and ``polynomial_covariance="auto"``
        ("diagonal" and "full"): copies with each combination, the diagonal block's first (the fit keeps the
        higher ELBO, the earlier on a tie); else this model. (Its covariances are never full over all
        coordinates: ``noise_confounded`` changes nothing.)"""
        if self.smoothing is None or (self.loading_order != "auto" and self.polynomial_covariance != "auto"):
            return [self]
        orders = (2.0, 1.0) if self.loading_order == "auto" else (self.loading_order,)
        blocks = ("diagonal", "full") if self.polynomial_covariance == "auto" else (self.polynomial_covariance,)
        return [self._copy_with(loading_order=order, polynomial_covariance=block) for block in blocks for order in orders]


#: G_l of the deeper layers' means under ``mean_scale="auto"`` with a smoothness prior (Cauchy scale 0.03
#: in the latent space, where the factors have unit scale).
DEEP_MEAN_SCALE = 1e-3


def _as_tuple(v, name: str) -> tuple:
    if isinstance(v, (int,)):
        return (v,)
    try:
        out = tuple(v)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of positive integers, got {v!r}") from None
    if not out or any(not float(x).is_integer() or int(x) < 1 for x in out):
        raise ValueError(f"{name} must be a tuple of positive integers, got {v!r}")
    return out
