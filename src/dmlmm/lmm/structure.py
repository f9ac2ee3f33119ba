"""Parametrisations of the relative covariance factor Lambda of the random effects.

The random effects of a group have covariance ``Sigma = sigma^2 Lambda Lambda'``
with ``Lambda`` (q x q) lower triangular (lme4's relative covariance factor).
A :class:`CovarianceStructure` says which entries of ``Lambda`` are free and
maps the unconstrained-ish parameter vector ``theta`` to ``Lambda``:

- unstructured ``Sigma``: every lower-triangular entry is a parameter;
- block-diagonal ``Sigma`` (several random terms, e.g. ``(1|g) + (0+x|g)``):
  the lower triangles of the diagonal blocks;
- scaled identity ``Sigma = tau^2 I``: one parameter repeated on the diagonal.

Parameters sitting on the diagonal of ``Lambda`` are bounded below by zero
(a zero there is a boundary fit: a variance of zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CovarianceStructure"]


@dataclass(frozen=True)
class CovarianceStructure:
    """Which entries of the q x q lower-triangular ``Lambda`` are free, and how they map to ``theta``.

    Attributes
    ----------
    dim : int
        q, the number of random effects per group.
    rows, cols : ndarray of int, shape (m,)
        Positions of the non-zero entries of ``Lambda`` (all with ``rows >= cols``).
    which : ndarray of int, shape (m,)
        Index into ``theta`` of each entry (entries may share a parameter).
    kind : str
        ``"unstructured"``, ``"block_diagonal"`` or ``"scaled_identity"`` (for reports).
    """

    dim: int
    rows: np.ndarray
    cols: np.ndarray
    which: np.ndarray
    kind: str = "unstructured"

    # ---------------------------------------------------------------- constructors
    @classmethod
    def unstructured(cls, q: int) -> "CovarianceStructure":
        """All ``q (q + 1) / 2`` lower-triangular entries free (column-major order, as lme4)."""
        return cls.block_diagonal([q])._replace_kind("unstructured")

    @classmethod
    def block_diagonal(cls, sizes: Sequence[int]) -> "CovarianceStructure":
        """Independent unstructured blocks of the given sizes along the diagonal."""
        rows: list[int] = []
        cols: list[int] = []
        start = 0
        for size in sizes:
            for c in range(size):
                for r in range(c, size):
                    rows.append(start + r)
                    cols.append(start + c)
            start += size
        m = len(rows)
        return cls(int(start), np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp),
                   np.arange(m, dtype=np.intp), "block_diagonal")

    @classmethod
    def scaled_identity(cls, q: int) -> "CovarianceStructure":
        """``Lambda = theta_0 I``: one variance ``tau^2 = sigma^2 theta_0^2`` shared by all q effects."""
        idx = np.arange(q, dtype=np.intp)
        return cls(int(q), idx, idx.copy(), np.zeros(q, dtype=np.intp), "scaled_identity")

    def _replace_kind(self, kind: str) -> "CovarianceStructure":
        return CovarianceStructure(self.dim, self.rows, self.cols, self.which, kind)

    # ---------------------------------------------------------------- facts
    @property
    def n_theta(self) -> int:
        """Number of parameters in ``theta``."""
        return int(self.which.max()) + 1 if self.which.size else 0

    @property
    def on_diagonal(self) -> np.ndarray:
        """Boolean (n_theta,): parameter sits on the diagonal of ``Lambda`` (so it is bounded >= 0)."""
        out = np.zeros(self.n_theta, dtype=bool)
        out[self.which[self.rows == self.cols]] = True
        return out

    def block_sizes(self) -> list[int]:
        """Sizes of the diagonal blocks of ``Lambda`` (one block for an unstructured ``Sigma``; each
        coordinate its own for a scaled identity)."""
        sizes, start, reach = [], 0, -1
        for c in range(self.dim):  # a block ends where no entry of Lambda links past the column
            reach = max(reach, int(self.rows[self.cols == c].max(initial=c)))
            if reach == c:
                sizes.append(c + 1 - start)
                start = c + 1
        return sizes

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """Bounds for scipy: ``(0, None)`` for diagonal parameters, free otherwise."""
        return [(0.0, None) if d else (None, None) for d in self.on_diagonal]

    def theta0(self) -> np.ndarray:
        """lme4's starting value: ``Lambda = I``."""
        return self.on_diagonal.astype(float)

    # ---------------------------------------------------------------- maps
    def lam(self, theta: np.ndarray) -> np.ndarray:
        """``Lambda`` (q, q) from ``theta`` (n_theta,)."""
        out = np.zeros((self.dim, self.dim))
        out[self.rows, self.cols] = np.asarray(theta, dtype=float)[self.which]
        return out

    def theta_from_lam(self, lam: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`lam` (entries sharing a parameter are averaged)."""
        vals = np.asarray(lam, dtype=float)[self.rows, self.cols]
        s = np.bincount(self.which, weights=vals, minlength=self.n_theta)
        return s / np.bincount(self.which, minlength=self.n_theta)

    def grad_theta(self, grad_lam: np.ndarray) -> np.ndarray:
        """Chain rule: gradient w.r.t. ``theta`` (n_theta,) from the gradient w.r.t. ``Lambda`` (q, q)."""
        return np.bincount(self.which, weights=grad_lam[self.rows, self.cols], minlength=self.n_theta)

    def to_dict(self) -> dict:
        return {"dim": self.dim, "rows": self.rows.tolist(), "cols": self.cols.tolist(),
                "which": self.which.tolist(), "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict) -> "CovarianceStructure":
        return cls(int(d["dim"]), np.asarray(d["rows"], dtype=np.intp), np.asarray(d["cols"], dtype=np.intp),
                   np.asarray(d["which"], dtype=np.intp), d.get("kind", "unstructured"))
