"""Accuracy harness of issue 7 (deliverable 4): DMLMM, MLMM and Gaussian LMM on simulations and real data.

Run by hand (tens of minutes on 2 cores; not a test):

    python benchmarks/accuracy.py --out-dir benchmarks/results/accuracy --out-md docs/accuracy.md
    python benchmarks/accuracy.py --only real --out-dir DIR --append     # add or redo a part
    python benchmarks/accuracy.py --from-jsonl DIR/accuracy.jsonl --out-md docs/accuracy.md  # render only

Three parts (``--only`` selects some; each can run separately and be combined with ``--append``
or rendered later from the saved rows with ``--from-jsonl``):

``sim``
    DGP 1, 2, 3 of ``dmlmm.simulate`` (``--replicates`` R, seeds 0..R-1) at ``--sizes`` basis
    functions (``SplineBasis(n_basis=nb, lower=lo, upper=hi)`` over the DGP's time range,
    otherwise library defaults); 20 % of every subject's observations held out
    (``split_heldout(sim.data, 0.2, random_state=r)``). Models: ``DeepMixtureLMM((10, 5), (4, 1))``,
    ``MixtureLMM(10)`` and the Gaussian LMM ``MixtureLMM(1)``, ``random_state=r``. Metrics: held-out
    log score per subject (``score(held, condition_on=train)``) and per held-out observation,
    mean log RMSE of the true curve (``dmlmm.metrics.log_rmse``), coverage of the 95 % bands of the
    true curve (``dmlmm.metrics.coverage``; bands of a new observation for DGP 3, whose truth is
    noisy), adjusted Rand index (DGP 1 and 3), fit seconds, clusters kept, sigma2_.
``research``
    The research code's own seed-0 replicates of DGP 1-3 fitted on all data with
    ``DeepMixtureLMM((10, 5), (4, 1), random_state=0)`` and the library's default basis (only
    lower/upper set to the DGP's time range): mean log RMSE and in-sample log score next to the
    research code's numbers quoted in issue 7.
``real``
    Real longitudinal data sets (``benchmarks/accuracy_data.py``); each subject's last visit plus
    20 % of its other visits held out. Basis: ``SplineBasis(lower=, upper=)`` = the study window,
    otherwise library defaults. Models with default settings (``DeepMixtureLMM()``,
    ``MixtureLMM(10)``, ``MixtureLMM(1)``, ``random_state=0``). Metrics: held-out log score per
    observation, coverage of the 95 % observation bands at the held-out visits (overall, at the
    last visits, at the others), number of subjects whose predicted mean curve within their own
    follow-up (50 points over [first visit, last visit]) leaves [min y - range/2, max y + range/2]
    (y: all training responses), fit seconds. Each model is also fitted to all of the data set, as a
    user would fit it (``--no-full-fit`` skips this): implausible subject curves and the range of the
    cluster mean curves (issue 7's Blackmore report and target are about such a fit). The held-out
    visits other than the last are drawn with seed 0; ``--split-seeds 0 1 2 3 4`` repeats the part on
    more splits (the all-data fits once) and the page adds a section comparing them split by split.

``--noise cluster`` fits every model with one residual variance per first-layer cluster
(``noise="cluster"``) instead of the shared one; ``--noise auto`` fits both and keeps the one with
the higher ELBO (the row's ``noise`` says which).

Every fit is guarded: an exception is written into its row (``error``) and the run goes on.
Warnings are silenced and counted per fit (``warnings`` column). Rows are printed as JSON lines
and, with ``--out-dir``, appended to ``<out-dir>/accuracy.jsonl`` together with one ``meta`` row
per run (machine, date, command, dmlmm version and commit, elapsed seconds per part); the page
(``--out-md``, else printed) is rendered from all rows of that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import scipy
import pandas as pd

import dmlmm
from dmlmm import DeepMixtureLMM, MixtureLMM, SplineBasis
from dmlmm.metrics import adjusted_rand_index, coverage, log_rmse
from dmlmm.simulate import DGPS, split_heldout

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_data  # noqa: E402  (the helper module next to this file)

RESEARCH = {  # research code on its seed-0 replicates (issue 7): mean log RMSE, in-sample log score
    "dgp1": (-1.514, -7.151),
    "dgp2": (-1.639, -3.688),
    "dgp3": (-1.080, -12.982),
}
MODEL_KEYS = ("dmlmm", "mlmm", "lmm")
LABELS = {"dmlmm": "DMLMM", "mlmm": "MLMM", "lmm": "Gaussian LMM"}
PARTS = ("sim", "research", "real")
# settings of every model fitted (--noise, --noise-df, --tol, --max-iter)
COMMON: dict = {"noise": "shared", "noise_df": None}


# --------------------------------------------------------------------------- models


def sim_model(key: str, basis: SplineBasis, seed: int):
    if key == "dmlmm":
        return DeepMixtureLMM((10, 5), (4, 1), basis=basis, random_state=seed, **COMMON)
    if key == "mlmm":
        return MixtureLMM(10, basis=basis, random_state=seed, **COMMON)
    return MixtureLMM(1, basis=basis, random_state=seed, **COMMON)


def real_model(key: str, basis: SplineBasis):
    if key == "dmlmm":
        return DeepMixtureLMM(basis=basis, random_state=0, **COMMON)
    if key == "mlmm":
        return MixtureLMM(10, basis=basis, random_state=0, **COMMON)
    return MixtureLMM(1, basis=basis, random_state=0, **COMMON)


def model_spec(model) -> str:
    """The model's structural settings, e.g. 'K=(10, 5) D=(4, 1)'."""
    k = getattr(model, "n_components", None)
    d = getattr(model, "latent_dims", None)
    noise = getattr(model, "noise", "shared")
    df = getattr(model, "noise_df", None)
    tol = getattr(model, "tol", 1e-5)
    return (f"K={k}" + (f" D={d}" if d is not None else "") + (f" noise={noise}" if noise != "shared" else "")
            + (f" noise_df={df}" if df is not None else "") + (f" tol={tol:g}" if tol != 1e-5 else ""))


def fitted_facts(model) -> dict:
    """What the fit ended with: clusters kept, sigma2_, iterations, convergence, basis size."""
    out: dict = {}
    kept = getattr(model, "n_components_", None)
    if kept is not None:
        out["components_kept"] = [int(k) for k in kept]
    clusters = getattr(model, "clusters_", None)
    if clusters is not None and "n_subjects" in clusters:
        out["clusters"] = int((clusters["n_subjects"] >= 0.5).sum())
    for attr, cast in (("sigma2_", float), ("n_iter_", int), ("converged_", bool), ("elbo_", float)):
        if hasattr(model, attr):
            out[attr.rstrip("_")] = cast(getattr(model, attr))
    if hasattr(model, "noise_"):
        out["noise"] = model.noise_
    if getattr(model, "noise_df_", None) is not None:  # learned degrees of freedom of the subjects' scales
        out["noise_df"] = float(model.noise_df_)
    if hasattr(model, "response_transform_"):  # the scale fitted ("auto" chooses it)
        out["scale"] = model.response_transform_ or "none"
    cov = getattr(getattr(model, "prior_", None), "covariance", None)
    if cov is not None:  # the mixtures' covariance kept ("auto" chooses it)
        out["covariance"] = cov
    order = getattr(getattr(model, "prior_", None), "loading_order", None)
    if order is not None:  # the deep mixture's loading order kept ("auto" chooses it)
        out["loading_order"] = float(order)
    block = getattr(getattr(model, "prior_", None), "polynomial_covariance", None)
    if block is not None:  # the deep mixture's polynomial block kept ("auto" chooses it)
        out["polynomial_covariance"] = block
    by = getattr(model, "sigma2_by_cluster_", None)
    if by is not None and getattr(model, "noise", "shared") != "shared":
        out["sigma2_by_cluster"] = [float(v) for v in by]
    try:
        out["n_basis"] = int(model.design_.basis.n_basis)
    except AttributeError:
        pass
    return out


class Guard:
    """Records warnings (silenced, counted by category) and an exception, if any, into ``row``."""

    def __init__(self, row: dict, prefix: str = ""):
        self.row = row
        self.prefix = prefix
        self.counts: Counter = Counter()

    def __enter__(self):
        self._cw = warnings.catch_warnings(record=True)
        self._log = self._cw.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, etype, exc, tb):
        self._cw.__exit__(None, None, None)
        self.counts.update(w.category.__name__ for w in self._log)
        self.row[self.prefix + "warnings"] = dict(sorted(self.counts.items()))
        if exc is not None and isinstance(exc, Exception):
            self.row[self.prefix + "error"] = f"{etype.__name__}: {exc}"[:500]
            self.row[self.prefix + "traceback"] = "".join(traceback.format_exception(etype, exc, tb))[-2000:]
            return True  # swallow: the row records it
        return False


ROWS: list[dict] = []  # every row emitted by this run


def emit(row: dict, sink) -> None:
    line = json.dumps(row, default=_json_default)
    ROWS.append(json.loads(line))
    print(line, flush=True)
    if sink is not None:
        sink.write(line + "\n")
        sink.flush()


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


# --------------------------------------------------------------------------- simulations


def fit_and_score(model, train: pd.DataFrame, held: pd.DataFrame, row: dict) -> None:
    """Fit on ``train`` (timed) and score ``held`` given it: the row's spec, seconds, fitted facts and
    held-out log scores per subject and per observation."""
    row["spec"] = model_spec(model)
    t0 = time.perf_counter()
    model.fit(train, "subject", "time", "y")
    row["seconds"] = time.perf_counter() - t0
    row.update(fitted_facts(model))
    ss = model.score_samples(held, condition_on=train)
    row["heldout_per_subject"] = _finite(ss.mean())
    row["heldout_per_obs"] = _finite(ss.sum() / len(held))


def run_sim(args, sink) -> None:
    for dgp in args.dgps:
        for r in range(args.replicates):
            sim = DGPS[dgp](random_state=r)
            train, held = split_heldout(sim.data, 0.2, random_state=r)
            lo, hi = sim.time_range
            grid = np.unique(sim.truth["time"].to_numpy())
            kind = "observation" if dgp == "dgp3" else "curve"
            for nb in args.sizes:
                for key in args.models:
                    row = {"part": "sim", "dgp": dgp, "replicate": r, "n_basis": nb, "model": key,
                           "n_subjects": int(sim.data["subject"].nunique()), "n_train": len(train),
                           "n_held": len(held), "band_kind": kind}
                    with Guard(row):
                        model = sim_model(key, SplineBasis(n_basis=nb, lower=lo, upper=hi), r)
                        fit_and_score(model, train, held, row)
                        pred = model.predict_trajectory(train, times=grid, kind=kind)
                        lr = log_rmse(sim.truth, pred)
                        row["log_rmse_mean"] = _finite(lr.mean())
                        row["log_rmse_median"] = _finite(lr.median())
                        row["coverage95"] = _finite(coverage(sim.truth, pred))
                        if sim.labels is not None:
                            row["ari"] = _finite(adjusted_rand_index(sim.labels.loc[model.labels_.index], model.labels_))
                    emit(row, sink)


# --------------------------------------------------------------------------- research-code comparison


def run_research(args, sink) -> None:
    for dgp in args.dgps:
        sim = DGPS[dgp](random_state=0)
        lo, hi = sim.time_range
        grid = np.unique(sim.truth["time"].to_numpy())
        kind = "observation" if dgp == "dgp3" else "curve"
        ref_rmse, ref_score = RESEARCH[dgp]
        row = {"part": "research", "dgp": dgp, "replicate": 0, "model": "dmlmm",
               "research_log_rmse_mean": ref_rmse, "research_log_score": ref_score}
        with Guard(row):
            model = DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(lower=lo, upper=hi), random_state=0, **COMMON)
            row["spec"] = model_spec(model)
            t0 = time.perf_counter()
            model.fit(sim.data, "subject", "time", "y")
            row["seconds"] = time.perf_counter() - t0
            row.update(fitted_facts(model))
            pred = model.predict_trajectory(sim.data, times=grid, kind=kind)
            lr = log_rmse(sim.truth, pred)
            row["log_rmse_mean"] = _finite(lr.mean())
            row["log_rmse_median"] = _finite(lr.median())
            row["log_score"] = _finite(model.score(sim.data))
            row["coverage95"] = _finite(coverage(sim.truth, pred))
            if sim.labels is not None:
                row["ari"] = _finite(adjusted_rand_index(sim.labels.loc[model.labels_.index], model.labels_))
        emit(row, sink)


# --------------------------------------------------------------------------- real data


#: Central probabilities of the narrower observation bands also checked on held-out visits: with the
#: 95 % band they show whether misses come from bands too narrow throughout (every level under) or
#: from tails heavier than the model's (50 % and 80 % hold, 95 % does not).
INNER_LEVELS = (0.5, 0.8)


def real_predictions(model, train: pd.DataFrame, held: pd.DataFrame, n_grid: int = 50):
    """Held-out rows with their 95 % observation band, and per subject the extremes of its mean curve.

    Per subject: one ``predict_trajectory(kind="observation")`` at its held-out times and at
    ``n_grid`` points over its follow-up [first visit, last visit] (training and held-out visits),
    and one per level of :data:`INNER_LEVELS` at its held-out times (columns ``lower50``,
    ``upper50``, ...).
    """
    everything = pd.concat([train, held])
    span = everything.groupby("subject")["time"].agg(["min", "max"])
    held_times = held.groupby("subject")["time"].apply(lambda s: np.unique(s.to_numpy()))
    bands, extremes = [], []
    for subject, rows in train.groupby("subject", sort=False):
        a, b = span.loc[subject, "min"], span.loc[subject, "max"]
        grid = np.linspace(a, b, n_grid) if b > a else np.array([a])
        ht = held_times.get(subject, np.zeros(0))
        times = np.r_[ht, grid]
        pred = model.predict_trajectory(rows, times=times, kind="observation")
        pred = pred[pred["subject"].astype(str) == str(subject)]
        g = pred.iloc[len(ht):]
        extremes.append((subject, float(g["mean"].min()), float(g["mean"].max())))
        if len(ht):
            b = pred.iloc[: len(ht)].assign(subject=subject).reset_index(drop=True)
            for level in INNER_LEVELS:
                inner = model.predict_trajectory(rows, times=ht, kind="observation", interval=level)
                inner = inner[inner["subject"].astype(str) == str(subject)].reset_index(drop=True)
                b[f"lower{round(100 * level)}"] = inner["lower"].to_numpy()
                b[f"upper{round(100 * level)}"] = inner["upper"].to_numpy()
            bands.append(b)
    inner_cols = [f"{side}{round(100 * level)}" for level in INNER_LEVELS for side in ("lower", "upper")]
    if bands:
        band = pd.concat(bands, ignore_index=True)
        joined = held.merge(band[["subject", "time", "mean", "lower", "upper", *inner_cols]], on=["subject", "time"],
                            how="left", validate="many_to_one")
    else:
        joined = held.assign(mean=np.nan, lower=np.nan, upper=np.nan, **{c: np.nan for c in inner_cols})
    ext = pd.DataFrame(extremes, columns=["subject", "curve_min", "curve_max"]).set_index("subject")
    return joined, ext


def run_real(args, sink) -> None:
    for seed in args.split_seeds:
        for name in args.datasets:
            run_real_split(args, sink, name, seed)


def run_real_split(args, sink, name: str, seed: int) -> None:
    """One data set, one held-out split (``seed`` draws the held-out visits other than the last)."""
    base = {"part": "real", "dataset": name, "split_seed": seed}
    try:
        ds = accuracy_data.load(name)
        train, held = accuracy_data.heldout_visits(ds.data, 0.2, random_state=seed)
    except Exception as exc:  # noqa: BLE001  (a missing data set is a row, not a crash)
        for key in args.models:
            emit({**base, "model": key, "error": f"loading: {type(exc).__name__}: {exc}"}, sink)
        return
    lo, hi = ds.window
    bounds = _plausible(train["y"].to_numpy())
    last = held["subject"].map(ds.data.groupby("subject")["time"].max())
    is_last = (held["time"] == last).to_numpy()
    beyond = held["time"].to_numpy() > train["time"].max()
    info = {
        "kind": ds.kind, "source": ds.source, "columns": ds.columns, "transform": ds.transform,
        "n_subjects": ds.n_subjects, "n_obs": ds.n_obs, "n_train": len(train), "n_held": len(held),
        "n_held_last": int(is_last.sum()), "n_held_beyond_train": int(beyond.sum()),
        "n_distinct_times": int(ds.data["time"].nunique()), "window": [lo, hi],
        "visits_median": float(ds.data.groupby("subject").size().median()),
        "plausible_bounds": list(bounds), "plausible_bounds_all": list(_plausible(ds.data["y"].to_numpy())),
    }
    for protocol in args.real_basis:
        run_real_protocol(args, sink, protocol, {**base, **info}, ds, train, held, is_last)


def run_real_protocol(args, sink, protocol: str, base: dict, ds, train, held, is_last) -> None:
    """All models on one split; ``protocol`` "window": the basis over the study window (the issue's
    protocol), "data": the library's default basis over the training times, the held-out visits beyond
    them forecast by the curves' continuation (linear, plus the smoothness prior's increment)."""
    lo, hi = ds.window
    bounds = base["plausible_bounds"]
    if protocol == "data":
        base = {**base, "dataset": f"{base['dataset']} / data range"}
    for key in args.models:
        row = {**base, "model": key, "basis_range": protocol}
        with Guard(row):
            model = real_model(key, SplineBasis(lower=lo, upper=hi) if protocol == "window" else SplineBasis())
            fit_and_score(model, train, held, row)
            joined, ext = real_predictions(model, train, held)
            inside = ((joined["y"] >= joined["lower"]) & (joined["y"] <= joined["upper"])).to_numpy()
            ok = joined["lower"].notna().to_numpy()
            row["n_band_missing"] = int((~ok).sum())
            row["coverage95"] = _finite(inside[ok].mean()) if ok.any() else None
            row["coverage95_last"] = _finite(inside[ok & is_last].mean()) if (ok & is_last).any() else None
            row["coverage95_other"] = _finite(inside[ok & ~is_last].mean()) if (ok & ~is_last).any() else None
            # which side the forecasts miss on: a one-sided excess is a bias (e.g. informative dropout), not a
            # band too narrow
            above, below = (joined["y"] > joined["upper"]).to_numpy(), (joined["y"] < joined["lower"]).to_numpy()
            if (ok & is_last).any():
                row["above95_last"] = _finite(above[ok & is_last].mean())
                row["below95_last"] = _finite(below[ok & is_last].mean())
            for level in INNER_LEVELS:
                pc = round(100 * level)
                hit = ((joined["y"] >= joined[f"lower{pc}"]) & (joined["y"] <= joined[f"upper{pc}"])).to_numpy()
                row[f"coverage{pc}"] = _finite(hit[ok].mean()) if ok.any() else None
            bad = (ext["curve_min"] < bounds[0]) | (ext["curve_max"] > bounds[1])
            row["implausible_subjects"] = int(bad.sum())
            # the same against the range of all responses, held-out ones included (information, not the target)
            wide = base["plausible_bounds_all"]
            row["implausible_subjects_all_range"] = int(((ext["curve_min"] < wide[0]) | (ext["curve_max"] > wide[1])).sum())
            row["n_curve_subjects"] = int(len(ext))
            row["curve_min"] = float(ext["curve_min"].min())
            row["curve_max"] = float(ext["curve_max"].max())
        # all data (the window is the data's range): the same fit for every split, so once
        if args.full_fit and protocol == "window" and base["split_seed"] == args.split_seeds[0]:
            with Guard(row, prefix="full_"):
                full_fit(row, key, ds)
        emit(row, sink)


def _plausible(y: np.ndarray) -> tuple[float, float]:
    """[min y - range/2, max y + range/2]: where a mean curve within its follow-up is plausible."""
    yrange = float(y.max() - y.min())
    return float(y.min()) - yrange / 2, float(y.max()) + yrange / 2


def full_fit(row: dict, key: str, ds) -> None:
    """The same model fitted to all of the data set (no hold-out): are its curves plausible?

    As a user would fit it (the issue's Blackmore report): subject mean curves within their own
    follow-up and the cluster mean curves over the study window, against
    [min y - range/2, max y + range/2] of all responses.
    """
    lo, hi = ds.window
    bounds = _plausible(ds.data["y"].to_numpy())
    model = real_model(key, SplineBasis(lower=lo, upper=hi))
    t0 = time.perf_counter()
    model.fit(ds.data, "subject", "time", "y")
    row["full_seconds"] = time.perf_counter() - t0
    facts = fitted_facts(model)
    row["full_clusters"] = facts.get("clusters")
    row["full_sigma2"] = facts.get("sigma2")  # on the scale of full_scale (the split's may differ)
    row["full_scale"] = facts.get("scale")
    if "covariance" in facts:
        row["full_covariance"] = facts["covariance"]
    row["full_plausible_bounds"] = list(bounds)
    _, ext = real_predictions(model, ds.data, ds.data.iloc[:0])
    bad = (ext["curve_min"] < bounds[0]) | (ext["curve_max"] > bounds[1])
    row["full_implausible_subjects"] = int(bad.sum())
    row["full_curve_min"] = float(ext["curve_min"].min())
    row["full_curve_max"] = float(ext["curve_max"].max())
    cm = model.cluster_means_
    if "n_subjects" in getattr(model, "clusters_", pd.DataFrame()):
        keep = model.clusters_.index[model.clusters_["n_subjects"] >= 0.5]
        cm = cm[cm["cluster"].isin(keep)]
    row["full_cluster_mean_min"] = float(cm["mean"].min())
    row["full_cluster_mean_max"] = float(cm["mean"].max())


# --------------------------------------------------------------------------- the page


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    ax = abs(float(x))
    if ax >= 1e4:
        return f"{float(x):.3g}"
    return f"{float(x):.{digits}f}"


def _int(x) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return str(int(round(float(x))))


def _ms(values: pd.Series, digits: int = 3) -> str:
    """Mean (sd) over replicates; '–' when nothing is finite; sd left out for one value."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    v = v[np.isfinite(v)]
    if v.empty:
        return "–"
    if len(v) == 1:
        return _fmt(float(v.iloc[0]), digits)
    return f"{_fmt(float(v.mean()), digits)} ({_fmt(float(v.std(ddof=1)), digits)})"


def _warn_text(ws) -> str:
    total: Counter = Counter()
    for w in ws:
        if isinstance(w, dict):
            total.update(w)
    if not total:
        return ""
    short = {"ConvergenceWarning": "conv", "IdentifiabilityWarning": "ident", "ExtrapolationWarning": "extrap",
             "EmptyComponentWarning": "empty", "RuntimeWarning": "runtime"}
    return ", ".join(f"{short.get(k, k)} {v}" for k, v in sorted(total.items()))


def _errors(g: pd.DataFrame) -> str:
    if "error" not in g:
        return ""
    errs = g["error"].dropna()
    if errs.empty:
        return ""
    first = str(errs.iloc[0]).replace("|", "/").replace("\n", " ")
    return f"{len(errs)} failed: {first[:160]}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _model_order(keys) -> list[str]:
    return [k for k in MODEL_KEYS if k in set(keys)] + sorted(set(keys) - set(MODEL_KEYS))


def render_sim(df: pd.DataFrame) -> list[str]:
    lines = ["## Simulations", "",
             "Held-out log scores: higher is better; per subject = sum over its held-out observations, averaged over",
             "subjects; per observation = total over all held-out observations / their number. Log RMSE of the",
             "predictive mean against the true curve on its dense grid (lower is better). Coverage: share of the",
             "true curve inside the 95 % band (DGP 3: the truth is noisy, so the band of a new observation). Mean",
             "(sd) over replicates.", ""]
    for dgp, sub in df.groupby("dgp", sort=True):
        reps = sorted(sub["replicate"].dropna().unique().tolist())
        lines += [f"### {dgp.upper().replace('DGP', 'DGP ')} ({len(reps)} replicate{'s' if len(reps) != 1 else ''}, "
                  f"{int(sub['n_subjects'].max())} subjects)", ""]
        models = _model_order(sub["model"])
        sizes = sorted(sub["n_basis"].unique())
        # headline: held-out log score per subject, sizes x models
        rows = []
        for nb in sizes:
            r = [str(int(nb))]
            for m in models:
                r.append(_ms(sub[(sub.n_basis == nb) & (sub.model == m)].get("heldout_per_subject", pd.Series(dtype=float))))
            rows.append(r)
        lines += ["Held-out log score per subject:", ""]
        lines += _table(["basis functions"] + [LABELS.get(m, m) for m in models], rows) + [""]
        metrics = [("heldout_per_obs", "log score / held-out obs"), ("log_rmse_mean", "mean log RMSE"),
                   ("coverage95", "coverage 95 %"), ("ari", "ARI"), ("clusters", "clusters"),
                   ("sigma2", "sigma2"), ("seconds", "fit s")]
        metrics = [(c, t) for c, t in metrics if c in sub and pd.to_numeric(sub[c], errors="coerce").notna().any()]
        rows = []
        for nb in sizes:
            for m in models:
                g = sub[(sub.n_basis == nb) & (sub.model == m)]
                if g.empty:
                    continue
                rows.append([str(int(nb)), LABELS.get(m, m)]
                            + [_ms(g[c], 1 if c in ("clusters", "seconds") else 3) for c, _ in metrics]
                            + [_warn_text(g.get("warnings", [])), _errors(g)])
        lines += _table(["basis", "model"] + [t for _, t in metrics] + ["warnings (all fits)", "errors"], rows) + [""]
        lines += _sim_targets(sub, sizes) + [""]
    return lines


def _sim_targets(sub: pd.DataFrame, sizes) -> list[str]:
    """Issue 7's simulation targets, checked on the mean held-out log score per subject."""
    if "heldout_per_subject" not in sub:
        return []
    mean = sub.groupby(["model", "n_basis"])["heldout_per_subject"].mean()
    if "dmlmm" not in mean.index.get_level_values(0):
        return []
    d = mean.loc["dmlmm"].dropna()
    if d.empty:
        return []
    best = d.max()
    near = [int(nb) for nb in d.index if nb >= 20 and best - d.loc[nb] <= 0.05]
    far = [int(nb) for nb in d.index if nb >= 20 and best - d.loc[nb] > 0.05]
    beats = []
    for nb in sizes:
        others = [mean.get((m, nb)) for m in ("mlmm", "lmm") if (m, nb) in mean.index]
        others = [o for o in others if o is not None and np.isfinite(o)]
        if nb in d.index and others:
            beats.append(f"{int(nb)}: {'yes' if d.loc[nb] >= max(others) else 'no'}")
    out = [f"Targets (held-out log score per subject): DMLMM best {best:.3f} at {int(d.idxmax())} functions; "
           f"sizes >= 20 within 0.05 of it: {near or 'none'}; not: {far or 'none'}. "
           f"DMLMM at least the MLMM and the LMM: {', '.join(beats) or '–'}."]
    if "coverage95" in sub:
        cov = sub[sub.model == "dmlmm"].groupby("n_basis")["coverage95"].mean()
        out.append(f"DMLMM coverage of the 95 % bands (target 0.92-0.98): "
                   + ", ".join(f"{int(nb)}: {c:.3f}" for nb, c in cov.items() if np.isfinite(c)) + ".")
    return out


def render_research(df: pd.DataFrame) -> list[str]:
    lines = ["## Against the research code (seed-0 replicates, all data, default basis)", "",
             "`DeepMixtureLMM((10, 5), (4, 1), random_state=0)` with the library's default basis (only",
             "`lower`/`upper` set to the DGP's time range), fitted to all observations; research code's numbers",
             "from issue 7 (K=(10,5), D=(10,4,1), 10 functions in its own layout). Target: lower log RMSE and",
             "higher log score than the research code.", ""]
    rows = []
    for _, r in df.sort_values("dgp").iterrows():
        lr, ls = r.get("log_rmse_mean"), r.get("log_score")
        rl, rs = r["research_log_rmse_mean"], r["research_log_score"]
        ok_r = "yes" if lr is not None and np.isfinite(lr) and lr < rl else "no"
        ok_s = "yes" if ls is not None and np.isfinite(ls) and ls > rs else "no"
        rows.append([str(r["dgp"]).upper().replace("DGP", "DGP "), _fmt(lr), _fmt(rl), ok_r, _fmt(ls), _fmt(rs), ok_s,
                     _fmt(r.get("coverage95")), _fmt(r.get("ari")), _int(r.get("n_basis")), _int(r.get("clusters")),
                     _fmt(r.get("seconds"), 1), _warn_text([r.get("warnings")]), _errors(pd.DataFrame([r]))])
    lines += _table(["DGP", "log RMSE", "research", "lower?", "log score", "research", "higher?", "coverage 95 %",
                     "ARI", "basis", "clusters", "fit s", "warnings", "errors"], rows) + [""]
    return lines


def render_real(df: pd.DataFrame) -> list[str]:
    lines = ["## Real data", "",
             "Per subject with at least two visits: its last visit plus round(0.2 (n_i - 1)) of its other visits",
             "held out at random (seed 0), at least one training visit kept; subjects with one visit stay in",
             "training. Basis: library defaults given the study window (min to max of all times) as",
             "`SplineBasis(lower, upper)`, the issue's protocol; the knots cover the training times, and",
             "held-out visits after the latest training time are forecast by the curves' continuation (linear",
             "from the boundary plus the smoothness prior's integrated-Wiener increment, `dmlmm.continuation`).",
             "Rows marked \"/ data range\" (`--real-basis data`) use `SplineBasis()` instead (forecasts with an",
             "extrapolation warning). Models with default settings, `random_state=0`: `DeepMixtureLMM()`,",
             "`MixtureLMM(10)`, `MixtureLMM(1)` (the Gaussian LMM). With the default `response_transform=\"auto\"`",
             "a response that is never negative is fitted as given and on its log scale (`log`, or `log1p`",
             "with zeros) and the fit with the higher ELBO on the data's scale is kept (the results' \"scale\");",
             "bands, scores and curves are on the data's scale either way.", "", "### Data sets", ""]
    first = df.drop_duplicates("dataset", keep="last")
    rows = []
    for _, r in first.iterrows():
        if "source" not in r or not isinstance(r.get("source"), str):
            rows.append([str(r["dataset"]), "–", "–", "–", "–", "–", "–", "–", "–"])
            continue
        w = r.get("window") or [np.nan, np.nan]
        rows.append([str(r["dataset"]), str(r["kind"]), f"{r['source']} ({r['columns']})", str(r["transform"]),
                     _int(r.get("n_subjects")), _int(r.get("n_obs")),
                     f"{_int(r.get('n_held'))} ({_int(r.get('n_held_last'))} last visits; "
                     f"{_int(r.get('n_held_beyond_train'))} after the latest training time)",
                     f"[{_fmt(w[0], 2)}, {_fmt(w[1], 2)}], {_int(r.get('n_distinct_times'))} distinct times",
                     f"[{_fmt(r['plausible_bounds'][0], 2)}, {_fmt(r['plausible_bounds'][1], 2)}]"
                     if isinstance(r.get("plausible_bounds"), list) else "–"])
    lines += _table(["data set", "kind", "source (subject, time -> response)", "transform", "subjects", "obs",
                     "held out", "time window", "plausible range of curves"], rows) + [""]
    lines += ["### Results", "",
              "Log score: held-out log predictive density per held-out observation (higher is better). Coverage:",
              "share of held-out visits inside the subject's 95 % band for a new observation (target 0.90-0.98),",
              "overall, at the held-out last visits (forecasts; in brackets the shares above (^) and below (v) the",
              "band: misses on one side are a bias of the forecasts, e.g. a last visit made because the patient",
              "worsened, not a band too narrow) and at the others; then the coverage of the 50 % and",
              "80 % bands (all held-out visits): when these hold and the 95 % band does not, the misses come from",
              "residual tails heavier than the model's Gaussian ones, not from bands too narrow throughout.",
              "Implausible: subjects whose predicted mean curve leaves the plausible range within their own",
              "follow-up (target 0; the range from the training responses, as in the data sets' table); in",
              "brackets, against [min y - range/2, max y + range/2] of all responses, held-out ones included:",
              "forecasts that the held-out visits themselves reach are not counted there.", ""]
    rows = []
    for name in df["dataset"].drop_duplicates():
        sub = df[df.dataset == name]
        for m in _model_order(sub["model"]):
            g = sub[sub.model == m]
            r = g.iloc[-1]
            err = _errors(g)
            if err and pd.isna(r.get("heldout_per_obs")) and pd.isna(r.get("coverage95")):
                rows.append([str(name), LABELS.get(m, m)] + ["–"] * 9 + [_warn_text(g.get("warnings", [])), err])
                continue
            impl = r.get("implausible_subjects")
            impl_s = f"{_int(impl)} / {_int(r.get('n_curve_subjects'))}" if impl is not None and not pd.isna(impl) else "–"
            wide = r.get("implausible_subjects_all_range")
            if wide is not None and not pd.isna(wide):
                impl_s += f" ({_int(wide)})"
            rows.append([str(name), LABELS.get(m, m), _fmt(r.get("heldout_per_obs")), _fmt(r.get("coverage95")),
                         _last_visit_cell(r), _fmt(r.get("coverage95_other")),
                         " / ".join(_fmt(r.get(f"coverage{round(100 * v)}")) for v in INNER_LEVELS), impl_s,
                         f"[{_fmt(r.get('curve_min'), 2)}, {_fmt(r.get('curve_max'), 2)}]",
                         f"{_int(r.get('clusters'))} / {_int(r.get('n_basis'))}"
                         + (f" / {r.get('scale')}" if isinstance(r.get("scale"), str) else ""), _fmt(r.get("seconds"), 1),
                         _warn_text(g.get("warnings", [])), err])
    lines += _table(["data set", "model", "log score / obs", "coverage", "at last visit", "at others",
                     " / ".join(f"{round(100 * v)} % band" for v in INNER_LEVELS), "implausible",
                     "range of mean curves", "clusters / basis / scale", "fit s", "warnings", "errors"], rows) + [""]
    if "full_seconds" in df or "full_error" in df:
        lines += ["### All-data fits", "",
                  "Each model also fitted to all of the data set (no hold-out), as a user would fit it. Implausible:",
                  "subjects whose mean curve within their own follow-up leaves [min y - range/2, max y + range/2]",
                  "(all responses); the cluster mean curves (clusters holding at least half a subject) over the study",
                  "window.", ""]
        rows = []
        for name in df["dataset"].drop_duplicates():
            sub = df[df.dataset == name]
            for m in _model_order(sub["model"]):
                g = sub[sub.model == m]
                r = g.iloc[-1]
                err = ""
                if "full_error" in g and g["full_error"].notna().any():
                    err = str(g["full_error"].dropna().iloc[-1]).replace("|", "/")[:160]
                impl = r.get("full_implausible_subjects")
                b = r.get("full_plausible_bounds")
                rows.append([str(name), LABELS.get(m, m),
                             f"{_int(impl)} / {_int(r.get('n_subjects'))}" if impl is not None and not pd.isna(impl) else "–",
                             f"[{_fmt(r.get('full_curve_min'), 2)}, {_fmt(r.get('full_curve_max'), 2)}]",
                             f"[{_fmt(r.get('full_cluster_mean_min'), 2)}, {_fmt(r.get('full_cluster_mean_max'), 2)}]",
                             f"[{_fmt(b[0], 2)}, {_fmt(b[1], 2)}]" if isinstance(b, list) else "–",
                             _int(r.get("full_clusters")), _fmt(r.get("full_seconds"), 1),
                             _warn_text(g.get("full_warnings", [])), err])
        lines += _table(["data set", "model", "implausible", "range of subject mean curves", "range of cluster means",
                         "plausible range", "clusters", "fit s", "warnings", "errors"], rows) + [""]
    lines += _real_targets(df)
    return lines


def _last_visit_cell(r) -> str:
    """Coverage at the held-out last visits, with the shares above and below the band (``^`` / ``v``)."""
    cell = _fmt(r.get("coverage95_last"))
    a, b = r.get("above95_last"), r.get("below95_last")
    if a is None or b is None or pd.isna(a) or pd.isna(b):
        return cell
    return f"{cell} ({_fmt(a)} ^, {_fmt(b)} v)"


def _real_targets(df: pd.DataFrame) -> list[str]:
    """Issue 7's real-data targets per data set (last row per data set and model)."""
    last = df.drop_duplicates(["dataset", "model"], keep="last").set_index(["dataset", "model"])
    rows = []
    for name in df["dataset"].drop_duplicates():
        def get(m, c):
            try:
                v = last.loc[(name, m), c]
            except KeyError:
                return None
            return None if v is None or pd.isna(v) else v
        covs = [get(m, "coverage95") for m in MODEL_KEYS]
        cov_ok = [f"{LABELS[m]} {'yes' if c is not None and 0.90 <= c <= 0.98 else 'no'}"
                  for m, c in zip(MODEL_KEYS, covs) if (name, m) in last.index]
        impl = [f"{LABELS[m]} {'yes' if get(m, 'implausible_subjects') == 0 else 'no'}"
                for m in MODEL_KEYS if (name, m) in last.index]
        d, g = get("dmlmm", "heldout_per_obs"), get("lmm", "heldout_per_obs")
        beat = "–" if d is None or g is None else ("yes" if d >= g else "no")
        rows.append([str(name), ", ".join(cov_ok), ", ".join(impl), beat])
    out = ["Targets of issue 7 (held-out fits):", ""] + _table(
        ["data set", "coverage in [0.90, 0.98]", "no implausible curve", "DMLMM log score >= LMM's"], rows) + [""]
    if "blackmore" in last.index.get_level_values(0) and "full_curve_min" in last:
        parts = []
        for m in MODEL_KEYS:
            if ("blackmore", m) in last.index:
                a, b = last.loc[("blackmore", m), "full_curve_min"], last.loc[("blackmore", m), "full_cluster_mean_min"]
                if pd.isna(a) or pd.isna(b):
                    parts.append(f"{LABELS[m]} –")
                else:
                    lowest = min(float(a), float(b))
                    parts.append(f"{LABELS[m]} {'yes' if lowest > -1 else 'no'} (lowest {lowest:.2f})")
        out += ["Blackmore, all data, default settings: every cluster mean and subject curve within follow-up above",
                f"-1 hour/week: {', '.join(parts)}.", ""]
    return out


def render(rows: list[dict]) -> str:
    meta = [r for r in rows if r.get("part") == "meta"]
    lines = ["# Accuracy of the deep mixture, the mixture and the Gaussian LMM", "",
             "Written by `benchmarks/accuracy.py` (issue 7, deliverable 4). The harness fits the three models to the",
             "simulation DGPs of `dmlmm.simulate` at several basis sizes with 20 % of observations held out, to the",
             "research code's own seed-0 replicates, and to real longitudinal data sets with held-out visits; see the",
             "module docstrings of `benchmarks/accuracy.py` and `benchmarks/accuracy_data.py` for the protocol.", ""]
    if meta:
        lines += ["## Runs", ""]
        rws = []
        for m in meta:
            el = ", ".join(f"{k} {v:.0f} s" for k, v in m.get("elapsed", {}).items())
            rws.append([m.get("date", "–"), f"`{m.get('command', '')}`", m.get("parts_run", ""),
                        f"dmlmm {m.get('dmlmm_version', '?')} at {m.get('dmlmm_commit', '?')}"
                        + (" (+ uncommitted changes)" if m.get("dmlmm_dirty") else "")
                        + "".join(f", {k} {v}" for k, v in m.get("libraries", {}).items()),
                        f"{m.get('platform', '')}, {m.get('cores', '?')} cores, Python {m.get('python', '')}", el])
        lines += _table(["date (UTC)", "command", "parts", "code", "machine", "elapsed"], rws) + [""]
    df = pd.DataFrame([r for r in rows if r.get("part") != "meta"])
    if df.empty:
        return "\n".join(lines + ["No results.", ""])
    if "sim" in set(df["part"]):  # a rerun (--append) replaces earlier rows of the same fit
        sim = df[df.part == "sim"].drop_duplicates(["dgp", "replicate", "n_basis", "model"], keep="last")
        lines += render_sim(sim)
    if "research" in set(df["part"]):
        lines += render_research(df[df.part == "research"].drop_duplicates("dgp", keep="last"))
    if "real" in set(df["part"]):
        real = df[df.part == "real"]
        seeds = real["split_seed"].fillna(0).astype(int) if "split_seed" in real else pd.Series(0, index=real.index)
        lines += render_real(real[seeds == 0])
        if seeds.nunique() > 1:
            lines += render_splits(real.assign(split_seed=seeds))
    return "\n".join(lines)


def render_splits(real: pd.DataFrame) -> list[str]:
    """The real-data targets split by split (``--split-seeds``): one held-out split is one draw, and a
    difference of a few hundredths per observation between two models can change sign with it."""
    real = real[~real["dataset"].str.endswith(" / data range")]
    last = real.drop_duplicates(["dataset", "split_seed", "model"], keep="last").set_index(["dataset", "split_seed", "model"])
    seeds = sorted(real["split_seed"].unique())

    def get(name, seed, model, col):
        try:
            v = last.loc[(name, seed, model), col]
        except KeyError:
            return None
        return None if v is None or pd.isna(v) else float(v)

    rows = []
    for name in real["dataset"].drop_duplicates():
        pairs = [(get(name, s, "dmlmm", "heldout_per_obs"), get(name, s, "lmm", "heldout_per_obs")) for s in seeds]
        diffs = [None if deep is None or lmm is None else deep - lmm for deep, lmm in pairs]
        known = [d for d in diffs if d is not None]
        covs = {m: [get(name, s, m, "coverage95") for s in seeds] for m in MODEL_KEYS}
        inside = [f"{sum(c is not None and 0.90 <= c <= 0.98 for c in covs[m])}" if any(c is not None for c in covs[m])
                  else "–" for m in MODEL_KEYS]
        impl = [get(name, s, "dmlmm", "implausible_subjects") for s in seeds]
        rows.append([str(name), " / ".join("–" if d is None else f"{d:+.3f}" for d in diffs),
                     _fmt(np.mean(known)) if known else "–", f"{sum(d >= 0 for d in known)} of {len(known)}",
                     " / ".join(_fmt(c) for c in covs["dmlmm"]), " / ".join(inside),
                     " / ".join(_int(v) for v in impl)])
    return ["### Across held-out splits", "",
            f"The same protocol with the held-out visits other than the last drawn by seeds {', '.join(map(str, seeds))}",
            "(`--split-seeds`; seed 0 is the split of the tables above; the last visits are held out in every split).",
            "Per data set, split by split: the DMLMM's held-out log score per observation minus the Gaussian LMM's,",
            "their mean and in how many splits the DMLMM's is at least the LMM's; the DMLMM's 95 % coverage; in how",
            "many splits each model's coverage lies in [0.90, 0.98] (DMLMM / MLMM / Gaussian LMM); the DMLMM's",
            "implausible curves (against the training responses' range).", ""] + _table(
        ["data set", "DMLMM − LMM log score / obs, by split", "mean", "DMLMM >= LMM", "DMLMM coverage 95 %, by split",
         "coverage in range (DMLMM / MLMM / LMM)", "DMLMM implausible, by split"], rows) + [""]


# --------------------------------------------------------------------------- driver


def code_identity() -> dict:
    src = Path(dmlmm.__file__).resolve().parent
    out = {"dmlmm_version": getattr(dmlmm, "__version__", "?"), "dmlmm_path": str(src),
           # the numbers depend on them: a numpy upgrade alone moved fits that race or restart (docs/accuracy.md)
           "libraries": {"numpy": np.__version__, "scipy": scipy.__version__, "pandas": pd.__version__}}
    try:
        out["dmlmm_commit"] = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."],
                                capture_output=True, text=True, check=True).stdout
        out["dmlmm_dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        out["dmlmm_commit"] = "?"
    return out


def read_rows(paths) -> list[dict]:
    rows = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    ap.add_argument("--replicates", type=int, default=5, help="simulation replicates (seeds 0..R-1)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 30, 40], help="basis sizes for the simulations")
    ap.add_argument("--dgps", nargs="+", choices=sorted(DGPS), default=sorted(DGPS))
    ap.add_argument("--datasets", nargs="+", default=list(accuracy_data.DEFAULT_DATASETS),
                    help=f"real data sets (default: {' '.join(accuracy_data.DEFAULT_DATASETS)}; "
                         f"extra: {' '.join(accuracy_data.EXTRA_DATASETS)})")
    ap.add_argument("--models", nargs="+", choices=MODEL_KEYS, default=list(MODEL_KEYS))
    ap.add_argument("--real-basis", nargs="+", choices=("window", "data"), default=["window"],
                    help="real data: basis given the study window (the issue's protocol) and/or the default basis "
                         "over the training times (forecasts beyond them with an extrapolation warning)")
    ap.add_argument("--noise", choices=("shared", "cluster", "auto"), default="shared",
                    help="residual variances of every model: one shared (default), one per first-layer cluster, or the better by the ELBO")
    ap.add_argument("--noise-df", default=None, type=lambda v: None if v == "none" else (v if v == "auto" else float(v)),
                    help="subject-level residual scales of every model: none (default), auto or a number (noise_df)")
    ap.add_argument("--tol", type=float, default=None,
                    help="convergence tolerance of every model (default: the models' own, 1e-5); a smaller one shows "
                         "how much the results depend on where the fits stop")
    ap.add_argument("--max-iter", type=int, default=None, help="iteration budget of every model (default: the models' own)")
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[0],
                    help="real data: seeds of the held-out visits other than the last, one split each (default 0, the "
                         "split of the tables; more add a section comparing the splits)")
    ap.add_argument("--no-full-fit", dest="full_fit", action="store_false",
                    help="real data: skip the second fit of each model to all of the data")
    ap.add_argument("--out-dir", help="append rows to OUT_DIR/accuracy.jsonl (default: only print them)")
    ap.add_argument("--append", action="store_true", help="keep the rows already in OUT_DIR/accuracy.jsonl")
    ap.add_argument("--out-md", help="write the results page here (default: print it)")
    ap.add_argument("--from-jsonl", nargs="+", metavar="JSONL", help="only render the page from saved rows")
    args = ap.parse_args(argv)
    COMMON["noise"] = args.noise
    COMMON["noise_df"] = args.noise_df
    if args.tol is not None:
        COMMON["tol"] = args.tol
    if args.max_iter is not None:
        COMMON["max_iter"] = args.max_iter
    unknown = [d for d in args.datasets if d not in accuracy_data.DATASETS]
    if unknown:
        ap.error(f"unknown data set(s) {unknown}; choose from {sorted(accuracy_data.DATASETS)}")

    if args.from_jsonl:
        page = render(read_rows(args.from_jsonl))
    else:
        sink = None
        jsonl = None
        if args.out_dir:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
            jsonl = Path(args.out_dir) / "accuracy.jsonl"
            sink = open(jsonl, "a" if args.append else "w")
        meta = {"part": "meta", "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                "command": "python benchmarks/accuracy.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
                "parts_run": " ".join(p for p in PARTS if p in args.only),
                "platform": platform.platform(), "machine": platform.machine(), "cores": os.cpu_count(),
                "python": platform.python_version(), "numpy": np.__version__,
                "threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                            if k in os.environ},
                **code_identity(), "elapsed": {}}
        runners = {"sim": run_sim, "research": run_research, "real": run_real}
        try:
            for part in PARTS:
                if part in args.only:
                    t0 = time.perf_counter()
                    runners[part](args, sink)
                    meta["elapsed"][part] = time.perf_counter() - t0
        finally:
            emit(meta, sink)
            if sink is not None:
                sink.close()
        page = render(read_rows([jsonl]) if jsonl is not None else ROWS)
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(page + "\n")
        print(f"wrote {args.out_md}", file=sys.stderr)
    else:
        print(page)


if __name__ == "__main__":
    main()
