"""Where a fit starts: per-subject ridge fits shrunk towards a pooled fit, and each start's factors.

:func:`ridge_estimates` gives every subject a first guess of its random effects b_i (and, on
request, each fit's ridge penalty, from which the starting noise variance is estimated:
:func:`~dmlmm.inference.engine.init_noise_and_fixed`);
:func:`pooled_ridge` is the population fit they are shrunk towards; :func:`init_factory`
turns them into the starting variational parameters of a fit (or of a fit to a subsample).
The Dask path (:mod:`dmlmm.distributed`), the linear mixed model (:mod:`dmlmm.lmm`) and the
research-code interface (:mod:`dmlmm.compat`) start from the same estimates.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..sufficient import SufficientStats
from ..inference.engine import VariationalParams, VIConfig, init_globals
from ..inference.noise import per_cluster
from ..priors.base import RandomEffectsPrior
from ..priors.membership import membership_init

__all__ = ["ridge_estimates", "ridge_prior", "ridge_penalties", "pooled_ridge", "init_factory", "smooth_roughness",
           "SMOOTH_START_FACTOR"]

_INIT_SMOOTHING = 1e-3  # ridge penalty per unit roughness of the starting per-subject fits
#: Where every subject is seen at the same few times, fewer than the basis functions (``FitPlan.smooth_start``),
#: one more start begins from ridge fits penalised this many times harder in the rough directions (roughness
#: 1 per unit, where the smoothest rough coordinate has roughness 1): :func:`smooth_roughness`.
SMOOTH_START_FACTOR = 1000.0


def smooth_roughness(roughness: np.ndarray | None) -> np.ndarray | None:
    """The roughness that, passed to :func:`ridge_estimates` (or the Dask path's ridge fits), gives the
    smooth start's per-subject fits: ``SMOOTH_START_FACTOR`` times the coordinates' own.

    Why a second start: with visits at a few shared times the curves between them are seen by no data,
    and the default start's ridge fits (roughness penalised 1e-3 per unit) interpolate there with
    oscillations that coordinate ascent does not leave: on mlmRev's egsingle (1,721 pupils at five
    yearly tests, the last one held out) the deep mixture stopped at ``max_iter`` with ``sigma^2`` 0.018
    (the Gaussian LMM: 0.285), a population curve flat beyond the last test year and a held-out log
    score of -1.675 per observation (the LMM: -1.041); with the smooth start explored too it converges
    at an ELBO 87 nats higher (on the data's scale) with ``sigma^2`` 0.235 and -1.076. A smooth start for
    every fit (in place of the default one) was measured and not taken: on DGP 3 (36 kinds of curve with
    fast cosines) its curves lose the features that tell the clusters
    apart, and the fit kept one cluster (held-out log score -2.46 against -1.63 per subject). So it is
    one more start, and the ELBO chooses (:func:`~dmlmm.inference.starts.run_vi_with_starts`).
    """
    return None if roughness is None else SMOOTH_START_FACTOR * np.asarray(roughness, dtype=float)


def ridge_estimates(
    stats: SufficientStats,
    penalty: float | np.ndarray = 0.5,
    roughness: np.ndarray | None = None,
    pooled: tuple[np.ndarray, np.ndarray] | None = None,
    return_penalty: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Per-subject ridge fits of b_i shrunk towards the pooled fit, shape (N, D) (batched solves).

    ``penalty`` is a scalar or one value per coordinate (D,). With ``roughness`` (D,) the
    pooled fit and the subjects' fits are also penalised by ``_INIT_SMOOTHING * roughness``:
    with sparse, tied visit times an unpenalised pooled curve can swing wildly between the
    visits in directions the data do not see, and would start the fit there. ``pooled``: the
    pooled fit (:func:`pooled_ridge`) when it was computed elsewhere (from more subjects than ``stats``).

    Each fit minimises ``|y_i - F_i w0 - X_i b|^2 + (b - m)' P (b - m)`` with the diagonal
    ``P = penalty + _INIT_SMOOTHING * roughness`` and ``m = P^-1 penalty b0`` (:func:`ridge_prior`).
    ``return_penalty``: also return each subject's penalty at its fit, ``(b_i - m)' P (b_i - m)``
    (N,), as ``(estimates, penalties)``.
    """
    if pooled is None:
        pooled = pooled_ridge(stats.total(), stats.n_subjects, roughness)
    prec, mean = ridge_prior(penalty, roughness, pooled)
    lhs = stats.XtX + prec * np.eye(stats.dim_random)
    r = stats.Xty - stats.XtF @ pooled[1] + penalty * pooled[0]  # = prec * mean
    b_hat = np.linalg.solve(lhs, r[..., None])[..., 0]
    if not return_penalty:
        return b_hat
    return b_hat, ridge_penalties(b_hat, prec, mean)


def ridge_prior(
    penalty: float | np.ndarray, roughness: np.ndarray | None, pooled: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The ridge fits' penalty as a Gaussian prior ``b ~ N(m, sigma^2 P^-1)``: its diagonal precision
    ``P`` (D,) and mean ``m`` (D,), given the pooled fit ``pooled`` (:func:`ridge_estimates`).
    A coordinate without penalty (P = 0) has no prior: its m is 0 and it adds nothing to a penalty."""
    dim = len(pooled[0])
    rough = np.zeros(dim) if roughness is None else _INIT_SMOOTHING * np.asarray(roughness, dtype=float)
    pen = np.broadcast_to(np.asarray(penalty, dtype=float), (dim,))
    prec = pen + rough
    return prec, np.divide(pen * pooled[0], prec, out=np.zeros(dim), where=prec > 0)


def ridge_penalties(b_hat: np.ndarray, prec: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Each subject's ridge penalty ``(b_i - m)' P (b_i - m)`` (N,) for estimates ``b_hat`` (N, D), ``P`` = diag(``prec``)."""
    dev = b_hat - mean
    return np.einsum("nd,d,nd->n", dev, prec, dev)


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


def init_factory(
    stats: SufficientStats, b_hat: np.ndarray, config: VIConfig, kind: str, Z: np.ndarray | None = None,
    penalties: np.ndarray | None = None,
) -> Callable[[np.ndarray | None], Callable[[RandomEffectsPrior, np.random.Generator], VariationalParams]]:
    """``make_init(rows)``: the starting point of a fit to the subjects at positions ``rows`` (None: all).

    ``b_hat`` (N, D) are the per-subject ridge fits and ``penalties`` (N,) their ridge penalties
    (:func:`ridge_estimates`); the noise and fixed-effect factors start from the selected subjects'
    statistics, and with ``kind == "cluster"`` each start gets one residual
    variance per first-layer component; with membership covariates ``Z`` (N, Q) each start gets
    the membership model's prior factor, sized to its first layer; with ``config.subject_df`` each
    subject's residual scale starts from its ridge fit (:func:`~dmlmm.inference.engine.init_globals`).
    """

    def make_init(rows: np.ndarray | None):
        st, bh = (stats, b_hat) if rows is None else (stats.subset(rows), b_hat[rows])
        pen = None if penalties is None else (penalties if rows is None else penalties[rows])
        noise, aux, fixed, scales = init_globals(st, bh, config, pen)

        def init(p: RandomEffectsPrior, g: np.random.Generator) -> VariationalParams:
            nz, ax = noise, aux
            if kind == "cluster":  # one residual variance per first-layer component of this start
                nz, ax = per_cluster(noise, aux, int(p.path_components()[:, 0].max()) + 1)
            k1 = int(p.path_components()[:, 0].max()) + 1
            gamma = None if Z is None else membership_init(k1, Z.shape[1], config.membership_scale)
            return VariationalParams(nz, ax, fixed, p.init_params(bh, g), gamma, scales)

        return init

    return make_init
