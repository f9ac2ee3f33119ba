"""lme4-style formulas: ``"Reaction ~ Days + (Days | Subject)"``.

The bar terms ``(expr | group)`` are parsed here; the fixed part and each
random-term expression are handed to formulaic, whose fitted ``ModelSpec`` is
kept so that prediction rebuilds exactly the same columns (same categorical
levels, same transforms).

Supported random terms (one grouping factor, possibly in several terms):

- ``(1 | g)``: random intercept;
- ``(x | g)`` = ``(1 + x | g)``: correlated random intercept and slope;
- ``(0 + x | g)`` / ``(-1 + x | g)``: random slope without intercept;
- ``(1 + x || g)``: uncorrelated terms (one variance per column);
- several terms for the same ``g`` (``(1 | g) + (0 + x | g)``) give independent blocks.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..exceptions import DataError
from ..columns import as_numeric
from ..covariates import coded_as_categories, numbers_as_text
from .design import Design, NewRows, check_finite_columns, factorize_groups
from .structure import CovarianceStructure

__all__ = ["RandomTerm", "ParsedFormula", "parse_formula", "FormulaDesignBuilder"]

_OPEN, _CLOSE = "([{", ")]}"


@dataclass(frozen=True)
class RandomTerm:
    """One bar term ``(expr | group)``.

    Attributes
    ----------
    expr : str
        formulaic formula of the random design (intercept implied unless ``0 +`` / ``-1``).
    group : str
        Name of the grouping column.
    correlated : bool
        False for ``||`` (a separate variance, no correlations, per column).
    """

    expr: str
    group: str
    correlated: bool = True


@dataclass(frozen=True)
class ParsedFormula:
    """An lme4 formula split into response, fixed right-hand side and random terms."""

    response: str
    fixed: str
    random: tuple[RandomTerm, ...]

    @property
    def group(self) -> str:
        return self.random[0].group


def _scan(s: str):
    """Yield (position, char, depth) for characters outside string literals / backticks."""
    depth = 0
    quote: str | None = None
    for i, ch in enumerate(s):
        if quote is not None:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"`":
            quote = ch
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth < 0:
                raise DataError(f"unbalanced parentheses in formula {s!r}")
        yield i, ch, depth
    if depth != 0 or quote is not None:
        raise DataError(f"unbalanced parentheses or quotes in formula {s!r}")


def _split_signed_terms(rhs: str) -> list[tuple[str, str]]:
    """Split a right-hand side at top-level ``+`` / ``-`` into (sign, term) pairs."""
    terms: list[tuple[str, str]] = []
    sign, start = "+", 0
    prev = ""  # previous non-space top-level character
    for i, ch, depth in _scan(rhs):
        if depth == 0 and ch in "+-":
            if prev in ("", "+", "-"):  # unary sign: belongs to the next term
                if ch == "-":
                    sign = "-" if sign == "+" else "+"
                start = i + 1
            elif prev not in ("*", "/", ":", "^"):
                terms.append((sign, rhs[start:i].strip()))
                sign, start = ch, i + 1
        if not ch.isspace():
            prev = ch if depth == 0 or ch in _OPEN else "x"
    terms.append((sign, rhs[start:].strip()))
    return [(sg, t) for sg, t in terms if t]


def _bar_term(term: str) -> tuple[str, str, bool] | None:
    """``(expr | group)`` -> (expr, group, correlated), or None for a fixed term."""
    t = term.strip()
    if not (t.startswith("(") and t.endswith(")")):
        return None
    # the opening parenthesis must close at the very end
    for i, ch, depth in _scan(t):
        if depth == 0 and i < len(t) - 1:
            return None
    inner = t[1:-1]
    bars = [i for i, ch, depth in _scan(inner) if depth == 0 and ch == "|"]
    if not bars:
        return None
    if len(bars) == 2 and bars[1] == bars[0] + 1:
        expr, group, correlated = inner[: bars[0]], inner[bars[0] + 2 :], False
    elif len(bars) == 1:
        expr, group, correlated = inner[: bars[0]], inner[bars[0] + 1 :], True
    else:
        raise DataError(f"cannot parse random-effects term {term!r}: expected (expr | group) or (expr || group)")
    expr, group = expr.strip(), group.strip().strip("`").strip()
    if not expr:
        raise DataError(f"random-effects term {term!r} has nothing left of '|': write (1 | {group}) for a random intercept")
    if not group:
        raise DataError(f"random-effects term {term!r} has no grouping factor right of '|'")
    if not re.fullmatch(r"[^\s+\-*/:|()~^]+", group):
        raise DataError(
            f"grouping factor {group!r} in {term!r} must be a single column name (interactions / nested "
            "grouping factors are not supported: build a combined column first)"
        )
    return expr, group, correlated


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into response, fixed part and random terms.

    Parameters
    ----------
    formula : str
        e.g. ``"Reaction ~ Days + (Days | Subject)"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    DataError
        No ``~``, no response, no random term, several grouping factors, or a
        bar term that is not added with ``+``.
    """
    if not isinstance(formula, str):
        raise DataError(f"formula must be a string like 'y ~ x + (x | g)', got {type(formula).__name__}")
    tildes = [i for i, ch, depth in _scan(formula) if depth == 0 and ch == "~"]
    if len(tildes) != 1:
        raise DataError(f"formula {formula!r} must have exactly one '~' (response ~ terms)")
    lhs, rhs = formula[: tildes[0]].strip(), formula[tildes[0] + 1 :].strip()
    if not lhs:
        raise DataError(f"formula {formula!r} has no response left of '~'")
    fixed_terms: list[tuple[str, str]] = []
    random: list[RandomTerm] = []
    for sign, term in _split_signed_terms(rhs):
        bar = _bar_term(term)
        if bar is None:
            if any(ch == "|" for _, ch, _ in _scan(term)):
                raise DataError(
                    f"cannot parse term {term!r} of {formula!r}: random-effects terms are written "
                    "'+ (expr | group)', each in its own parentheses"
                )
            fixed_terms.append((sign, term))
            continue
        if sign != "+":
            raise DataError(f"random-effects term {term!r} must be added with '+', not subtracted")
        random.append(RandomTerm(*bar))
    if not random:
        raise DataError(
            f"formula {formula!r} has no random-effects term: add one such as (1 | subject); "
            "for a model without random effects use ordinary least squares"
        )
    groups = list(dict.fromkeys(r.group for r in random))
    if len(groups) > 1:
        raise DataError(
            f"formula {formula!r} has several grouping factors {groups}: only one grouping factor is "
            "supported (crossed or nested random effects are not)"
        )
    if fixed_terms:
        parts = []
        for k, (sign, term) in enumerate(fixed_terms):
            parts.append((f"{term}" if sign == "+" else f"-{term}") if k == 0 else f" {sign} {term}")
        fixed = "".join(parts)
    else:
        fixed = "1"
    return ParsedFormula(response=lhs, fixed=fixed, random=tuple(random))


# --------------------------------------------------------------------------- building designs


def _required_variables(formula: str) -> set[str]:
    from formulaic import Formula

    try:
        return {str(v) for v in Formula(formula).required_variables}
    except Exception as exc:  # formulaic's syntax errors
        raise DataError(f"cannot parse formula {formula!r}: {exc}") from None


def _unseen_levels(spec, df: pd.DataFrame) -> str | None:
    """Which column has category levels the fitted spec does not know (None if none is found)."""
    import re

    from ..covariates import unseen_levels_message

    if isinstance(spec, str):
        return None
    for name, (kind, state) in spec.encoder_state.items():
        known = state.get("categories") if isinstance(state, dict) else None
        m = re.fullmatch(r"\s*(?:C\(\s*)?([A-Za-z_][A-Za-z0-9_]*).*", name)
        col = m.group(1) if m else None
        if known is None or col not in df.columns:
            continue
        unseen = set(pd.unique(df[col].dropna())) - set(known)
        if unseen:
            return f"column {unseen_levels_message(col, unseen, list(known))}"
    return None


def _model_matrix(spec_or_formula, df: pd.DataFrame, what: str):
    """formulaic model matrix with missing values an error and unseen levels an error."""
    from formulaic import model_matrix
    from formulaic.errors import DataMismatchWarning, FormulaicError

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataMismatchWarning)
        try:
            if isinstance(spec_or_formula, str):
                return model_matrix(spec_or_formula, df, na_action="raise")
            return spec_or_formula.get_model_matrix(df, na_action="raise")
        except DataMismatchWarning as w:
            raise DataError(f"{what}: {_unseen_levels(spec_or_formula, df) or w}") from None
        except (FormulaicError, ValueError, TypeError, KeyError, NameError) as exc:
            raise DataError(f"cannot build the {what} from the data: {exc}") from None


def _warn_formula_columns(df: pd.DataFrame, variables: Sequence[str], group: str, group_in_terms: bool,
                          formula: str, stacklevel: int = 5) -> None:
    """Warnings for formula columns that formulaic reads other than a user likely means: numbers stored as text
    (read as categories, one coefficient per distinct value) unless the formula says ``C(x)``, and the grouping
    column among the terms (a fixed effect per subject takes the place of the random intercept, or a slope over
    the subjects' labels)."""
    for v in variables:
        if numbers_as_text(df[v]) and not coded_as_categories(formula, v):
            values = df[v].dropna()
            warnings.warn(
                f"column '{v}' holds numbers stored as text (e.g. {values.iloc[0]!r}): the formula reads it as a "
                f"categorical variable with {values.nunique()} levels; convert it with pd.to_numeric(df['{v}']) for "
                f"a numeric covariate, or write C({v}) to say the categories are meant", UserWarning,
                stacklevel=stacklevel)
    if group_in_terms:
        warnings.warn(
            f"the grouping column '{group}' is also a term of the formula: as a category, each subject's fixed effect "
            "takes the place of its random intercept (whose variance then shrinks to zero); as a number, a slope over "
            "the subjects' labels. Subject-level covariates (e.g. age at entry) belong there, not the labels",
            UserWarning, stacklevel=stacklevel)


class FormulaDesignBuilder:
    """Designs from an lme4-style formula (fixed part and random terms built by formulaic).

    Parameters
    ----------
    formula : str
        e.g. ``"Reaction ~ Days + (Days | Subject)"``.

    Attributes (after ``fit``)
    --------------------------
    parsed_ : ParsedFormula
    fixed_spec_ : formulaic ModelSpec of the fixed right-hand side.
    random_specs_ : list of formulaic ModelSpec, one per random term.
    """

    def __init__(self, formula: str) -> None:
        self.formula = formula
        self.parsed_ = parse_formula(formula)

    # ---------------------------------------------------------------- helpers
    def _variables(self) -> tuple[set[str], set[str]]:
        p = self.parsed_
        fixed = _required_variables(f"{p.response} ~ {p.fixed}")
        rhs = _required_variables(p.fixed)
        for r in p.random:
            rhs |= _required_variables(r.expr)
        return fixed, rhs

    @staticmethod
    def _check_columns(df: pd.DataFrame, names: Sequence[str]) -> None:
        missing = [c for c in names if c not in df.columns]
        if missing:
            raise DataError(
                f"column(s) {missing} named in the formula not found in the data; the columns are: {list(df.columns)}"
            )

    # ---------------------------------------------------------------- fit
    def fit(self, df: pd.DataFrame, dropna: bool = False) -> Design:
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"a formula model needs a pandas DataFrame, got {type(df).__name__}")
        if len(df) == 0:
            raise DataError("the data frame is empty (0 rows): there is nothing to fit")
        p = self.parsed_
        group = p.group
        fixed_vars, rhs_vars = self._variables()
        variables = sorted((fixed_vars | rhs_vars) - {group}) + [group]
        self._check_columns(df, variables)
        if p.response in df.columns:
            as_numeric(df[p.response], f"response column '{p.response}'")
        df = check_finite_columns(df, variables, dropna, stacklevel=4)
        _warn_formula_columns(df, sorted(rhs_vars - {group}), group, group in rhs_vars, self.formula)
        used = list(dict.fromkeys(variables + [p.response]))
        same = df[used].duplicated() if p.response in df.columns else pd.Series(False, index=df.index)
        if same.any():  # replicates are allowed; a row entered twice is more likely
            warnings.warn(
                f"{int(same.sum())} row(s) repeat an earlier row's values of {used} exactly (rows "
                f"{list(df.index[same.to_numpy()][:10])}): each counts as one more measurement; drop them if they were "
                "entered twice (pandas: df.drop_duplicates())", UserWarning, stacklevel=4)
        mm = _model_matrix(f"{p.response} ~ {p.fixed}", df, "fixed-effects design")
        lhs = mm.lhs
        if lhs.shape[1] != 1:
            raise DataError(f"the response {p.response!r} must be a single numeric column (got columns {list(lhs.columns)})")
        y = lhs.to_numpy(dtype=float).reshape(-1)
        F = mm.rhs.to_numpy(dtype=float)
        self.fixed_spec_ = mm.model_spec.rhs
        fixed_names = [str(c) for c in mm.rhs.columns]
        Zs, random_names, blocks, sizes = [], [], [], []
        self.random_specs_ = []
        for term in p.random:
            rm = _model_matrix(term.expr, df, f"random-effects design of ({term.expr} | {term.group})")
            names = [str(c) for c in rm.columns]
            if not names:
                raise DataError(f"random-effects term ({term.expr} | {term.group}) has no columns")
            dup = [c for c in names if c in random_names]
            if dup:
                raise DataError(f"random-effect column(s) {dup} appear in more than one random-effects term")
            self.random_specs_.append(rm.model_spec)
            Zs.append(rm.to_numpy(dtype=float))
            random_names += names
            blocks.append((term.group, names))
            sizes += [len(names)] if term.correlated else [1] * len(names)
        Z = np.concatenate(Zs, axis=1)
        structure = (CovarianceStructure.unstructured(Z.shape[1]) if len(sizes) == 1
                     else CovarianceStructure.block_diagonal(sizes))
        codes, subjects = factorize_groups(df[group].to_numpy())
        order = np.argsort(codes, kind="stable")
        self.fixed_names_, self.random_names_ = fixed_names, random_names
        return Design(
            y=y[order], F=F[order], Z=Z[order], codes=codes[order], subjects=subjects.rename(group),
            fixed_names=fixed_names, random_names=random_names, structure=structure,
            group_name=group, grouped=True, random_blocks=blocks,
        )

    # ---------------------------------------------------------------- saved state
    def to_dict(self) -> dict:
        """The fitted state as JSON (the formula and formulaic's fitted specs, :mod:`dmlmm.formula_state`)."""
        from ..formula_state import spec_to_json

        return {"kind": "formula", "formula": self.formula, "fixed_spec": spec_to_json(self.fixed_spec_),
                "random_specs": [spec_to_json(s) for s in self.random_specs_],
                "fixed_names": list(self.fixed_names_), "random_names": list(self.random_names_)}

    @classmethod
    def from_dict(cls, d: dict) -> "FormulaDesignBuilder":
        from ..formula_state import spec_from_json

        b = cls(d["formula"])
        b.fixed_spec_ = spec_from_json(d["fixed_spec"])
        b.random_specs_ = [spec_from_json(s) for s in d["random_specs"]]
        b.fixed_names_, b.random_names_ = list(d["fixed_names"]), list(d["random_names"])
        return b

    # ---------------------------------------------------------------- predict
    def transform(self, df: pd.DataFrame, subject=None) -> NewRows:
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"a formula model predicts from a pandas DataFrame, got {type(df).__name__}")
        _, rhs_vars = self._variables()
        group = self.parsed_.group
        variables = sorted(rhs_vars - {group})
        self._check_columns(df, variables)
        check_finite_columns(df, variables, dropna=False, action="predict")
        n = len(df)
        F = _model_matrix(self.fixed_spec_, df, "fixed-effects design").to_numpy(dtype=float).reshape(n, -1)
        Z = np.concatenate([_model_matrix(s, df, "random-effects design").to_numpy(dtype=float).reshape(n, -1)
                            for s in self.random_specs_], axis=1)
        frame = pd.DataFrame(index=df.index)
        if group in df.columns:
            subj = df[group].to_numpy(dtype=object)
        elif subject is not None:
            subj = np.array([subject] * n, dtype=object)
        else:
            subj = None
        if subj is not None:
            frame[group] = subj
        return NewRows(F=F, Z=Z, subjects=subj, frame=frame)
