"""Linear mixed models: lme4-style formulas, design matrices or spline bases of time.

``LinearMixedModel`` fits ``y_i = F_i w + Z_i b_i + e_i`` with ``b_i ~ N(0, Sigma)``
(Sigma unstructured) by exact ML or REML (lme4's profiled likelihood), computed
from per-subject sufficient statistics.
"""

from .design import Design, LongitudinalDesignBuilder, MatrixDesignBuilder, NewRows
from .estimators import ESTIMATORS, Estimate
from .formula import FormulaDesignBuilder, ParsedFormula, RandomTerm, parse_formula
from .model import LinearMixedModel
from .optimise import ProfiledFit, fit_profiled
from .profiled import ProfiledState, evaluate, profiled_loglik, profiled_loglik_grad
from .scaling import ResponseScaling
from .structure import CovarianceStructure

__all__ = [
    "LinearMixedModel",
    "CovarianceStructure",
    "Design",
    "NewRows",
    "FormulaDesignBuilder",
    "MatrixDesignBuilder",
    "LongitudinalDesignBuilder",
    "ParsedFormula",
    "RandomTerm",
    "parse_formula",
    "ResponseScaling",
    "Estimate",
    "ESTIMATORS",
    "ProfiledFit",
    "ProfiledState",
    "evaluate",
    "fit_profiled",
    "profiled_loglik",
    "profiled_loglik_grad",
]
