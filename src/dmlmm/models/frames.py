"""What the models take as data: a long pandas frame or a validated :class:`~dmlmm.data.Longitudinal`."""

from __future__ import annotations

import pandas as pd

from ..data import Longitudinal

__all__ = ["FrameLike"]

FrameLike = pd.DataFrame | Longitudinal
