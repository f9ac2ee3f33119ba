"""Checks of a held-out score's two frames (``score(data, condition_on=...)``), shared by every model.

The held-out log score of a subject is the density of its scored visits given the visits it is
conditioned on. Two mistakes make the number look better or mean something else without an error:
scoring a visit that is also conditioned on (it is then predicted from itself), and scoring subjects
that have nothing to condition on (their marginal density is averaged in with the others' held-out
ones). Both are said, with the user's own row labels and subjects.
"""

from __future__ import annotations

import warnings

import pandas as pd

__all__ = ["warn_held_out_frames"]


def warn_held_out_frames(scored: pd.DataFrame, given: pd.DataFrame, subject: str, time: str | None,
                         response: str | None, stacklevel: int = 3) -> None:
    """UserWarnings for rows of ``scored`` that ``given`` holds too (same subject, time and response; ``time``
    None: a formula model, whose rows are not checked) and for subjects of ``scored`` without rows in ``given``.
    Columns that a frame lacks are left to the callers' checks."""
    if subject not in scored.columns or subject not in given.columns:
        return
    keys = [c for c in (subject, time, response) if c is not None and c in scored.columns and c in given.columns]
    if len(keys) == 3:
        both = pd.MultiIndex.from_frame(scored[keys]).isin(pd.MultiIndex.from_frame(given[keys]))
        if both.any():
            shown = list(scored.index[both][:10])
            warnings.warn(
                f"{int(both.sum())} row(s) of the data to score are also in condition_on (rows {shown}"
                f"{' ...' if both.sum() > 10 else ''}): each is scored given itself, which overstates the held-out "
                "score; condition on the other visits only", UserWarning, stacklevel=stacklevel)
    alone = pd.Index(pd.unique(scored[subject])).difference(pd.Index(pd.unique(given[subject])), sort=False)
    if len(alone):
        warnings.warn(
            f"{len(alone)} of the {scored[subject].nunique()} subject(s) to score have no rows in condition_on "
            f"({list(alone[:10])}{' ...' if len(alone) > 10 else ''}): their visits are scored by their marginal "
            "density, which score() averages in with the others' held-out scores", UserWarning,
            stacklevel=stacklevel)
