"""The clusters of a fitted model: numbered by size, and the subject tables and arrays in that numbering.

A mixin of :class:`~dmlmm.models.base.VariationalLongitudinalModel`. The model's clusters
are the paths through its layers (one component per layer); the outputs number them by
their expected number of subjects, 0 the largest (``clusters_``), and the first-layer
components likewise (``groups_``). ``_path_order`` and ``_group_order`` map the prior's
numbering to the outputs'.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..distributed import is_dask_collection

__all__ = ["ClusterState"]


class ClusterState:
    """Mixin: the cluster numbering, the per-subject probability tables and each cluster's prior arrays."""

    def _set_cluster_tables(self, sizes: np.ndarray) -> None:
        paths = self.prior_.path_components()  # (M, L) in pruned numbering
        order = self._path_order
        mix = self.prior_.point_mixture(self.params_.prior)
        # each layer's components numbered by their expected subjects, 0 largest: layer 1's as groups_
        ranks = [_size_ranks(paths[:, l], sizes, len(self.components_kept_[l])) for l in range(paths.shape[1])]
        cols = {f"layer{l + 1}": rank[paths[order, l]] for l, rank in enumerate(ranks)}
        self.clusters_ = pd.DataFrame(
            {**cols, "weight": mix.weights[order], "n_subjects": sizes[order]},
            index=pd.RangeIndex(len(order), name="cluster"),
        )
        self._group_of_path = ranks[0]
        self._group_order = np.argsort(ranks[0], kind="stable")

    def _proba_frame(self, resp: np.ndarray, subjects: pd.Index) -> pd.DataFrame:
        return pd.DataFrame(resp[:, self._path_order], index=subjects, columns=pd.RangeIndex(resp.shape[1], name="cluster"))

    def _group_frame(self, resp: np.ndarray, subjects: pd.Index) -> pd.DataFrame:
        first = self.prior_.path_components()[:, 0]
        k1 = len(self.components_kept_[0])
        onehot = np.eye(k1)[self._group_of_path[first]]
        return pd.DataFrame(resp @ onehot, index=subjects, columns=pd.RangeIndex(k1, name="group"))

    @staticmethod
    def _labels_from(proba: pd.DataFrame) -> pd.Series:
        if is_dask_collection(proba):  # a Dask prediction (dmlmm.distributed.predict): labels per partition
            from ..distributed.outputs import labels_of

            return proba.map_partitions(labels_of)
        return pd.Series(proba.to_numpy().argmax(axis=1), index=proba.index, name=proba.columns.name)

    # -------------------------------------------------------------- named fitted arrays (clusters_ order)
    @property
    def weights_(self) -> np.ndarray:
        """Prior weight of each cluster (path), (M,), numbered as ``clusters_``."""
        self._check_fitted()
        return self.prior_.point_mixture(self.params_.prior).weights[self._path_order]

    @property
    def means_(self) -> np.ndarray:
        """Prior mean of each cluster's spline coefficients, (M, D), user scale (curve = ``offset_`` + B(t) b)."""
        self._check_fitted()
        means = self.prior_.point_mixture(self.params_.prior).means[self._path_order]
        return self.design_.spline_coefficients(means) * self.design_.y_scale

    @property
    def covariances_(self) -> np.ndarray:
        """Covariance of each cluster's spline coefficients, (M, D, D), user scale."""
        self._check_fitted()
        covs = self.prior_.point_mixture(self.params_.prior).covs[self._path_order]
        R = self.design_.rotation
        if R is not None:
            covs = R @ covs @ R.T
        return covs * self.design_.y_scale**2


def _size_ranks(component: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """Each of a layer's ``k`` components' rank by its expected number of subjects, 0 largest (ties in
    component order); ``component`` (M,): each path's component in the layer, ``sizes`` (M,): the paths'."""
    order = np.argsort(-np.bincount(component, weights=sizes, minlength=k), kind="stable")
    rank = np.empty(k, dtype=int)
    rank[order] = np.arange(k)
    return rank
