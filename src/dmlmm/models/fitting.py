"""Fitting a variational longitudinal model: :meth:`Fitting.fit` and the fitted attributes it sets.

A mixin of :class:`~dmlmm.models.base.VariationalLongitudinalModel`. ``fit`` learns the
design, starts from per-subject ridge fits (:mod:`dmlmm.models.starting`), runs the engine
(full batch with several starting sizes, or minibatches; :mod:`dmlmm.inference`) for each
noise model and start, keeps the highest ELBO and sets the fitted attributes (ending in
``_``); the clusters are numbered by :mod:`dmlmm.models.clusters`. The Dask path
(:mod:`dmlmm.distributed.fit`) runs the same steps and sets the same attributes through
``_set_fitted_globals``.
"""

from __future__ import annotations

import copy
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from itertools import product
from time import perf_counter
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd

from .._recorded import recorded, reraise
from ..data import Longitudinal, check_longitudinal_call
from ..standardise import check_noise_left, warn_binary_response, warn_far_values
from ..sufficient import SufficientStats
from ..distributed import is_dask_collection
from ..exceptions import DataError, EmptyComponentWarning, IdentifiabilityWarning
from ..inference.engine import VIConfig, VIResult, weighted_by_scales
from ..inference.noise import is_per_cluster
from ..inference.subject_scales import DF_START
from ..inference.stochastic import StochasticSettings
from ..prediction import fixed_effects_cov
from ..response_transform import (check_transform, data_scale_bound, forward, label_of, log_jacobian,
                                  model_scale_elbo, transform_candidates)
from ..expfam import Gaussian
from ..priors.membership import first_layer_resp, membership_laplace_cov, separated_sticks
from ..basis import SplineBasis
from .design import (LongitudinalDesign, check_own_design, fitted_basis, latest_covariates, noise_confounded,
                     repeated_times)
from .frames import FrameLike
from .membership_design import MembershipDesign, check_roles, without_unknown_baseline
from .candidates import CandidateData, CandidateFit, fit_candidates, fit_in_turn, resolve_n_jobs, workers_allowed
from .starting import ridge_estimates, smooth_roughness
from .params import check_flag

if TYPE_CHECKING:
    from .base import VariationalLongitudinalModel

__all__ = ["FitPlan", "Fitting", "subject_noise"]


@dataclass(frozen=True)
class FitPlan:
    """What every response scale of one fit shares: the basis fitted on the data's times (each scale's
    design takes it, :meth:`LongitudinalDesign.learn`) and whether those times confound the residual
    variance with a full covariance (:func:`~dmlmm.models.design.noise_confounded`; the fit's variants,
    :meth:`Fitting._fit_variants`, leave the full one out then)."""

    basis: SplineBasis | None = None  # None: the model's own basis, fitted by each scale's design
    confounded: bool = False
    # confounded with fewer distinct times than functions: directions of the curves no visit sees, where the
    # starts' ridge fits interpolate, so a smooth start is explored too (models/starting.py)
    smooth_start: bool = False
    # those few distinct times (None otherwise): the deep mixture's prior ties the idiosyncratic variances of the
    # rough coordinates beyond what they resolve more closely to the spectrum (priors/dmfa.py)
    few_times: int | None = None

    @classmethod
    def of(cls, basis: SplineBasis, confounded: bool, n_times: int) -> "FitPlan":
        """The plan of a fit whose ``n_times`` distinct times do (``confounded``) or do not confound the noise."""
        few = confounded and n_times < basis.n_basis
        return cls(basis, confounded, few, int(n_times) if few else None)


@dataclass
class ScaleFit:
    """The best fit of the response on one scale: data (model scale), design, statistics, result,
    its config, sum of log |dz/dy|, the ELBO as a bound on log p(y) of the response as given, and
    the warnings the fits on this scale raised (re-raised only for the scale kept)."""

    data: Longitudinal
    design: LongitudinalDesign
    stats: SufficientStats
    result: VIResult
    config: VIConfig
    log_jacobian: float
    bound: float
    warnings: list = field(default_factory=list)


@dataclass
class _ScalePrep:
    """One response scale made ready for its candidates: data on the model's scale, design, what every
    candidate fits (:class:`~dmlmm.models.candidates.CandidateData`) and the sum of log |dz/dy|."""

    data: Longitudinal
    design: LongitudinalDesign
    candidates: CandidateData
    log_jacobian: float

    def scale_fit(self, best: CandidateFit) -> ScaleFit:
        """The scale's fit from its best candidate, with its ELBO as a bound on the data's own scale."""
        stats = self.candidates.stats
        bound = data_scale_bound(best.result.elbo, float(stats.n_obs.sum()), self.design.y_scale, self.log_jacobian)
        return ScaleFit(self.data, self.design, stats, best.result, best.config, self.log_jacobian, bound)


def _on_scale(transform: str | None) -> str:
    """'as given' or 'on the log scale' (a response scale in words)."""
    return "as given" if transform is None else f"on the {transform} scale"


def fitting_order(scales: list[str | None]) -> list[str | None]:
    """The order in which a fit tries its scales: the transformed ones first, the response as given last.

    A later scale's finishing runs race the bound of the scales before it (:func:`fit_scales`), so the
    loser of a close contest is cut short only when the winner comes first; a first scale is always
    fitted in full, whichever wins. The log scale won on five of the eight never-negative responses of
    the accuracy harness (docs/accuracy.md), so it goes first.
    """
    return sorted(scales, key=lambda tr: tr is None)


def fit_scales(scales: list[str | None], fit_one: Callable[[str | None, bool, float | None], ScaleFit],
               stacklevel: int = 2) -> tuple[ScaleFit, list[ScaleFit]]:
    """``fit_one(transform, quiet, to_beat)`` for each scale in :func:`fitting_order` (``quiet``: keep the
    warnings in the result, more than one scale; ``to_beat``: the highest bound on the data's scale of
    the scales fitted before, which this scale's finishing runs race, giving up once they cannot reach
    it, or None), a refused scale's DataError set aside: the kept fit (:func:`keep_best_scale`) and
    every scale's fit, in the order of ``scales``. The in-memory and the Dask fits both run their
    scales here.

    A scale that lost a race reports the bound where it gave up: a valid bound on log p(y) on its
    scale, below the one it would have converged to, and below the kept scale's.
    """
    fits, refused = [], []
    for tr in fitting_order(scales):
        to_beat = max((f.bound for f in fits), default=None)
        try:
            fits.append(fit_one(tr, len(scales) > 1, to_beat))
        except DataError as exc:  # e.g. a response that only its log can standardise (dmlmm.standardise)
            refused.append((tr, exc))
    fits.sort(key=lambda f: scales.index(f.design.transform))
    refused.sort(key=lambda r: scales.index(r[0]))
    return keep_best_scale(fits, refused, stacklevel + 1), fits


def keep_best_scale(fits: list[ScaleFit], refused: list[tuple[str | None, DataError]], stacklevel: int = 2) -> ScaleFit:
    """The fit with the highest bound on the data's scale (the first, the response as given, on a tie),
    once the scales that ``response_transform="auto"`` could not fit are reported: each refused scale
    ``(transform, error)`` is a warning, or, when every scale was refused, the first one's error.
    Only the kept scale's warnings are raised. The in-memory and the Dask fits both choose here;
    ``stacklevel`` is the warnings' as seen from the caller (2: the caller's caller)."""
    if not fits:  # the only scale, or every scale, refused: the first one's error
        raise refused[0][1]
    for tr, exc in refused:
        warnings.warn(f"response_transform='auto': the response {_on_scale(tr)} cannot be fitted ({exc}); it is "
                      f"fitted {' and '.join(_on_scale(f.design.transform) for f in fits)} only", UserWarning,
                      stacklevel=stacklevel + 1)
    chosen = max(fits, key=lambda f: (f.bound, f.design.transform is None))  # a tie: the response as given
    reraise(chosen.warnings)
    return chosen


def collapse_message(requested_first: int, kept: tuple[int, ...], n_paths: int,
                     warm_start: tuple[int, ...] | None = None) -> str | None:
    """The warning for a first layer pruned to one component from ``requested_first`` > 1, else None.

    ``kept``: the components left per layer; ``n_paths``: the clusters (paths) left. With one path
    every subject is in one cluster; with more, the clusters differ in the deeper layers only
    (``labels_``), while ``groups_`` and the per-group residual variances have one group.
    ``warm_start``: a minibatch fit's (warm-start subjects, all subjects[, first-layer components the warm
    start kept]) (:attr:`VIResult.warm_start`): where the warm start saw fewer than all subjects, the message
    says that the structure was decided on those (a stochastic fit creates no cluster after its warm start)
    and how to look at more of them; where the warm start kept several components, that the minibatch steps
    emptied the others.
    """
    if requested_first <= 1 or kept[0] != 1:
        return None
    said = "all first-layer components but one ended empty and were pruned: "
    if warm_start is not None and len(warm_start) > 2 and warm_start[2] > 1:
        return said + (f"this minibatch fit's warm start on {warm_start[0]} of the {warm_start[1]} subjects kept "
                       f"{warm_start[2]}, and the minibatch steps emptied the others; a full-batch fit "
                       "(batch_size='full') or larger minibatches may keep them")
    saw = None  # who decided the structure, where a minibatch fit's warm start saw only some subjects
    if warm_start is not None and warm_start[0] < warm_start[1]:
        saw = f"the {warm_start[0]} of the {warm_start[1]} subjects that this minibatch fit's warm start saw"
    if n_paths <= 1:
        said += f"{saw or 'the data'} show no cluster structure this model can support (every subject is in one cluster)"
    else:
        said += (f"the {n_paths} clusters (labels_) differ in the deeper layers only ({kept} components per layer); "
                 "groups_ has one group" + (f", as {saw} showed" if saw else ""))
    if saw:
        said += ("; a minibatch fit creates no cluster after its warm start: a larger subsample= (up to all "
                 "subjects) or batch_size='full' looks at more of them")
    return said


def subject_noise(resp: np.ndarray, sigma2: float | np.ndarray, q) -> np.ndarray:
    """Each subject's ``E[sigma^2_{c_i} v_i] = (sum_c r_ic E[sigma^2_c]) E[v_i]`` (N,) (c_i, sigma^2 and v_i are
    independent under q): ``resp`` (N, M), ``sigma2`` one shared E[sigma^2] or each path's (M,), ``q`` the
    subjects' q(v_i) (``subject_noise_``)."""
    per_subject = sigma2 if np.ndim(sigma2) == 0 else resp @ sigma2
    return per_subject * np.asarray(q.mean, dtype=float)


#: Residual variance (standardised scale: a share of the response's variance) below which a fit is said to
#: reproduce its response exactly.
NOISE_FREE = 1e-10


def _warn_noise_free(sigma2_std: np.ndarray, name: str) -> None:
    """An IdentifiabilityWarning where the residual variance is a negligible share of the response's variance:
    the curves reproduce the data exactly (a noise-free response: a simulation, a model output, a derived
    variable), and densities and bands rest on a variance of about zero (a full covariance's scores were
    +-1e78 on noise-free cubic curves)."""
    share = float(np.min(sigma2_std)) if np.size(sigma2_std) else 1.0
    if share < NOISE_FREE:
        warnings.warn(
            f"the curves reproduce the response '{name}' almost exactly: the residual variance is {share:.1e} of the "
            "response's variance, so the log densities (score, score_samples) and the bands for new observations "
            "rest on a variance of about zero. Is the response noise-free (a simulation, a model output, a variable "
            "derived from time)?", IdentifiabilityWarning, stacklevel=4)


class Fitting:
    """Mixin: ``fit`` and the fitted state it sets (design, prior, parameters, ELBO, noise, tables)."""

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
        df = self._noise_df()
        return VIConfig(
            max_iter=int(self.max_iter), tol=float(self.tol), batch_size=bs,
            hard_assignment=bool(self.hard_assignment), noise_scale=float(self.noise_scale),
            prune_threshold=0.1 if self.prune else 0.0,
            subject_df=None if df is None else (DF_START if df == "auto" else float(df)), learn_df=df == "auto",
        )

    def _noise_df(self) -> float | str | None:
        """``noise_df``: the subject-level residual scales' degrees of freedom (None without them)."""
        return getattr(self, "noise_df", None)

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
        covariates : list of str or str, optional
            Fixed-effect covariates: column names (numeric, or categorical which are dummy coded
            against their first level), or a formulaic right-hand side such as ``"diet * age"`` or
            ``"diet * time"`` (interactions, ``C(x)``, transforms; no intercept column: the mean
            curve takes its place; :mod:`dmlmm.covariates`).
        dropna : bool
            Drop rows with missing values (with a warning) instead of raising; with
            ``membership_covariates``, also the subjects whose covariates are missing at every visit.

        Returns
        -------
        self
        """
        self._check_params()
        check_flag(dropna, "dropna")
        transform = check_transform(getattr(self, "response_transform", None))
        if is_dask_collection(data):  # per-subject work on the Dask workers (dmlmm.distributed)
            from ..distributed.fit import fit_dask

            return fit_dask(self, data, subject, time, response, covariates, dropna=dropna)
        if isinstance(data, Longitudinal):
            check_own_design(data)
            check_longitudinal_call(data, subject, time, response, covariates)
            d = data
        else:
            if dropna and isinstance(data, pd.DataFrame):  # subjects without any baseline value of membership
                data = without_unknown_baseline(data, subject, self._membership_columns(), stacklevel=2)
            d = Longitudinal.from_frame(data, subject, time, response, covariates, dropna=dropna)
        if d.n_subjects < 2:
            raise DataError(
                f"only one subject ({d.subjects[0]}) in the data: a mixed model needs at least two subjects "
                "to learn how subjects vary"
            )
        if d.response is not None:  # on the data's scale (each transformed scale's design checks its own)
            check_noise_left(d.response, d.codes, d.time, d.columns.response)
            warn_binary_response(d.response, d.columns.response, stacklevel=3)
            warn_far_values(d.response, d.columns.response, d.subjects, d.codes, d.time, d.columns.subject,
                            stacklevel=3)
        members = Z = None
        if self._membership_columns():
            check_roles(self._membership_columns(), d.columns.roles())
            members, Z = MembershipDesign.learn(data, d.columns.subject, self._membership_columns(), d.subjects)
        t0 = perf_counter()
        times, basis = np.unique(d.time), fitted_basis(self.basis, d.time)  # the basis of every scale (times only)
        plan = FitPlan.of(basis, noise_confounded(basis, times, repeated_times(d.codes, d.time)), len(times))
        self._check_noise_identified(plan.confounded, len(times), basis.n_basis)
        if d.counts.max() <= 1:
            warnings.warn(
                f"every subject has one observation ({d.n_subjects} subjects): a subject's own deviation from its "
                "cluster's curve and the residual noise cannot be told apart, so sigma2_ and the subjects' curves rest "
                "on the priors; a mixed model needs repeated measurements of some subjects", IdentifiabilityWarning,
                stacklevel=2)
        self._check_sizes(d.n_subjects)
        scales = transform_candidates(transform, d.response)
        n_jobs = resolve_n_jobs(getattr(self, "n_jobs", None))
        several = len(scales) * len(self._fit_variants(plan.confounded)) > 1  # candidates to run side by side
        chosen = None
        if n_jobs > 1 and several and not workers_allowed():
            warnings.warn(f"n_jobs={self.n_jobs}: this process is a daemon (e.g. a multiprocessing.Pool worker), which "
                          "cannot start worker processes; fitting in this process instead (n_jobs=1 says so quietly)",
                          RuntimeWarning, stacklevel=2)
        elif n_jobs > 1 and several:  # candidates at once (models/candidates.py)
            try:
                chosen, fits = self._fit_scales_parallel(d, scales, members, Z, n_jobs, plan)
            except BrokenProcessPool as exc:
                warnings.warn(
                    f"n_jobs={self.n_jobs}: the worker processes stopped before finishing ({exc}); fitting in this "
                    "process instead. A script that fits with n_jobs > 1 needs its top level guarded by "
                    "`if __name__ == \"__main__\":` (the workers import it)", RuntimeWarning, stacklevel=2)
        if chosen is None:
            chosen, fits = fit_scales(scales, lambda tr, quiet, to_beat: self._fit_scale(d, tr, members, Z, quiet, to_beat,
                                                                                    plan))
        chosen.result.seconds = perf_counter() - t0
        best, design, stats = chosen.result, chosen.design, chosen.stats
        if design.needs_population and isinstance(data, pd.DataFrame):  # a covariate formula that uses time
            design.learn_population(latest_covariates(data, d.columns.subject, d.columns.time,
                                                      design.population_columns()), d.subjects)
        self._set_fitted(chosen.data, design, best, chosen.log_jacobian)
        _warn_noise_free(self._sigma2_std(), d.columns.response)
        self.elbo_by_transform_ = {label_of(f.design.transform): float(f.bound) for f in fits}
        self._fixed_cov = None
        if design.n_fixed:
            stats = weighted_by_scales(stats, best.params)  # each subject's information at its expected scale
            self._fixed_cov = fixed_effects_cov(stats, self._mixture(), self._sigma2_std(), best.local.resp,
                                                chosen.config.fixed_var)
        self._membership_cov = None
        if Z is not None:
            resp1 = first_layer_resp(best.local.resp, best.prior.path_components()[:, 0])
            self._set_membership_cov(best.params.membership, Z, resp1, chosen.config.membership_scale)
        return self

    def _set_membership_cov(self, q: Gaussian, Z: np.ndarray, resp1: np.ndarray, scale: float,
                            stacklevel: int = 4) -> None:
        """The membership coefficients' covariance from the curvature at the posterior mean of ``q``
        (:func:`~dmlmm.priors.membership.membership_laplace_cov`; Z (N, Q), first-layer responsibilities resp1
        (N, K_1)), and the separation warning (:meth:`_warn_separation`; ``stacklevel`` 4: the caller of ``fit``
        when ``fit`` calls this)."""
        self._membership_cov = membership_laplace_cov(q, Z, resp1, scale)
        self._warn_separation(Z, resp1, scale, stacklevel=stacklevel)

    def _warn_separation(self, Z: np.ndarray, resp1: np.ndarray, scale: float, stacklevel: int = 3) -> None:
        """An IdentifiabilityWarning naming the groups and covariates that the membership covariates separate
        (almost) perfectly (:func:`~dmlmm.priors.membership.separated_sticks`); ``stacklevel``: the warning's
        (3: the caller of ``fit``)."""
        separated = separated_sticks(Z, resp1)
        if not separated:
            return
        names, groups = self.design_.membership.names, self._group_of_path
        what = "; ".join(f"group {groups[j]} against {', '.join(map(str, groups[j + 1:]))}: "
                         f"{', '.join(names[q] for q in cols)}" for j, cols in separated.items())
        warnings.warn(
            f"the membership covariates separate the groups (almost) perfectly ({what}): without the prior the "
            f"log-odds would grow without bound, so these coefficients' size and interval are the prior's "
            f"(N(0, {scale:g}^2) per SD of each covariate), not measured by the data; read them as a very strong "
            "effect, and their probabilities near 0 or 1", IdentifiabilityWarning, stacklevel=stacklevel)

    def _fit_scale(self, d: Longitudinal, transform: str | None, members, Z, quiet: bool = False,
                   to_beat: float | None = None, plan: FitPlan = FitPlan()) -> ScaleFit:
        """Every variant of the fit (:meth:`_fit_variants`, ``n_init`` each) of ``d``'s response on one
        scale (``transform(y)``); the best by the ELBO, with its bound on the data's own scale. With
        ``quiet`` the warnings are kept in the result instead of raised. ``plan``: what every scale of the
        fit shares (:class:`FitPlan`)."""
        if not quiet:
            return self._fit_scale_loud(d, transform, members, Z, to_beat, plan)
        out, caught = recorded(lambda: self._fit_scale_loud(d, transform, members, Z, to_beat, plan))
        out.warnings = caught
        return out

    def _fit_scale_loud(self, d: Longitudinal, transform: str | None, members, Z,
                        to_beat: float | None = None, plan: FitPlan = FitPlan()) -> ScaleFit:
        prep = self._prepare_scale(d, transform, members, Z, plan)
        stats, design, jac = prep.candidates.stats, prep.design, prep.log_jacobian
        rival = None if to_beat is None else model_scale_elbo(to_beat, float(stats.n_obs.sum()), design.y_scale, jac)
        # each run's warnings are held back: only the kept run's are raised; a later candidate races
        # the best so far and gives up once it cannot reach it
        best = fit_in_turn(self._fit_variants(plan.confounded), prep.candidates, to_beat=rival)
        reraise(best.warnings)
        return prep.scale_fit(best)

    def _prepare_scale(self, d: Longitudinal, transform: str | None, members, Z,
                       plan: FitPlan | None = None) -> "_ScalePrep":
        """The response on one scale (``transform(y)``) ready for its candidates: design, statistics and
        the per-subject ridge fits that every start begins from. ``plan`` (:class:`FitPlan`): the fit's basis,
        fitted on the data's times (None: the model's, fitted here); whether the smooth start's ridge fits are
        made too (:attr:`FitPlan.smooth_start`, :func:`~dmlmm.models.starting.smooth_roughness`); the few
        distinct visit times that the deep mixture's prior reads (:attr:`FitPlan.few_times`)."""
        plan = FitPlan() if plan is None else plan
        basis = plan.basis
        if transform is not None:
            d = replace(d, response=forward(d.response, transform, d.columns.response))
        jac = float(np.sum(log_jacobian(d.response[np.isfinite(d.response)], transform)))
        design = LongitudinalDesign.learn(d, self.basis if basis is None else basis, self.smoothing, transform)
        design.membership = members
        stats = design.stats(d).with_membership(Z)
        rough = design.roughness
        b_hat, penalties = ridge_estimates(stats, 0.5, rough, return_penalty=True)
        smooth = (ridge_estimates(stats, 0.5, smooth_roughness(rough), return_penalty=True)
                  if plan.smooth_start and rough is not None else None)
        return _ScalePrep(d, design, CandidateData(stats, b_hat, penalties, rough, d.n_subjects, Z, smooth,
                                                   plan.few_times), jac)

    def _fit_scales_parallel(self, d: Longitudinal, scales: list[str | None], members, Z,
                             n_jobs: int, plan: FitPlan = FitPlan()) -> tuple[ScaleFit, list[ScaleFit]]:
        """:func:`fit_scales` with every candidate of every scale at once in worker processes
        (:mod:`dmlmm.models.candidates`): each scale's best candidate (the first on a tie), then the
        best scale, with the same warnings and refusals."""
        quiet = len(scales) > 1
        preps, refused = [], []
        for tr in fitting_order(scales):
            try:
                prep, caught = recorded(lambda tr=tr: self._prepare_scale(d, tr, members, Z, plan))
            except DataError as exc:  # e.g. a response that only its log can standardise
                refused.append((tr, exc))
                continue
            preps.append((tr, prep, caught))
        variants = self._fit_variants(plan.confounded)
        tasks = [(variant, kind, prep.candidates) for _, prep, _ in preps for variant, kind in variants]
        done = iter(fit_candidates(tasks, n_jobs, bool(getattr(self, "progress", False))) if tasks else [])
        fits = []
        for tr, prep, caught in preps:
            outcomes = [next(done) for _ in variants]
            failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if isinstance(failed, DataError):
                refused.append((tr, failed))
                continue
            if failed is not None:
                raise failed
            best = max(outcomes, key=lambda cand: cand.result.elbo)  # the first on a tie
            fit = prep.scale_fit(best)
            fit.warnings = caught + best.warnings
            if not quiet:
                reraise(fit.warnings)
                fit.warnings = []
            fits.append(fit)
        fits.sort(key=lambda f: scales.index(f.design.transform))
        refused.sort(key=lambda r: scales.index(r[0]))
        return keep_best_scale(fits, refused, 3), fits

    def _stochastic_settings(self) -> StochasticSettings:
        """Settings of a minibatch fit: the warm start's subsample size from ``subsample``."""
        n = getattr(self, "subsample", "auto")
        return StochasticSettings() if n == "auto" else StochasticSettings(subsample=int(n))

    def _fit_variants(self, noise_confounded: bool = False) -> list[tuple["VariationalLongitudinalModel", str]]:
        """(model variant, noise kind) pairs that a fit runs, each from the same random state, the higher
        ELBO kept: ``noise="auto"`` tries both noise models, and a subclass's prior variants
        (:meth:`_prior_variants`) are tried too. The in-memory and the Dask fits both run these.
        ``noise_confounded``: the data confound the residual variance with a full covariance
        (:func:`~dmlmm.models.design.noise_confounded`)."""
        kinds = ("shared", "cluster") if self._noise_kind() == "auto" else (self._noise_kind(),)
        return list(product(self._prior_variants(noise_confounded), kinds))

    def _prior_variants(self, noise_confounded: bool = False) -> list["VariationalLongitudinalModel"]:
        """Copies of this model whose priors the fit compares by the ELBO; this model alone unless a
        subclass has a setting such as ``loading_order="auto"``."""
        return [self]

    def _check_sizes(self, n_subjects: int, stacklevel: int = 3) -> None:
        """A subclass warns here, once per fit, when it asks for more first-layer components than there are
        subjects (each candidate's prior then has one per subject; ``stacklevel`` 3: the caller of ``fit``)."""

    def _check_noise_identified(self, noise_confounded: bool, n_times: int, n_basis: int, stacklevel: int = 3) -> None:
        """A subclass whose prior can be a full covariance warns here when the data confound the residual
        variance with it (:func:`~dmlmm.models.design.noise_confounded`; ``n_times`` distinct times,
        ``n_basis`` functions; ``stacklevel`` 3: the caller of ``fit``)."""

    def _copy_with(self, **attrs) -> "VariationalLongitudinalModel":
        """A shallow copy of this model with some hyperparameters replaced."""
        other = copy.copy(self)
        for name, value in attrs.items():
            setattr(other, name, value)
        return other

    def _sized(self, sizes: tuple[int, ...]) -> "VariationalLongitudinalModel":
        """A copy of this model with ``sizes`` components per layer (for the smaller starts)."""
        return self._copy_with(
            n_components=tuple(sizes) if isinstance(self.n_components, (tuple, list)) else int(sizes[0]))

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

    def _set_fitted(self, d: Longitudinal, design: LongitudinalDesign, res, log_jacobian: float = 0.0) -> None:
        resp = res.local.resp
        self._set_fitted_globals(design, res, resp.sum(axis=0), resp.T @ np.diff(d.offsets), stacklevel=4,
                                 log_jacobian=log_jacobian)
        self.subjects_ = d.subjects
        self.responsibilities_ = self._proba_frame(resp, d.subjects)
        self.labels_ = self._labels_from(self.responsibilities_)
        self.group_proba_ = self._group_frame(resp, d.subjects)
        self.groups_ = self._labels_from(self.group_proba_)
        self.random_effects_ = pd.DataFrame(
            design.spline_coefficients(res.local.mean_b) * design.y_scale, index=d.subjects,
            columns=design.basis.column_names,
        )
        self._set_subject_noise(resp)

    def _set_subject_noise(self, resp: np.ndarray) -> None:
        """``noise_df_`` and ``subject_noise_`` from the subject-level residual scales (None without them);
        ``resp`` (N, M): the subjects' path probabilities."""
        scales = getattr(self.params_, "scales", None)
        self.noise_df_ = None if scales is None else float(scales.df)
        self.subject_noise_ = None
        if scales is not None:
            self.subject_noise_ = pd.Series(subject_noise(resp, self._noise_by_path(), scales.q), index=self.subjects_,
                                            name="sigma2")

    def _noise_by_path(self) -> float | np.ndarray:
        """E[sigma^2] on the model's scale: ``sigma2_`` with one shared variance, else each path's (M,)."""
        return self.sigma2_ if self.noise_ == "shared" else self._sigma2_std() * self.design_.y_scale**2

    def _set_fitted_globals(
        self, design: LongitudinalDesign, res, sizes: np.ndarray, path_n_obs: np.ndarray, stacklevel: int = 3,
        log_jacobian: float = 0.0,
    ) -> None:
        """Everything fitted except the per-subject tables.

        ``sizes`` (M,): sum_i r_ic; ``path_n_obs`` (M,): sum_i r_ic n_i (the paths' expected observations);
        ``log_jacobian``: sum of log |dz/dy| over the observations (``response_transform``).
        """
        self.design_ = design
        self.prior_ = res.prior
        self.params_ = res.params
        self.elbo_ = float(res.elbo)
        # the same bound on log p(y) of the response as given: the standardisation's and the transform's Jacobians
        self.elbo_data_scale_ = data_scale_bound(res.elbo, float(np.sum(path_n_obs)), design.y_scale, log_jacobian)
        self.response_transform_ = design.transform
        self.elbo_by_transform_ = {label_of(design.transform): self.elbo_data_scale_}  # fit() adds the scales it tried
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
        self.noise_df_, self.subject_noise_ = None, None  # the in-memory fit sets them (_set_subject_noise)
        w = self._w()
        self.fixed_effects_ = pd.Series(w * s / design.covariate_sd, index=list(design.fixed_names), dtype=float, name="estimate")
        self.cluster_means_ = self._cluster_curves()
        message = collapse_message(self._requested_first_layer(), self.n_components_, self.prior_.n_paths,
                                   res.warm_start)
        if message is not None:
            warnings.warn(message, EmptyComponentWarning, stacklevel=stacklevel)

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
