"""The rooms of the code import only rooms below them (docs/architecture.md)."""

import ast
from pathlib import Path

import dmlmm

PACKAGE = Path(dmlmm.__file__).parent

# module (top-level file or subpackage) -> room; rooms share one job (docs/architecture.md)
ROOM = {
    "exceptions": "helpers", "_linalg": "helpers", "_runs": "helpers", "_estimator": "helpers", "_recorded": "helpers", "_dask_frames": "helpers", "expfam": "factors", "accel": "factors",
    "data": "data", "columns": "data", "covariates": "data", "sufficient": "data", "basis": "data",
    "formula_state": "data", "standardise": "data", "response_transform": "data", "metrics": "data", "demo": "data", "simulate": "simulate",
    "priors": "priors", "inference": "inference", "prediction": "prediction", "continuation": "prediction", "prediction_scales": "prediction",
    "heldout": "prediction",
    "models": "models", "lmm": "lmm",
    "summaries": "summaries", "outcomes": "summaries", "selection": "summaries", "calibration": "summaries",
    "io": "io", "io_lmm": "io", "_model_checks": "io",
    "distributed": "distributed",
    "report": "report", "cli": "cli", "cli_input": "cli", "cli_output": "cli", "cli_parquet": "cli", "cli_dask": "cli",
    "dates": "data",
    "compat": "cli", "__init__": "package",
}
# room -> level; a room may import rooms of a lower level
LEVELS = {
    "helpers": 0, "factors": 1, "data": 2, "simulate": 3, "priors": 3, "inference": 4, "prediction": 5,
    "models": 6, "lmm": 7, "summaries": 8, "io": 8, "distributed": 8, "report": 9, "cli": 10, "package": 11,
}
# known upward imports, to be removed (docs/architecture.md, "Known exceptions")
KNOWN = {("models", "io"), ("lmm", "io"), ("models", "summaries"), ("models", "distributed")}


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_modules(path: Path) -> set[str]:
    """Top-level modules of dmlmm imported by ``path`` (relative imports, at any depth in the file)."""
    pkg = list(path.relative_to(PACKAGE).parent.parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = pkg[: len(pkg) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if target:
                out.add(target[0])
            else:  # "from . import x" at the top level
                out.update(a.name for a in node.names)
    return out


def test_every_module_has_a_room():
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    assert modules <= ROOM.keys(), f"modules without a room: {sorted(modules - ROOM.keys())}"


def test_rooms_import_only_rooms_below():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = ROOM[_module(path)]
        for target in {ROOM[m] for m in _imported_modules(path) if m in ROOM} - {room}:
            if LEVELS[target] >= LEVELS[room] and (room, target) not in KNOWN:
                bad.append(f"{path.relative_to(PACKAGE)} ({room}) imports {target}")
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)
