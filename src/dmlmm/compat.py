"""Drop-in interface of the DMLMM research code, on top of dmlmm's engine.

The research code's minimal working example runs with only its imports changed::

    from dmlmm.compat import DMLMM, design_matrix

    dmlmm = DMLMM(y, x, K=[10, 5], D=[10, 4, 1])
    dmlmm.train(1000, -1)
    samples = dmlmm.predict_y(np.vstack([x[i], design_matrix(knots, pos)]), y[i], 5000)

Inputs may be numpy arrays, lists or (CPU) torch tensors; torch is never imported.
Differences from the research code (all deliberate, see model.md section 5):
soft path responsibilities, exact ELBO, coordinate ascent with delete moves,
and stopping on convergence (``train(max_iter, threshold)`` stops early when the
relative ELBO change falls below ``threshold``, or below 1e-5 when ``threshold <= 0``).
The responses are centred before the fit (``offset``, their mean, added back by
``predict_y``; ``m_gmm`` describes ``y - offset``): the research knot layout's basis does
not sum to one near the ends, so a level far from zero could not be carried there (on
DGP 1 shifted by 30 the research fit's noise variance came out 0.134 for a truth of
0.09, and its curves 0.38 off).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .basis import bspline_design
from .data import Longitudinal
from .exceptions import NotFittedError
from .inference.engine import VariationalParams, VIConfig, init_noise_and_fixed
from .inference.moves import run_vi_with_moves
from .models.starting import ridge_estimates
from .prediction import condition
from .priors.dmfa import DeepMixturePrior

__all__ = ["DMLMM", "design_matrix"]


def _array(v) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=float)


def design_matrix(knots: Sequence[float], t: Sequence[float], degree: int = 3) -> np.ndarray:
    """Cubic B-spline values of the knot vector ``knots`` at times ``t``, shape (len(t), len(knots) - degree - 1).

    Evaluates also in the outer knot intervals, where scipy's ``BSpline.design_matrix`` refuses.
    """
    return bspline_design(_array(t).reshape(-1), _array(knots), degree, extrapolate=True)


class DMLMM:
    """The research code's ``DMLMM(y, x, K, D)``: deep mixture of LMMs on a user-given random design.

    Parameters
    ----------
    y : list of N arrays (n_i,)
    x : list of N design matrices (n_i, D[0])
    K : components per layer, e.g. [10, 5]
    D : dimensions per layer including the random-effects dimension, e.g. [10, 4, 1]
    random_state : seed for the initialisation.
    """

    def __init__(self, y, x, K, D, random_state=0) -> None:
        self.data = Longitudinal.from_arrays([_array(v) for v in y], [_array(v) for v in x])
        self.K = [int(k) for k in K]
        self.D = [int(d) for d in D]
        if len(self.D) != len(self.K) + 1:
            raise ValueError(f"D must list the random-effects dimension and one latent dimension per layer: "
                             f"got K={self.K}, D={self.D}")
        if self.D[0] != self.data.design.shape[1]:
            raise ValueError(f"D[0]={self.D[0]} but the design matrices have {self.data.design.shape[1]} columns")
        self.random_state = random_state
        self.offset = float(np.mean(self.data.response))
        self.scale = float(np.std(self.data.response)) or 1.0
        self._fitted = None

    def train(self, max_iter: int = 1000, threshold: float = -1) -> "DMLMM":
        """Fit by variational inference (at most ``max_iter`` iterations)."""
        stats = self.data.stats(self.data.design, None, (self.data.response - self.offset) / self.scale)
        rng = np.random.default_rng(self.random_state)
        prior = DeepMixturePrior(self.D[0], tuple(self.K), tuple(self.D[1:]))
        config = VIConfig(max_iter=int(max_iter), tol=float(threshold) if threshold > 0 else 1e-5)
        b_hat = ridge_estimates(stats)
        noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
        params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, rng))
        self._fitted = run_vi_with_moves(stats, prior, params, config, rng)
        mix = self._fitted.prior.point_mixture(self._fitted.params.prior)
        s = self.scale
        self.w_gmm = mix.weights
        self.m_gmm = mix.means * s
        self.s_gmm = mix.covs * s**2
        self.error_var = float(self._fitted.params.noise.mean[()]) * s**2
        history = np.asarray(self._fitted.elbo_history, dtype=float)
        self.elbo_history = history
        # the research code's ``elbo``: the mean ELBO of the last 5 % of iterations (a float)
        self.elbo = float(history[-max(1, len(history) // 20):].mean())
        return self

    def predict_y(self, design_pred, y_obs, n: int = 1000, random_state=None):
        """Predictive distribution of new responses of one subject given its observed ones.

        Parameters
        ----------
        design_pred : (n_obs + n_new, D0) design rows of the observed times, then of the new times.
        y_obs : (n_obs,) observed responses (may be empty).
        n : int
            n > 0: return n draws of the new responses, shape (n, n_new);
            n == 0: return the predictive Gaussian mixture over the M paths in the order of
            ``w_gmm`` (weights (M,), the subject's posterior path probabilities, means (M, n_new),
            covariances (M, n_new, n_new)), residual noise included.
        """
        if self._fitted is None:
            raise NotFittedError("call train() before predict_y()")
        X = _array(design_pred)
        yo = _array(y_obs).reshape(-1)
        n_obs = len(yo)
        Xo, Xn = X[:n_obs], X[n_obs:]
        s = self.scale
        data = Longitudinal.from_arrays([yo], [Xo]) if n_obs else None
        mix = self._fitted.prior.point_mixture(self._fitted.params.prior)
        s2 = float(self._fitted.params.noise.mean[()])
        if data is None:
            D0 = X.shape[1]
            from .sufficient import SufficientStats

            stats = SufficientStats(np.zeros(1, int), np.zeros(1), np.zeros((1, D0)), np.zeros((1, D0, D0)),
                                    np.zeros((1, 0)), np.zeros((1, 0, 0)), np.zeros((1, D0, 0)))
        else:
            stats = data.stats(data.design, None, (yo - self.offset) / s)
        cm = condition(stats, mix, np.zeros(0), s2, every_path=(n == 0))  # n == 0: every path, in order
        means = cm.mean @ Xn.T * s + self.offset
        covs = (Xn @ cm.cov @ Xn.T + s2 * np.eye(len(Xn))) * s**2
        if n == 0:
            return cm.weight, means, covs
        rng = np.random.default_rng(random_state)
        comp = rng.choice(len(cm.weight), size=int(n), p=cm.weight / cm.weight.sum())
        chol = np.linalg.cholesky(covs)
        z = rng.standard_normal((int(n), len(Xn)))
        return means[comp] + np.einsum("sij,sj->si", chol[comp], z)
