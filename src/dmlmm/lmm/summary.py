"""Text summary of a fitted LinearMixedModel, laid out like lme4's ``summary(lmer(...))``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import stats as sps

if TYPE_CHECKING:  # pragma: no cover
    from .model import LinearMixedModel

__all__ = ["format_summary", "format_table"]


def _num(x: float, digits: int = 5) -> str:
    """One number with ``digits`` significant digits (scientific outside [1e-4, 1e7))."""
    return _column([x], digits)[0]


def _column(values, digits: int = 5) -> list[str]:
    """Format a column of numbers with a common number of decimals (``digits`` significant for the largest)."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    big = float(np.max(np.abs(finite))) if finite.size else 0.0
    if big != 0 and (big >= 1e7 or big < 1e-4):
        return [f"{x:.{digits - 1}e}" if np.isfinite(x) else str(x) for x in v]
    dec = 0 if big == 0 else int(min(max(digits - 1 - np.floor(np.log10(big)), 0), 10))
    return [f"{x:.{dec}f}" if np.isfinite(x) else str(x) for x in v]


def format_table(header: list[str], rows: list[list[str]], left: int = 1, indent: str = " ") -> str:
    """Align a table: the first ``left`` columns left-aligned, the rest right-aligned."""
    cols = list(zip(*([header] + rows))) if rows else [[h] for h in header]
    widths = [max(len(c) for c in col) for col in cols]
    lines = []
    for r in [header] + rows:
        cells = [c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


def _random_block(model: "LinearMixedModel") -> list[str]:
    cov = model.cov_re_.to_numpy()
    names = list(model.cov_re_.index)
    info = model.design_info_
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    rows: list[list[str]] = []
    max_corr = 0
    if info["structure"] == "scaled_identity":
        rows.append(["u", f"{len(names)} columns of Z (tau^2 I)", _num(cov[0, 0]), _num(sd[0])])
    else:
        start = 0
        for g, block in info["random_blocks"]:
            idx = [names.index(b) for b in block]
            for k, j in enumerate(idx):
                corr = []
                for i in idx[:k]:
                    den = sd[i] * sd[j]
                    corr.append(f"{cov[i, j] / den:.3f}" if den > 0 else "NaN")
                max_corr = max(max_corr, len(corr))
                rows.append([g if k == 0 else "", names[j], _num(cov[j, j]), _num(sd[j])] + corr)
            start += len(idx)
    rows.append(["Residual", "", _num(model.sigma2_), _num(np.sqrt(model.sigma2_))])
    var_col = _column([float(r[2]) for r in rows])
    sd_col = _column([float(r[3]) for r in rows])
    for r, v, d in zip(rows, var_col, sd_col):
        r[2], r[3] = v, d
    header = ["Groups", "Name", "Variance", "Std.Dev."] + (["Corr"] + [""] * (max_corr - 1) if max_corr else [])
    width = len(header)
    rows = [r + [""] * (width - len(r)) for r in rows]
    return [format_table(header, rows, left=2)]


def _scale_lines(model: "LinearMixedModel") -> list[str]:
    """The modelled scale, when the response was transformed or two scales were weighed."""
    text = model._scale_text()
    return [f"Response modelled as {text}; estimates below are on that scale, predictions on the data's."] if text else []


def format_summary(model: "LinearMixedModel", interval: float = 0.95) -> str:
    """lme4-like summary text of a fitted model.

    Parameters
    ----------
    model : LinearMixedModel (fitted)
    interval : float
        Coverage of the Wald confidence intervals of the fixed effects.
    """
    reml = model.method_ == "reml"
    vb = model.method_ == "vb"
    info = model.design_info_
    out: list[str] = []
    how = "variational Bayes" if vb else ("REML" if reml else "maximum likelihood")
    out.append(f"Linear mixed model fit by {how}  ['LinearMixedModel']")
    if model.formula is not None:
        out.append(f"Formula: {model.formula}")
    elif info.get("basis"):
        cov = [c for c in info["fixed_names"] if c not in info["random_names"]]
        out.append(f"Longitudinal: y = B(t) w{' + covariates ' + str(cov) if cov else ''} + B(t) b_i + e, "
                   f"b_i ~ N(0, Sigma) per '{info['group_name']}'")
        out.append(f"Basis: {info['basis']}")
    elif info["grouped"]:
        out.append(f"Design: {len(info['fixed_names'])} fixed effects, {len(info['random_names'])} random "
                   f"effects per '{info['group_name']}' (unstructured covariance)")
    else:
        out.append(f"Design: y = X w + Z u, u ~ N(0, tau^2 I) with {len(info['random_names'])} columns in Z")
    out.extend(_scale_lines(model))
    out.append("")
    df_resid = model.n_obs_ - len(info["fixed_names"])
    transform = getattr(model, "response_transform_", None)
    if vb:
        out.append(f"ELBO: {model.elbo_:.4f}   ML log-likelihood at the posterior means: {model.loglik_:.4f}")
        out.append("Estimates are posterior means; intervals are equal-tailed credible intervals.")
    elif reml:
        out.append(f"REML criterion at convergence: {model.deviance_:.4f}")
        out.append(f"REML log-likelihood{f' of {transform}(y)' if transform else ''}: {model.loglik_:.4f}")
        out.append(format_table(["AIC*", "BIC*", "logLik(REML)", "df.resid"],
                                [[f"{model.aic_:.2f}", f"{model.bic_:.2f}", f"{model.loglik_:.3f}", str(df_resid)]],
                                left=0))
        out.append(" * from the REML log-likelihood, as lme4: compare only models with the same fixed effects")
    else:
        out.append(format_table(["AIC", "BIC", "logLik", "deviance", "df.resid"],
                                [[f"{model.aic_:.2f}", f"{model.bic_:.2f}", f"{model.loglik_:.3f}",
                                  f"{model.deviance_:.2f}", str(df_resid)]], left=0))
    if transform and not reml and getattr(model, "loglik_data_scale_", None) is not None:
        out.append(f" (logLik of {transform}(y), the scale modelled; of y as given: {model.loglik_data_scale_:.3f})")
    out.append("")
    out.append("Random effects:")
    out.extend(_random_block(model))
    if info["grouped"]:
        out.append(f"Number of obs: {model.n_obs_}, groups:  {info['group_name']}, {model.n_groups_}")
    else:
        out.append(f"Number of obs: {model.n_obs_}")
    out.append("")
    names = list(info["fixed_names"])  # all of w (the longitudinal form's mean-curve coefficients too)
    if names:
        z = sps.norm.ppf(0.5 + interval / 2)
        lo_lab, hi_lab = f"{50 * (1 - interval):.3g}%", f"{100 - 50 * (1 - interval):.3g}%"
        est = np.asarray(model.estimate_.beta, dtype=float)
        se = np.sqrt(np.clip(np.diag(model.estimate_.cov_beta), 0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(se > 0, est / np.where(se > 0, se, 1.0), np.nan)
        cols = [_column(est, 6), _column(se, 5), [f"{x:.3f}" for x in t],
                _column(est - z * se, 6), _column(est + z * se, 6)]
        rows = [[nm] + [c[k] for c in cols] for k, nm in enumerate(names)]
        if vb:
            rows = [[nm, c0, c1, c3, c4] for nm, c0, c1, _, c3, c4 in rows]
            out.append(f"Fixed effects (posterior mean, SD, {100 * interval:g}% credible interval):")
            out.append(format_table(["", "Mean", "Post. SD", lo_lab, hi_lab], rows, left=1))
        else:
            out.append(f"Fixed effects (Wald {100 * interval:g}% intervals):")
            out.append(format_table(["", "Estimate", "Std. Error", "t value", lo_lab, hi_lab], rows, left=1))
    else:
        out.append("No fixed effects.")
    notes = []
    if model.singular_:
        notes.append("boundary (singular) fit: a variance is (nearly) zero or the correlations are degenerate")
    if not model.converged_:
        notes.append("the optimiser did not converge: results may be unreliable")
    if vb:
        notes.append(f"coordinate-ascent variational inference, {model.n_iter_} iterations")
    else:
        notes.append(f"optimiser: L-BFGS-B with analytic gradient, {model.n_iter_} iterations")
    out.append("")
    out.extend(notes)
    return "\n".join(out)
