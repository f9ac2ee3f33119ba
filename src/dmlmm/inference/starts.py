"""Several starting sizes: a generous number of components must not end below a small one.

Coordinate ascent from an overfitted start (say ``K = (10, 5)``) spreads the
subjects over many small components; the sparse Dirichlet prior then empties
most of them, but the survivors can settle in a worse optimum than a start
with two or three components reaches, and delete moves cannot undo that.
Measured before this module existed (DGP 1 and 3, seeds 0-2, 20 and 30 basis
functions): deep-mixture fits from ``(10, 5)`` ended up to 55 nats below the
best of the starts ``(2, 1)``, ``(3, 1)``, ``(5, 2)``, mixtures from ``K = 10``
up to 37 nats below ``K = 2`` (docs/models.md has the table).

So a full-batch fit explores a few starting sizes before it commits to one:

1. the requested sizes, then smaller first layers from the ladder 2, 3, 5, 10,
   20, 50 (deeper layers scaled down in proportion, at least one component):
   for ``(10, 5)`` the starts are ``(10, 5)``, ``(2, 1)``, ``(3, 1)`` and ``(5, 2)``;
   at most four starts, each explored for at most ``max_iter // 8`` iterations
   (fewer starts when ``max_iter`` leaves less than 25 iterations to each);
2. each start is initialised as usual (ridge fits, k-means, per-cluster factor
   analysis) from its own generator, seeded by one draw from the fit's
   ``random_state`` generator and the start's sizes, so that a start of given
   sizes is the same in every fit that tries it; it is explored by coordinate
   ascent with the loose tolerance of the delete moves' first stage;
3. the start with the highest ELBO goes on (delete moves, then the final run
   with the exact tolerance) with what is left of the iteration budget; when
   that is not the requested start, the requested start is finished too and
   the higher ELBO kept, its final run giving up once its recent rate of ascent
   cannot reach the kept run's ELBO (``VIConfig.give_up_below``). When the fit competes with
   another one already made (``to_beat``: the other prior variant, e.g. ``loading_order="auto"``'s
   two orders, noise model or restart), both finishing runs race that one's ELBO too.

Every start's prior is the requested model's with fewer components (same
hyperparameters): all are special cases of the requested model, and their
ELBOs, with pruned components gone, compare directly. The iterations of every
start count against ``max_iter`` and in ``n_iter``; ``elbo_history`` is the
chosen start's trace.

What this guarantees: the fit's ELBO is at least the best exploration-stage
ELBO of its starts (ascent and accepted delete moves never lower it), and a fit
whose requested sizes are larger than a ladder size ``s`` explores the very
start that a fit requesting ``s`` explores (same generator, same budget cap):
when both choose the same start they end at the same ELBO, unless the iteration
budget binds. The rest (a larger fit does not end below a smaller one) is
measured, not proved: the choice is made on ELBOs after exploration, not at
convergence.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from ..sufficient import SufficientStats
from ..exceptions import ConvergenceWarning
from ..priors.base import RandomEffectsPrior
from .engine import VariationalParams, VIConfig, VIResult, run_vi
from .moves import explore_config, run_vi_with_moves

__all__ = ["LADDER", "MAX_STARTS", "start_sizes", "run_vi_with_starts"]

#: First-layer sizes tried below the requested one.
LADDER: tuple[int, ...] = (2, 3, 5, 10, 20, 50)
#: Most starts explored (the requested one included).
MAX_STARTS = 4
#: Fewest exploration iterations a start needs to be worth running.
MIN_EXPLORE = 25

Init = Callable[[RandomEffectsPrior, np.random.Generator], VariationalParams]


def start_sizes(counts: tuple[int, ...], ladder: tuple[int, ...] = LADDER) -> list[tuple[int, ...]]:
    """The requested sizes, then each ladder size below the first layer's, deeper layers scaled.

    >>> start_sizes((10, 5))
    [(10, 5), (2, 1), (3, 1), (5, 2)]
    >>> start_sizes((3,))
    [(3,), (2,)]
    """
    counts = tuple(int(c) for c in counts)
    k1 = counts[0]
    out = [counts]
    for k in ladder:
        if k >= k1:
            break
        out.append((k,) + tuple(max(1, min(c, c * k // k1)) for c in counts[1:]))
    return out


def run_vi_with_starts(
    stats: SufficientStats,
    prior: RandomEffectsPrior,
    init: Init,
    resize: Callable[[tuple[int, ...]], RandomEffectsPrior],
    config: VIConfig,
    rng: np.random.Generator,
    moves: bool = True,
    ladder: tuple[int, ...] | None = None,
    callback=None,
    to_beat: float | None = None,
    extra_starts: Sequence[Init] = (),
) -> VIResult:
    """Explore the requested start and smaller ones, then run the best to convergence.

    Parameters
    ----------
    stats : SufficientStats of all subjects.
    prior : the requested random-effects prior.
    init : ``init(prior, generator)`` gives a start's VariationalParams.
    resize : ``resize(sizes)`` gives the requested model's prior with ``sizes`` components per layer.
    config : VIConfig of the fit; ``max_iter`` bounds the iterations of all stages together.
    rng : the fit's Generator: one draw seeds the starts; minibatch draws.
    moves : bool
        Delete moves after the exploration (as :func:`~dmlmm.inference.moves.run_vi_with_moves`).
    ladder : first-layer sizes of the smaller starts (default :data:`LADDER`; empty: the requested start only).
    to_beat : float, optional
        The ELBO of a fit already made that this one competes with (another prior variant, noise model
        or ``n_init`` restart of the same model, :meth:`~dmlmm.models.fitting.Fitting.fit`): the finishing
        runs race it and give up once they cannot reach it (``VIConfig.give_up_below``); the exploration
        does not. A fit that gave up ends below ``to_beat`` and is not converged.
    extra_starts : inits (as ``init``) of more starts of the requested sizes, explored after the sizes' own
        when ``max_iter`` leaves room for four starts (each from its own generator, seeded by the same draw,
        the sizes and its position): the smooth start of fewer shared visit times than basis functions
        (:func:`dmlmm.models.starting.smooth_roughness`). They compete as the sizes' starts do.
    """
    base = int(rng.integers(2**63))
    sizes = start_sizes(tuple(int(k) for k in prior.path_components().max(axis=0) + 1), LADDER if ladder is None else ladder)
    total = config.max_iter
    cap = min(max(MIN_EXPLORE, total // 8), max(total // 2, 1))
    n_starts = min(len(sizes), MAX_STARTS, max(1, (total // 2) // cap))
    explore = replace(explore_config(config), max_iter=cap)
    explored: list[VIResult] = []
    spent = 0
    plan = [(prior if i == 0 else resize(size), init, [base, *size]) for i, size in enumerate(sizes[:n_starts])]
    if (total // 2) // cap >= MAX_STARTS:  # the extra starts when the budget has room for four starts
        plan += [(prior, extra, [base, *sizes[0], j + 1]) for j, extra in enumerate(extra_starts)]
    for start_prior, start_init, seed in plan:
        start = start_init(start_prior, np.random.default_rng(seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = run_vi(stats, start_prior, start, explore, rng, callback)
        spent += res.n_iter
        explored.append(res)
    best = max(explored, key=lambda r: r.elbo)
    best.n_iter = spent  # every start's iterations count against the budget
    final = _finish(stats, best, replace(config, give_up_below=to_beat), rng, moves, callback, n_starts)
    requested = explored[0]
    if best is not requested and final.n_iter < total:
        # an exploring run at a loose tolerance can favour a small start that converges sooner but
        # ends lower: the requested start is finished too (within what is left of the budget) and
        # the higher final ELBO is kept, so the fit never ends below its requested start's own end;
        # its final run races the kept one's ELBO and gives up once its recent rate cannot reach it
        requested.n_iter = final.n_iter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            target = final.elbo if to_beat is None else max(final.elbo, to_beat)
            alt = _finish(stats, requested, replace(config, give_up_below=target), rng, moves, callback, n_starts)
        if alt.elbo > final.elbo:
            if not alt.converged and not alt.gave_up:  # its own warning was silenced with the rest of this run's
                warnings.warn(
                    f"variational inference used its budget of max_iter={total} iterations before the ELBO "
                    f"converged: the first {final.n_iter} explored {n_starts} starting sizes and ran the best "
                    f"of them to convergence, the rest went to the requested sizes' start, which ended higher "
                    f"but unconverged; increase max_iter",
                    ConvergenceWarning,
                    stacklevel=3,
                )
            return alt
        final.n_iter = alt.n_iter
    return final


def _finish(
    stats: SufficientStats, res: VIResult, config: VIConfig, rng: np.random.Generator, moves: bool, callback,
    n_starts: int,
) -> VIResult:
    """Delete moves and the final run from an explored start ``res`` (``res.n_iter``: iterations spent so far)."""
    total, spent = config.max_iter, res.n_iter
    if moves:
        return run_vi_with_moves(stats, res.prior, res.params, config, rng, callback=callback, explored=res, stacklevel=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        final = run_vi(stats, res.prior, res.params, replace(config, min_iter=1, max_iter=max(total - spent, 1)), rng, callback)
    if not final.converged and not final.gave_up:  # a run that gave up lost a race: it is not kept
        warnings.warn(
            f"variational inference used its budget of max_iter={total} iterations ({spent} exploring "
            f"{n_starts} starting size(s)) before the ELBO converged; increase max_iter",
            ConvergenceWarning,
            stacklevel=4,
        )
    final.kept = [b[c] for b, c in zip(res.kept, final.kept)]
    final.pruned_at = res.pruned_at + [len(res.elbo_history) + p for p in final.pruned_at]
    final.n_iter += spent
    final.elbo_history = list(res.elbo_history) + list(final.elbo_history)
    return final
