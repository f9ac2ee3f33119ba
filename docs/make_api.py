"""Write docs/api.md, the API reference, from the docstrings of dmlmm's public API.

Usage (from the repository root, with dmlmm importable):

    python docs/make_api.py            # (re)write docs/api.md
    python docs/make_api.py --check    # exit 1 if docs/api.md is out of date
    python docs/make_api.py --out -    # print to standard output

Only the standard library (inspect) is used. The numpydoc-style docstrings are
turned into Markdown: section headers ("Parameters" over a line of dashes)
become bold labels, "name : type" entries become list items, Sphinx roles
(:class:`X`, :func:`X`, ...) and ``double backticks`` become inline code, and
indented blocks after "::" stay code blocks.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
DEFAULT_OUT = DOCS / "api.md"

# (section title, intro, [(import path, members to list or None for all public ones, note)]);
# "a.X|b.X" documents the first alternative that imports.
SECTIONS: list[tuple[str, str, list[tuple[str, list[str] | None, str]]]] = [
    (
        "Data",
        "Long data (one row per observation) is validated into a `Longitudinal`; the default "
        "random-effects design is a `SplineBasis` of time.",
        [
            ("dmlmm.Longitudinal", None, ""),
            ("dmlmm.SplineBasis", None, ""),
            ("dmlmm.times_from_dates", None, ""),
            ("dmlmm.dates.DateTime", ["apply", "dates_at", "describe"], ""),
            ("dmlmm.covariates.CovariateEncoding", ["learn", "encode", "to_dict", "from_dict"],
             "What `covariates=` becomes: a list of columns or the right-hand side of a formula "
             "(`\"diet * age\"`), coded against the model's mean curve (`dmlmm.covariates`)."),
        ],
    ),
    (
        "Models",
        "All three follow scikit-learn conventions: hyperparameters in the constructor, `fit` returns "
        "the model, fitted attributes end in `_`.",
        [
            ("dmlmm.LinearMixedModel|dmlmm.lmm.LinearMixedModel", None, ""),
            ("dmlmm.models.VariationalLongitudinalModel", [],
             "The shared base class of `MixtureLMM` and `DeepMixtureLMM`: its fitted attributes "
             "are theirs, and its methods are listed under `DeepMixtureLMM`."),
            ("dmlmm.MixtureLMM", [],
             "Same methods as `DeepMixtureLMM` (below): both inherit them from "
             "`dmlmm.models.VariationalLongitudinalModel`."),
            ("dmlmm.DeepMixtureLMM", None, ""),
        ],
    ),
    (
        "Saved models",
        "",
        [("dmlmm.load", None, "`model.save(path)` writes the file (see `DeepMixtureLMM.save`).")],
    ),
    (
        "Model selection",
        "",
        [
            ("dmlmm.selection.select_model", None, ""),
            ("dmlmm.selection.latent_grid", None, ""),
        ],
    ),
    (
        "Checking the bands on your data",
        "Hold out each subject's last visit, refit, forecast it, and count the bands that hold it "
        "(`dmlmm.calibration`).",
        [
            ("dmlmm.calibration.check_bands", None, ""),
            ("dmlmm.calibration.BandCheck", None, ""),
        ],
    ),
    (
        "Class summaries and outcomes by cluster",
        "lcmm's `summarytable` and `postprob` for a fitted mixture (`model.class_summary()`, "
        "`model.posterior_table(level)`, built from the pure functions of `dmlmm.summaries`), and "
        "the clusters against outcomes, survival and characteristics (`dmlmm.outcomes`).",
        [
            ("dmlmm.models.VariationalLongitudinalModel.class_summary", None, ""),
            ("dmlmm.models.VariationalLongitudinalModel.posterior_table", None, ""),
            ("dmlmm.summaries.classification_entropy", None, ""),
            ("dmlmm.summaries.relative_entropy", None, ""),
            ("dmlmm.summaries.icl", None, ""),
            ("dmlmm.summaries.class_sizes", None, ""),
            ("dmlmm.summaries.posterior_table", None, ""),
            ("dmlmm.outcomes.outcome_table", None, ""),
            ("dmlmm.outcomes.OutcomeTable", [], ""),
            ("dmlmm.outcomes.survival_by_cluster", None, ""),
            ("dmlmm.outcomes.SurvivalByCluster", [], ""),
            ("dmlmm.outcomes.baseline_table", None, ""),
            ("dmlmm.outcomes.BaselineTable", [], ""),
            ("dmlmm.outcomes.outcome_report", None, ""),
            ("dmlmm.outcomes.subject_values", None, ""),
        ],
    ),
    (
        "Simulated data (the simulation study's data generating processes)",
        "",
        [
            ("dmlmm.simulate.dgp1", None, ""),
            ("dmlmm.simulate.dgp2", None, ""),
            ("dmlmm.simulate.dgp3", None, ""),
            ("dmlmm.simulate.SimulatedData", None, ""),
            ("dmlmm.simulate.split_heldout", None, ""),
        ],
    ),
    (
        "Metrics",
        "Pure functions on long frames (`dmlmm.metrics`).",
        [
            ("dmlmm.metrics.log_rmse", None, ""),
            ("dmlmm.metrics.coverage", None, ""),
            ("dmlmm.metrics.coverage_by_subject", None, ""),
            ("dmlmm.metrics.adjusted_rand_index", None, ""),
            ("dmlmm.metrics.contingency_table", None, ""),
            ("dmlmm.metrics.summarise", None, ""),
            ("dmlmm.metrics.summarise_log_score", None, ""),
        ],
    ),
    (
        "Research-code compatibility",
        "The interface of the DMLMM research code on top of dmlmm's engine (`dmlmm.compat`).",
        [
            ("dmlmm.compat.DMLMM", None, ""),
            ("dmlmm.compat.design_matrix", None, ""),
        ],
    ),
    (
        "Exceptions and warnings",
        "All exported from `dmlmm` except `ModelFileError` (`dmlmm.io`).",
        [
            ("dmlmm.DataError", [], ""),
            ("dmlmm.NotFittedError", [], ""),
            ("dmlmm.io.ModelFileError", [], ""),
            ("dmlmm.ConvergenceWarning", [], ""),
            ("dmlmm.IdentifiabilityWarning", [], ""),
            ("dmlmm.ExtrapolationWarning", [], ""),
            ("dmlmm.EmptyComponentWarning", [], ""),
            ("dmlmm.DataWarning", [], ""),
        ],
    ),
]

_SECTION_NAMES = {"parameters", "returns", "attributes", "raises", "yields", "other parameters",
                  "warns", "see also", "notes", "examples"}
_ITEM_SECTIONS = {"parameters", "returns", "attributes", "raises", "yields", "other parameters", "warns"}


# ---------------------------------------------------------------------------- objects
def resolve(path: str):
    """Import ``a.b.c``: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def public_members(cls) -> list[str]:
    """Public methods and properties of ``cls`` defined in dmlmm (own or inherited), in source order."""
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("dmlmm"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in names:
                continue
            if isinstance(value, (staticmethod, classmethod, property)) or inspect.isfunction(value):
                names.append(name)
    own_first = [n for n in names if n in vars(cls)] + [n for n in names if n not in vars(cls)]
    return own_first


# ---------------------------------------------------------------------------- signatures
def _annotation(a) -> str:
    if a is inspect.Parameter.empty:
        return ""
    if isinstance(a, str):
        return a.strip("'\"")
    return inspect.formatannotation(a)


def format_signature(name: str, obj, drop_self: bool = False) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    parts: list[str] = []
    star_done = False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
            text = "*" + p.name
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + p.name
        else:
            text = p.name
        ann = _annotation(p.annotation)
        if ann:
            text += f": {ann}"
        if p.default is not inspect.Parameter.empty:
            text += (" = " if ann else "=") + repr(p.default)
        parts.append(text)
    ret = _annotation(sig.return_annotation)
    tail = f" -> {ret}" if ret else ""
    one = f"{name}({', '.join(parts)}){tail}"
    if len(one) <= 88:
        return one
    inner = "".join(f"    {p},\n" for p in parts)
    return f"{name}(\n{inner}){tail}"


# ---------------------------------------------------------------------------- docstrings
def inline(text: str) -> str:
    """Sphinx roles and ``literals`` to Markdown inline code."""
    text = re.sub(r":(?:class|func|meth|mod|data|attr|exc|obj):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return text


def _is_rule(line: str) -> bool:
    s = line.strip()
    return len(s) >= 3 and set(s) == {"-"}


def _blocks(lines: list[str]) -> list[tuple[str | None, list[str]]]:
    """Split a docstring into (section title or None, lines) blocks."""
    blocks: list[tuple[str | None, list[str]]] = [(None, [])]
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and _is_rule(lines[i + 1]) and not lines[i].startswith(" "):
            blocks.append((lines[i].strip(), []))
            i += 2
            continue
        blocks[-1][1].append(lines[i])
        i += 1
    return [(t, b) for t, b in blocks if t is not None or any(x.strip() for x in b)]


def _items(lines: list[str]) -> list[str]:
    """numpydoc entries ("name : type" + indented description) to Markdown list items."""
    out: list[str] = []
    cur: tuple[str, list[str]] | None = None

    def flush():
        if cur is None:
            return
        head, desc = cur
        if not desc and " : " not in head and " " in head.strip() and head.strip().endswith("."):
            out.extend(["", inline(head.strip())])  # a closing sentence, not an entry
            return
        if " : " in head:
            names, typ = head.split(" : ", 1)
            typ = typ.strip()
            if typ.endswith(".") and not desc:  # "name : description." without a type
                label = f"`{names.strip()}`"
                desc = [typ]
            else:
                label = f"`{names.strip()}` ({inline(typ)})"
        else:
            label = f"`{head.strip()}`" if re.fullmatch(r"[\w., *]+", head.strip()) else inline(head.strip())
        text = " ".join(inline(d.strip()) for d in desc if d.strip())
        out.append(f"- {label}" + (f": {text}" if text else ""))

    for line in lines:
        if not line.strip():
            continue
        if not line.startswith(" "):
            flush()
            cur = (line, [])
        elif cur is not None:
            cur[1].append(line)
        else:
            cur = (line.strip(), [])
    flush()
    return out


def _prose(lines: list[str]) -> list[str]:
    """Paragraphs, bullet lists and literal blocks (after ``::`` or indented) to Markdown."""
    out: list[str] = []
    i = 0
    literal_next = False
    para: list[str] = []

    def flush_para():
        if para:
            out.append(inline(" ".join(p.strip() for p in para)))
            out.append("")
            para.clear()

    while i < len(lines):
        line = lines[i]
        if not line.strip():
            flush_para()
            i += 1
            continue
        if line.startswith("    ") and (literal_next or not para):
            flush_para()
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:] if lines[i].strip() else "")
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out.extend(["```", *block, "```", ""])
            literal_next = False
            continue
        stripped = line.strip()
        if stripped.startswith(("- ", "* ")):
            flush_para()
            item = [stripped[2:]]
            i += 1
            while i < len(lines) and lines[i].startswith("  ") and lines[i].strip() and not lines[i].strip().startswith(("- ", "* ")):
                item.append(lines[i].strip())
                i += 1
            out.append("- " + inline(" ".join(item)))
            if i >= len(lines) or not lines[i].strip().startswith(("- ", "* ")):
                out.append("")
            continue
        if stripped.endswith("::"):
            para.append(stripped[:-1])
            flush_para()
            literal_next = True
            i += 1
            continue
        para.append(line)
        i += 1
    flush_para()
    return out


def docstring_markdown(obj) -> list[str]:
    doc = inspect.getdoc(obj)
    if not doc:
        return []
    out: list[str] = []
    for title, lines in _blocks(doc.splitlines()):
        if title is not None:
            out.append(f"**{inline(title)}**")
            out.append("")
            if title.lower() in _ITEM_SECTIONS or title.lower().startswith(("fitted attributes", "attributes")):
                out.extend(_items(lines))
                out.append("")
                continue
        out.extend(_prose(lines))
    while out and not out[-1].strip():
        out.pop()
    out.append("")
    return out


# ---------------------------------------------------------------------------- rendering
def anchor(title: str) -> str:
    a = title.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def first_available(path: str) -> str:
    """``"a.X|b.X"``: the first alternative that imports (e.g. a top-level export, else its module)."""
    alternatives = path.split("|")
    for alt in alternatives:
        try:
            resolve(alt)
            return alt
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {alternatives} can be imported")


def render_object(path: str, members: list[str] | None, note: str) -> list[str]:
    obj = resolve(path)
    short = path.split(".")[-1]
    out = [f"### `{path}`", ""]
    if inspect.isclass(obj):
        kind = "exception" if issubclass(obj, BaseException) else "class"
        if issubclass(obj, BaseException):
            bases = ", ".join(b.__name__ for b in obj.__bases__)
            out += [f"*{kind}* `{short}({bases})`", ""]
        elif obj.__init__ is object.__init__:
            out += ["```python", f"class {short}", "```", ""]
        else:
            out += ["```python", f"class {format_signature(short, obj)}", "```", ""]
    else:
        out += ["```python", format_signature(short, obj), "```", ""]
    out += docstring_markdown(obj)
    if note:
        out += [f"> {note}", ""]
    if inspect.isclass(obj) and not issubclass(obj, BaseException):
        names = public_members(obj) if members is None else members
        for name in names:
            raw = inspect.getattr_static(obj, name)
            attr = getattr(obj, name)
            out.append(f"#### `{short}.{name}`")
            out.append("")
            if isinstance(raw, property):
                out += [f"*property*", ""]
                out += docstring_markdown(raw.fget)
            else:
                prefix = "classmethod " if isinstance(raw, classmethod) else ("staticmethod " if isinstance(raw, staticmethod) else "")
                func = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
                sig = format_signature(name, func, drop_self=not isinstance(raw, staticmethod))
                out += ["```python", f"{prefix}{sig}", "```", ""]
                out += docstring_markdown(attr)
    return out


def render() -> str:
    import dmlmm

    out = [
        "# API reference",
        "",
        f"<!-- Generated by docs/make_api.py from the docstrings of dmlmm {dmlmm.__version__}; "
        "do not edit by hand: run `python docs/make_api.py`. -->",
        "",
        f"dmlmm {dmlmm.__version__}. Generated from the docstrings by `docs/make_api.py`. For a guided "
        "tour see [Getting started](getting_started.md); for the statistics see [Models](models.md).",
        "",
        "## Contents",
        "",
    ]
    for title, _, entries in SECTIONS:
        out.append(f"- [{title}](#{anchor(title)})")
        for path, _, _ in entries:
            path = first_available(path)
            out.append(f"  - [`{path}`](#{anchor(path)})")
    out.append("")
    for title, intro, entries in SECTIONS:
        out += [f"## {title}", ""]
        if intro:
            out += [intro, ""]
        for path, members, note in entries:
            out += render_object(first_available(path), members, note)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output file, or - for standard output")
    ap.add_argument("--check", action="store_true", help="exit 1 if the output file differs from what would be written")
    args = ap.parse_args(argv)
    text = render()
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.out)
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run python docs/make_api.py", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
