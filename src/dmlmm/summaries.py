"""Class summaries of a fitted mixture, as users of R's lcmm know them (``summarytable``, ``postprob``).

The functions here are pure functions of a responsibility matrix (subjects x classes: each
subject's posterior class probabilities, rows summing to one), so they can be checked by
hand; :meth:`~dmlmm.models.VariationalLongitudinalModel.class_summary` and
:meth:`~dmlmm.models.VariationalLongitudinalModel.posterior_table` apply them to a fitted
model's clusters (``responsibilities_``) and first-layer groups (``group_proba_``), numbered
as in the outputs (``clusters.csv``: the classes that hold subjects 0, 1, ... in the model's
order, without gaps, any others after them).

What is computed
----------------
- **Assigned class**: each subject's most probable class.
- **Classification entropy** ``EN = -sum_i sum_k p_ik log p_ik`` (0 when every subject
  belongs to one class with certainty).
- **Relative entropy** ``1 - EN / (N log K)`` (lcmm's ``entropy`` in ``summarytable``): 1 means
  a clear-cut classification, 0 that every subject is spread evenly over the K classes; not
  defined (NaN) for a single class.
- **Information criteria** of a variational fit. The ELBO is a lower bound on the log
  marginal likelihood (the evidence) that BIC approximates, with the parameters integrated
  out, so its prior terms already penalise complexity and no count of parameters is added:
  ``-2 ELBO`` is on the scale of BIC (lower is better). The ELBO contains the entropy of the
  class assignments, ``ELBO = E_q[log p(y, z, theta)] + EN + H(q(theta))``, so
  ``ICL = -2 ELBO + 2 EN`` bounds ``-2 E_q[log p(y, z)]``, the classification-likelihood
  version of the evidence, as Biernacki, Celeux and Govaert's ICL (``BIC + 2 EN``) does for
  maximum likelihood fits: it also rewards well-separated classes (lower is better).
- **Posterior classification table** (lcmm's ``postprob``): for the subjects assigned to each
  class, their number and share, the mean posterior probability of every class, and the
  share whose probability of their assigned class exceeds 0.7, 0.8 and 0.9.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.special import xlogy

from .columns import one_decimal

__all__ = ["THRESHOLDS", "assigned_classes", "classification_entropy", "relative_entropy", "icl",
           "class_sizes", "posterior_table", "summary_row", "gap_free", "cluster_labels", "model_levels",
           "model_class_summary", "model_posterior_table", "LEVELS"]

THRESHOLDS = (0.7, 0.8, 0.9)
# the levels of a fitted model, named as the columns of clusters.csv
LEVELS = {"cluster": "clusters", "cluster_layer1": "first-layer groups"}


# ---------------------------------------------------------------------------- pure functions
def _matrix(resp) -> np.ndarray:
    p = np.asarray(resp.to_numpy() if isinstance(resp, pd.DataFrame) else resp, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"responsibilities must be a (subjects x classes) matrix, got shape {p.shape}")
    if p.size and (not np.isfinite(p).all() or (p < -1e-12).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6)):
        raise ValueError("responsibilities must be probabilities: non-negative, finite, each row summing to one")
    return np.clip(p, 0.0, 1.0)


def assigned_classes(resp, labels=None) -> np.ndarray:
    """Each subject's assigned class: ``labels`` if given, else its most probable class (N,)."""
    p = _matrix(resp)
    if labels is None:
        return p.argmax(axis=1)
    lab = np.asarray(labels, dtype=int)
    if lab.shape != (p.shape[0],) or (lab < 0).any() or (lab >= p.shape[1]).any():
        raise ValueError("labels must give one class number (0 to K-1) per subject")
    return lab


def classification_entropy(resp) -> float:
    """``EN = -sum_i sum_k p_ik log p_ik`` (natural logarithm; 0 log 0 = 0)."""
    p = _matrix(resp)
    return float(-xlogy(p, p).sum()) + 0.0  # no -0.0


def relative_entropy(resp) -> float:
    """``1 - EN / (N log K)``: 1 for a clear-cut classification; NaN for one class or no subject."""
    p = _matrix(resp)
    n, k = p.shape
    if n == 0 or k < 2:
        return float("nan")
    return float(1.0 - classification_entropy(p) / (n * np.log(k)))


def icl(elbo: float, resp) -> float:
    """The ICL-type criterion of a variational fit, ``-2 ELBO + 2 EN`` (lower is better)."""
    return float(-2.0 * elbo + 2.0 * classification_entropy(resp))


def class_sizes(resp, labels=None) -> pd.DataFrame:
    """One row per class: subjects assigned, their share (%), the expected (soft) count and share (%).

    Parameters
    ----------
    resp : (N, K) array or DataFrame of posterior class probabilities.
    labels : (N,) assigned classes (default: the most probable).
    """
    p = _matrix(resp)
    n, k = p.shape
    lab = assigned_classes(p, labels)
    counts = np.bincount(lab, minlength=k)
    soft = p.sum(axis=0)
    denom = max(n, 1)
    return pd.DataFrame({"subjects": counts, "%subjects": 100.0 * counts / denom,
                         "expected": soft, "%expected": 100.0 * soft / denom},
                        index=pd.RangeIndex(k, name="class"))


def posterior_table(resp, labels=None, thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """lcmm's ``postprob``: posterior probabilities by assigned class.

    One row per class holding at least one subject (index: the assigned class), with
    ``subjects`` and ``%subjects`` (their number and share of all subjects), ``mean_p<k>``
    for every class k (the mean posterior probability of class k among these subjects: the
    diagonal near 1 and the rest near 0 mean well-separated classes) and ``%p>t`` for each
    threshold t (the share, in %, of these subjects whose probability of their assigned class
    exceeds t).
    """
    p = _matrix(resp)
    n, k = p.shape
    lab = assigned_classes(p, labels)
    rows = []
    held = [c for c in range(k) if (lab == c).any()]
    for c in held:
        member = lab == c
        pc = p[member]
        row = {"subjects": int(member.sum()), "%subjects": 100.0 * member.sum() / n}
        row.update({f"mean_p{j}": float(pc[:, j].mean()) for j in range(k)})
        row.update({f"%p>{t:g}": 100.0 * float((pc[:, c] > t).mean()) for t in thresholds})
        rows.append(row)
    columns = ["subjects", "%subjects"] + [f"mean_p{j}" for j in range(k)] + [f"%p>{t:g}" for t in thresholds]
    return pd.DataFrame(rows, index=pd.Index(held, name="assigned"), columns=columns)


def summary_row(resp, elbo: float | None = None, labels=None, entropy_resp=None) -> dict:
    """One row of :func:`model_class_summary` for one level of classes (a dict).

    ``entropy_resp``: the responsibilities whose entropy the ELBO contains (default ``resp``),
    used by the ICL.
    """
    p = _matrix(resp)
    lab = assigned_classes(p, labels)
    sizes = np.bincount(lab, minlength=p.shape[1])
    elbo = float("nan") if elbo is None else float(elbo)
    row = {
        "components": int(p.shape[1]),
        "classes": int((sizes > 0).sum()),
        "elbo": elbo,
        "neg2_elbo": -2.0 * elbo,
        "icl": icl(elbo, p if entropy_resp is None else entropy_resp),
        "entropy": classification_entropy(p),
        "relative_entropy": relative_entropy(p),
    }
    n = max(len(lab), 1)
    for c in np.flatnonzero(sizes):
        row[f"n_class{c}"] = int(sizes[c])
        row[f"%class{c}"] = 100.0 * sizes[c] / n
    return row


def gap_free(used, total: int) -> np.ndarray:
    """Map of ``total`` model numbers: the ``used`` ones to 0, 1, ... in their order, the rest after them."""
    mapping = np.empty(int(total), dtype=int)
    used = np.unique(np.asarray(used, dtype=int))
    rest = np.setdiff1d(np.arange(int(total)), used)
    mapping[used] = np.arange(len(used))
    mapping[rest] = len(used) + np.arange(len(rest))
    return mapping


# ---------------------------------------------------------------------------- fitted models
def _n_layers(model) -> int:
    return len(tuple(np.atleast_1d(model.n_components_)))


def model_levels(model) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """The levels of a fitted mixture, numbered as in ``clusters.csv``.

    Returns a dict: "cluster" (and, for a model of more than one layer, "cluster_layer1") to
    (responsibilities with the columns reordered to the output numbers, assigned classes in
    those numbers).
    """
    out = {}
    pairs = [("cluster", model.responsibilities_, model.labels_)]
    if _n_layers(model) > 1:
        pairs.append(("cluster_layer1", model.group_proba_, model.groups_))
    for level, proba, labels in pairs:
        p = proba.to_numpy()
        mapping = gap_free(labels.to_numpy(), p.shape[1])
        reordered = np.empty_like(p)
        reordered[:, mapping] = p
        frame = pd.DataFrame(reordered, index=proba.index, columns=pd.RangeIndex(p.shape[1], name=level))
        out[level] = (frame, mapping[labels.to_numpy()])
    return out


def cluster_labels(model, level: str = "cluster") -> pd.Series:
    """Each training subject's assigned class at ``level``, numbered as in ``clusters.csv`` (Series by subject)."""
    levels = model_levels(model)
    if level not in levels:
        raise ValueError(f"level must be one of {list(levels)} for this model, got {level!r}")
    frame, lab = levels[level]
    return pd.Series(lab, index=frame.index, name=level)


def model_class_summary(model) -> pd.DataFrame:
    """See :meth:`dmlmm.models.VariationalLongitudinalModel.class_summary`."""
    levels = model_levels(model)
    paths = levels["cluster"][0]
    # the bound on log p(y) of the response as given: comparable across response transforms and with BIC
    elbo = getattr(model, "elbo_data_scale_", None)
    elbo = model.elbo_ if elbo is None or not np.isfinite(elbo) else elbo  # model files before it existed: elbo_
    rows = {level: summary_row(p, elbo, lab, entropy_resp=paths) for level, (p, lab) in levels.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "level"
    fixed = ["components", "classes", "elbo", "neg2_elbo", "icl", "entropy", "relative_entropy"]
    ks = sorted({int(c[len("n_class"):]) for c in table.columns if c.startswith("n_class")})
    table = table[fixed + [c for k in ks for c in (f"n_class{k}", f"%class{k}")]]
    return table.astype({c: "Int64" for c in table.columns if c.startswith("n_class")} | {"components": int,
                                                                                          "classes": int})


def model_posterior_table(model, level: str = "cluster", thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """See :meth:`dmlmm.models.VariationalLongitudinalModel.posterior_table`."""
    levels = model_levels(model)
    if level not in levels:
        raise ValueError(f"level must be one of {list(levels)} for this model, got {level!r}")
    p, lab = levels[level]
    table = posterior_table(p, lab, thresholds)
    table.index.name = f"assigned {level}"
    return table


# ---------------------------------------------------------------------------- display (report and command line)
def display_class_summary(summary: pd.DataFrame, long_names: bool = True) -> pd.DataFrame:
    """:func:`model_class_summary` as printed: one row per level, formatted cells, sizes in one column.

    ``long_names``: rows named "clusters (cluster)", ...; else by the column of clusters.csv only.
    """
    rows = {}
    for level, r in summary.iterrows():
        ks = sorted(int(c[len("n_class"):]) for c in summary.columns
                    if c.startswith("n_class") and pd.notna(r[c]))
        rows[f"{LEVELS.get(level, level)} ({level})" if long_names else level] = {
            "classes kept": str(int(r["components"])),
            "with subjects": str(int(r["classes"])),
            "ELBO": f"{r['elbo']:.2f}",
            "-2 ELBO": f"{r['neg2_elbo']:.2f}",
            "ICL": f"{r['icl']:.2f}",
            "entropy": f"{r['entropy']:.2f}",
            "relative entropy": "" if not np.isfinite(r["relative_entropy"]) else f"{r['relative_entropy']:.3f}",
            "subjects per class": ", ".join(f"{k}: {int(r[f'n_class{k}'])} ({one_decimal(r[f'%class{k}'])} %)"
                                            for k in ks),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "level"
    return out


def display_posterior(table: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """:func:`posterior_table` as printed: percentages, and the classes that hold no subject in one column."""
    held = list(table.index)
    probs = [c for c in table.columns if c.startswith("mean_p")]
    out = pd.DataFrame(index=pd.Index([str(k) for k in held], name=table.index.name))
    out["subjects"] = [f"{int(n)} ({one_decimal(p)} %)" for n, p in zip(table["subjects"], table["%subjects"])]
    others = [c for c in probs if int(c[len("mean_p"):]) not in held]
    for c in probs:
        if c not in others:
            out[f"mean P({c[len('mean_p'):]})"] = [f"{v:.3f}" for v in table[c]]
    if others:
        out["mean P(others)"] = [f"{v:.3f}" for v in table[others].sum(axis=1)]
    for t in thresholds:
        out[f"P > {t:g}"] = [f"{one_decimal(v)} %" for v in table[f"%p>{t:g}"]]
    return out


def class_summary_text(summary: pd.DataFrame, posterior: dict) -> str:
    """The class summary and posterior tables as the command line prints them."""
    levels = ", ".join(f"{lv}: the {LEVELS.get(lv, lv)}" for lv in summary.index)
    parts = [f"class summary (as lcmm's summarytable; {levels}; numbered as in clusters.csv):",
             _indent(display_class_summary(summary, long_names=False).to_string())]
    for level, table in posterior.items():
        parts.append(f"posterior probabilities by assigned {level} (as lcmm's postprob; "
                     "P > t: share of the class's subjects whose probability of it exceeds t):")
        parts.append(_indent(display_posterior(table).to_string()))
    return "\n".join(parts)


def _indent(text: str) -> str:
    return "\n".join("  " + line.rstrip() for line in text.splitlines())
