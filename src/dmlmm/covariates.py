"""Covariate coding: how covariate columns become numeric fixed-effect columns (by formulaic).

``covariates=`` is either a list of column names or the right-hand side of a
formula (formulaic's syntax):

- ``["age", "sex"]``: numeric columns as they are, non-numeric (and boolean) ones
  treatment coded with the sorted first level as reference (``sex[T.M]``);
- ``"diet * age"``, ``"C(diet) + age + age:sex"``, ``"C(dose)"``, ``"center(age)"``:
  interactions, categorical levels, formulaic's transforms.

The columns are coded against the model's mean curve, which plays the part of the
intercept: there is never an intercept column, and categorical terms are coded as if
an intercept were present (formula ``1 + (...)``). The mean curve is a function of
time, so a formula that uses the time column is coded as if it held the time main
effect too (``diet:time`` gives ``diet[T.b]:time``, not one slope per diet), and the
plain time term (from ``diet * time``) is left out. Other functions of time
(``I(time**2)``) stay; the design warns if the curves already explain them.

A fitted :class:`CovariateEncoding` keeps what new data need to give the same columns:
the formula, the levels of each categorical column and formulaic's learned state
(categories of ``C(...)`` factors, the state of stateful transforms), all plain JSON.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .columns import as_numeric
from .exceptions import DataError
from .formula_state import state_from_json, state_to_json

__all__ = ["CovariateEncoding", "covariate_columns", "is_categorical", "missing_rows", "parse_covariates"]

_FORMULA_CHARS = set("+*:()~^-/|`%= ")


# --------------------------------------------------------------------------- the user's specification


def parse_covariates(spec, available: Sequence[str] | None = None) -> tuple[str | None, list[str]]:
    """``(formula, columns)`` of a ``covariates=`` value.

    ``formula`` is None for a list of columns; ``columns`` are the data columns the
    coding reads, in order of first mention. A string that is the name of one of the
    ``available`` columns, or holds no formula operator, is that one column.
    """
    if spec is None:
        return None, []
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            return None, []
        if available is not None and spec in available:
            return None, [spec]
        if not set(text) & _FORMULA_CHARS:
            return None, [text]
        return text, _formula_columns(text)
    if not isinstance(spec, (list, tuple)) or not all(isinstance(c, str) for c in spec):
        raise DataError(f"covariates must be a list of column names or a formula string, got {spec!r}")
    dup = sorted({c for c in spec if list(spec).count(c) > 1})
    if dup:
        raise DataError(f"covariate column(s) {dup} are listed more than once")
    return None, list(spec)


def covariate_columns(spec) -> list[str]:
    """The data columns a ``covariates=`` value reads (a formula's variables; a list as it is)."""
    return parse_covariates(spec)[1]


def _formula_columns(formula: str) -> list[str]:
    from formulaic import Formula

    if "~" in formula:
        raise DataError(
            f"the covariate formula {formula!r} holds '~': give its right-hand side only (e.g. 'diet * age'); "
            "the response is the model's response column"
        )
    if "|" in formula:
        raise DataError(f"the covariate formula {formula!r} holds '|': random effects are the model's spline curves, "
                        "not part of the covariates")
    from formulaic.parser.types import Factor
    from formulaic.transforms import TRANSFORMS
    from formulaic.utils.variables import Variable, get_required_variables

    names: set[str] = set()
    try:
        Formula(formula)  # its errors point into the user's text, not the wrapped one
        for term in Formula(f"1 + ({formula})"):
            for factor in term.factors:
                if factor.eval_method == Factor.EvalMethod.LOOKUP:
                    names.add(factor.expr)
                elif factor.eval_method == Factor.EvalMethod.PYTHON:  # C(x), center(x), I(t**2), ...: their values
                    names.update(v.root for v in get_required_variables(factor.expr)
                                 if Variable.Role.VALUE in v.roles and v.root not in TRANSFORMS)
    except Exception as e:  # formulaic's FormulaSyntaxError, FormulaParsingError, ...
        raise DataError(f"the covariate formula {formula!r} cannot be read: {_one_line(e)}") from None
    return sorted(names, key=lambda v: (_first_mention(formula, v), v))


def _first_mention(text: str, name: str) -> int:
    m = re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", text)
    return m.start() if m else len(text)


def _one_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m|[⧛⧚]", "", str(e))
    return " ".join(text.split())


def _quote(column: str) -> str:
    if "`" in column:
        raise DataError(f"covariate column name {column!r} holds a backtick, which formulas cannot quote; rename it")
    return f"`{column}`"


# --------------------------------------------------------------------------- learning the kinds of columns


def _learn_levels(s: pd.Series, c: str, categorical: bool | None = None) -> list | None:
    """None for a numeric column (numbers stored as text too), else its sorted levels."""
    if not (is_categorical(s) if categorical is None else categorical):
        return None
    cats = pd.unique(s.dropna())
    try:
        cats = sorted(cats)
    except TypeError:
        cats = list(cats)
    if len(cats) < 2:
        raise DataError(
            f"covariate column '{c}' is non-numeric with a single level ({cats!r}); "
            "it carries no information: remove it from the covariates"
        )
    return [v.item() if isinstance(v, np.generic) else v for v in cats]


def _as_levels(s: pd.Series, levels: list) -> np.ndarray:
    """The values of ``s`` as the levels they equal: a True/False column given as 1/0 (or 1.0/0.0) takes the
    levels True/False (pandas' categories match by type, so 1 was no level of [False, True] and became
    missing); anything else as it is."""
    values = s.to_numpy()
    if levels and all(isinstance(v, (bool, np.bool_)) for v in levels) and values.dtype.kind in "iuf":
        out = np.full(len(values), None, dtype=object)
        out[values == 1] = True
        out[values == 0] = False
        return out
    return values


def is_categorical(s: pd.Series) -> bool:
    """Whether a covariate column is coded by levels (non-numeric, boolean, or a pandas Categorical whatever its
    categories: a Categorical of '1'..'4' is four groups)."""
    if pd.api.types.is_bool_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype):
        return True
    if pd.api.types.is_numeric_dtype(s):
        return False
    if not (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)):
        return True
    values = s.dropna()
    if values.empty or pd.to_numeric(values.iloc[:64], errors="coerce").isna().any():  # text: no need to read it all
        return True
    return bool(pd.to_numeric(values, errors="coerce").isna().any())  # "1.5" as the response: numbers


def numbers_as_text(col: pd.Series) -> bool:
    """Whether a column holds numbers written as text: object or string dtype (not a Categorical), at least one
    value, every value a number."""
    if not (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)) \
            or isinstance(col.dtype, pd.CategoricalDtype):
        return False
    values = col.dropna()
    return len(values) > 0 and bool(pd.to_numeric(values.astype(str).str.strip(), errors="coerce").notna().all())


def coded_as_categories(formula: str | None, column: str) -> bool:
    """Whether a covariate formula codes ``column`` as categories with ``C(...)``."""
    return formula is not None and re.search(rf"\bC\(\s*`?{re.escape(column)}\b", formula) is not None


def _warn_numbers_as_text(df: pd.DataFrame, numeric: list[str], formula: str | None) -> None:
    """A warning for each column of ``numeric`` (read as numbers) that holds its numbers as text, unless the
    formula codes it as categories with ``C(...)``: a diet stored as '1'..'4' is then one slope per unit of the
    code, not four groups (the formula LinearMixedModel, through formulaic, reads such text as categories)."""
    for c in numeric:
        if not numbers_as_text(df[c]) or coded_as_categories(formula, c):
            continue
        shown = ", ".join(repr(v) for v in pd.unique(df[c].dropna())[:3])
        warnings.warn(
            f"covariate '{c}' holds numbers stored as text ({shown}, ...): they are read as numbers, one slope per "
            f"unit; if they are categories (groups, codes), make the column a pandas Categorical or write C({c}) in "
            f"a covariate formula; pd.to_numeric(df['{c}']) says they are numbers and silences this", UserWarning,
            stacklevel=2)


# --------------------------------------------------------------------------- the coding


@dataclass(frozen=True, eq=False)
class CovariateEncoding:
    """How ``covariates=`` (a list of columns, or the right-hand side of a formula such as
    ``"diet * age"``) becomes numeric fixed-effect columns, coded against the model's mean curve:
    no intercept column, categorical terms coded as if there were one, the plain time term left
    out (the rules: :mod:`dmlmm.covariates`).

    Attributes
    ----------
    columns : tuple of str
        The data columns the coding reads.
    levels : dict
        ``levels[c]`` is None for a numeric column, else the list of its categories
        (the first is the reference level).
    formula : str or None
        The user's formula (right-hand side); None for a list of columns.
    time : str or None
        The time column, if the formula uses it (coded against the mean curve).
    names : tuple of str
        The coded columns' names.
    state : dict
        formulaic's learned state as plain JSON (``encoder``: categories of the
        categorical factors; ``transforms``: the stateful transforms' state).
    means : dict
        The mean of each numeric column read, where known (a typical value for probes).
    """

    columns: tuple[str, ...] = ()
    levels: dict = field(default_factory=dict)
    formula: str | None = None
    time: str | None = None
    names: tuple[str, ...] = ()
    state: dict = field(default_factory=dict)
    means: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- learning
    @classmethod
    def learn(cls, df: pd.DataFrame, covariates=None, *, time: str | None = None,
              levels: dict | None = None, categorical: dict | None = None) -> "CovariateEncoding":
        """The coding of ``covariates`` (list of columns or formula) learned on ``df``.

        ``time`` names the time column: a formula may use it (the list form may not).
        ``levels`` fixes the columns' levels instead of learning them; ``categorical`` says
        which columns are categorical (:func:`is_categorical`, if already known).
        """
        formula, columns = parse_covariates(covariates, list(df.columns))
        _check_present(df, columns)
        time = time if formula is not None and time in columns else None
        if levels is None:
            categorical = categorical or {}
            levels = {c: (None if c == time else _learn_levels(df[c], c, categorical.get(c))) for c in columns}
            _warn_numbers_as_text(df, [c for c in columns if c != time and levels[c] is None], formula)
        else:
            levels = {c: (None if c == time else levels.get(c)) for c in columns}
        enc = cls(tuple(columns), levels, formula, time)
        if not columns:
            return enc
        from formulaic import model_matrix

        frame = enc._frame(df)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mm = model_matrix(enc._rhs(), frame, na_action="ignore")
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"the covariates {enc._label()} cannot be coded: {_one_line(e)}") from None
        spec = mm.model_spec
        names = tuple(n for s in spec.structure if enc._kept(s.term) for n in s.columns)
        with np.errstate(all="ignore"):
            means = {c: float(np.nanmean(np.asarray(frame[c], dtype=float))) for c in columns
                     if levels[c] is None and c != time}
        return cls(tuple(columns), levels, formula, time, names, state_to_json(spec),
                   {c: m for c, m in means.items() if np.isfinite(m)})

    @classmethod
    def from_levels(cls, columns: Sequence[str], levels: dict, formula: str | None = None,
                    time: str | None = None) -> "CovariateEncoding":
        """The coding given each column's levels alone (for a formula whose state the levels fix:
        no ``C()`` of a numeric column, no stateful transform). Used for old model files and Dask
        frames, whose levels are learned column by column."""
        columns = list(columns)
        n = max([2] + [len(v) for v in levels.values() if v is not None])
        probe = {}
        for c in columns:
            lv = levels.get(c)
            # a column's levels repeated cyclically to n rows (numbers for a numeric column)
            probe[c] = np.arange(1.0, n + 1) if lv is None else pd.Series(np.resize(np.array(lv, dtype=object), n), dtype=object)
        if not columns:
            return cls()
        enc = cls.learn(pd.DataFrame(probe), formula if formula is not None else columns, time=time, levels=levels)
        enc = cls(enc.columns, enc.levels, enc.formula, enc.time, enc.names, enc.state)  # the probe's means mean nothing
        data_bound = [e for e, s in enc.state.get("encoder", {}).items()
                      if s["kind"] == "categorical" and levels.get(_factor_column(e) or "") is None]
        if data_bound or enc.state.get("transforms"):
            what = data_bound + list(enc.state.get("transforms", {}))
            raise DataError(
                f"the covariate formula {formula!r} has term(s) {what} whose coding depends on the data's values, "
                "not only on the columns' levels: fit in memory, or code them as columns first"
            )
        return enc

    def _rhs(self) -> str:
        body = self.formula if self.formula is not None else " + ".join(_quote(c) for c in self.columns)
        pre = f"1 + {_quote(self.time)} + " if self.time is not None else "1 + "
        return f"{pre}({body})"

    def _kept(self, term) -> bool:
        """Whether a formula term's columns are covariates: not the intercept, not the plain time term."""
        factors = list(term.factors)
        if not factors or str(term) == "1":
            return False
        return not (self.time is not None and len(factors) == 1 and factors[0].expr == self.time)

    def _label(self) -> str:
        return repr(self.formula) if self.formula is not None else str(list(self.columns))

    # ---------------------------------------------------------------- coding
    def _frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """The columns read, checked, as formulaic should see them (categories fixed; numbers as numbers)."""
        _check_present(df, self.columns)
        out = {}
        for c in self.columns:
            s = df[c]
            lv = self.levels.get(c)
            if lv is None:  # integers kept as such: C(dose) names its columns C(dose)[T.2], not [T.2.0]
                num = pd.to_numeric(s, errors="coerce") if not pd.api.types.is_bool_dtype(s) else s
                if pd.api.types.is_integer_dtype(num) and not num.isna().any():
                    out[c] = num.to_numpy(dtype=np.int64)
                else:
                    out[c] = as_numeric(s, f"covariate column '{c}'")
            else:
                unknown = set(pd.unique(s.dropna())) - set(lv)
                if unknown:
                    _raise_unknown(c, unknown, lv)
                out[c] = pd.Categorical(_as_levels(s, lv), categories=lv)
        return pd.DataFrame(out)

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """Numeric (n, P) matrix for ``df``; unknown category levels and missing columns are errors."""
        if not self.names:
            _check_present(df, self.columns)
            return np.zeros((len(df), 0))
        frame = self._frame(df)
        self._check_known(frame)
        spec = self._spec()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mm = spec.get_model_matrix(frame)
            except DataError:
                raise
            except Exception as e:
                raise DataError(f"the covariates {self._label()} cannot be coded for these data: {_one_line(e)}") from None
        for w in caught:
            if type(w.message).__name__ == "DataMismatchWarning":
                raise DataError(f"the covariates {self._label()}: {_one_line(w.message)} (known levels: "
                                f"{self._categories()})")
        missing = [n for n in self.names if n not in mm.columns]
        if missing:  # pragma: no cover - formulaic rebuilt a different structure
            raise DataError(f"the covariates {self._label()} gave columns {list(mm.columns)}, not {list(self.names)}")
        X = mm[list(self.names)].to_numpy(dtype=float)
        return X

    def _spec(self):
        spec = self.__dict__.get("_spec_cache")
        if spec is None:
            from formulaic import ModelSpec

            encoder, transforms = state_from_json(self.state)
            spec = ModelSpec(formula=self._rhs(), encoder_state=encoder, transform_state=transforms, na_action="ignore")
            object.__setattr__(self, "_spec_cache", spec)
        return spec

    def _categories(self) -> dict:
        return {e: s["state"].get("categories") for e, s in self.state.get("encoder", {}).items()
                if s["kind"] == "categorical"}

    def _check_known(self, frame: pd.DataFrame) -> None:
        """``C(x)`` of a numeric column x: values of x outside the fitted categories are an error."""
        for expr, cats in self._categories().items():
            c = _factor_column(expr)
            if c is None or cats is None:
                continue
            if c in frame.columns and self.levels.get(c) is None:
                unknown = set(pd.unique(pd.Series(frame[c]).dropna())) - set(cats)
                if unknown:
                    _raise_unknown(c, unknown, cats)

    def typical(self) -> dict:
        """A valid value of each column read (but the time column), where one is known: the first level,
        the first category of a ``C()`` factor, or the mean; for probes of a fitted model."""
        out = {}
        for c in self.columns:
            if c == self.time:
                continue
            lv = self.levels.get(c)
            if lv is not None:
                out[c] = lv[0]
            elif c in self.means:
                out[c] = self.means[c]
        for expr, cats in self._categories().items():
            c = _factor_column(expr)
            if c is not None and cats and c in self.levels and self.levels[c] is None:
                out[c] = cats[0]
        return out

    @property
    def categorical(self) -> dict[str, bool]:
        """Whether each column read (but the time column) is coded by levels."""
        return {c: self.levels.get(c) is not None for c in self.columns if c != self.time}

    # ---------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return {"columns": list(self.columns), "levels": dict(self.levels), "formula": self.formula, "time": self.time,
                "names": list(self.names), "state": self.state, "means": dict(self.means)}

    @classmethod
    def from_dict(cls, d: dict) -> "CovariateEncoding":
        """The coding of :meth:`to_dict`; a dict without ``state`` (files written before formulas:
        ``{"columns", "levels"}``) is rebuilt from its levels."""
        columns, levels = tuple(d["columns"]), dict(d["levels"])
        if "state" not in d:
            return cls.from_levels(columns, levels)
        return cls(columns, levels, d.get("formula"), d.get("time"), tuple(d["names"]), dict(d["state"]),
                   dict(d.get("means") or {}))

    @classmethod
    def numeric(cls, names: Sequence[str]) -> "CovariateEncoding":
        """Numeric columns taken as they are (covariates given as arrays)."""
        names = tuple(names)
        return cls.from_levels(names, {c: None for c in names}) if names else cls()


def missing_rows(df: pd.DataFrame, categorical: dict[str, bool]) -> dict[str, np.ndarray]:
    """Per covariate column: the rows whose value is missing (or, for a numeric column, not finite)."""
    out = {}
    for c, cat in categorical.items():
        out[c] = df[c].isna().to_numpy() if cat else ~np.isfinite(as_numeric(df[c], f"covariate column '{c}'"))
    return out


def _factor_column(expr: str) -> str | None:
    """The column of a factor that is a column (``diet``) or its categories (``C(diet, ...)``), else None."""
    m = re.fullmatch(r"C\(\s*(`[^`]+`|[\w.]+)\s*(,.*)?\)", expr, flags=re.S)
    if m:
        return _strip_quotes(m.group(1))
    return None if "(" in expr else _strip_quotes(expr)


def _strip_quotes(expr: str) -> str:
    return expr[1:-1] if len(expr) > 1 and expr[0] == expr[-1] == "`" else expr


def _check_present(df: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"covariate column(s) {missing} not found in the data; the columns are: {list(df.columns)}")


def _raise_unknown(c: str, unknown: set, known: list) -> None:
    raise DataError(f"covariate {unseen_levels_message(c, unknown, known)}")


def unseen_levels_message(c: str, unknown: set, known: list) -> str:
    """"'c' has level(s) [...] not seen when the model was fitted (known levels: [...])", with a hint where the
    unseen levels are fitted ones written as another type ('3' against 3)."""
    as_text = {str(k) for k in known}
    hint = ""
    if known and all(str(u) in as_text for u in unknown):  # '3' against 3, or 3 against '3'
        given, fitted = type(next(iter(unknown))).__name__, type(known[0]).__name__
        hint = (f"; they match fitted levels written as another type ({given} here, {fitted} when fitted): convert "
                f"the column, e.g. df['{c}'].astype('{fitted}')")
    return (f"'{c}' has level(s) {sorted(map(str, unknown))} not seen when the model was fitted (known levels: "
            f"{list(known)}){hint}")
