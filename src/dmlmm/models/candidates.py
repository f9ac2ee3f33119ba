"""The candidates of one fit, one after the other or at once in worker processes (``n_jobs``).

A fit compares candidates by the ELBO and keeps the highest (:mod:`dmlmm.models.fitting`): each
response scale of ``response_transform="auto"``, times each prior variant (``loading_order="auto"``:
orders 2 and 1; ``covariance="auto"``: P-spline and full), times each noise model of ``noise="auto"``.
Every candidate starts from the same random state, and its ``n_init`` restarts run one after the
other within it, so candidates are independent of each other.

In one process (``n_jobs=1``, the default) they run in turn, and a later candidate's finishing runs
race the best ELBO so far: they give up once their recent rate of ascent cannot reach it
(:func:`~dmlmm.inference.starts.run_vi_with_starts`). With ``n_jobs`` > 1 they run at once in worker
processes, each in full (no race: the others' ELBOs are not known yet), and the kept one is the same
fit to the last digit (the workers run the same arithmetic, the local step's own threads included),
unless a run that gave up a race would have ended above the run it raced, which the rule was measured
never to do (docs/performance.md, "A losing rerun of the requested start gives up"). What differs is
bookkeeping of the losers: a losing scale's entry in ``elbo_by_transform_`` is its converged bound, not
the bound where it gave up, and ``n_iter_`` may count a few more iterations of a losing rerun of the
requested start within the kept candidate. With a ``numpy.random.Generator`` as ``random_state``, one
process draws every candidate from that one generator in turn, while each worker starts from a copy
of it as it was before the fit.

Workers are started by ``forkserver`` where the platform has it, else by ``spawn``, never by a bare
``fork`` (forking a process whose BLAS or other threads are running can deadlock); so, as with any
``multiprocessing`` code, a script that fits with ``n_jobs`` > 1 must guard its top level with
``if __name__ == "__main__":`` (without it the workers fail to start, and the fit says so and runs in
its own process, as it does in a daemonic process such as a ``multiprocessing.Pool`` worker, which may
not start children). Each worker receives the candidate's sufficient statistics (pickled)
and holds its own working memory, so peak memory grows with the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from .._linalg import blas_single_thread
from .._recorded import recorded
from ..inference.engine import VIConfig, VIResult, init_globals
from ..inference.starts import run_vi_with_starts
from ..inference.stochastic import run_vi_stochastic
from ..sufficient import SufficientStats
from .starting import init_factory

if TYPE_CHECKING:
    from .base import VariationalLongitudinalModel

#: ``make_init(rows)`` -> ``init(prior, rng)``: a candidate's starting points, for the subjects at ``rows``
#: (None: all; :func:`~dmlmm.models.starting.init_factory`).
StartFactory = Callable[[np.ndarray | None], Callable[..., Any]]

__all__ = ["CandidateData", "CandidateFit", "CandidateInputs", "StartFactory", "fit_candidate", "fit_candidates", "fit_in_turn",
           "highest_elbo", "resolve_n_jobs", "workers_allowed"]


class CandidateInputs(Protocol):
    """What :func:`fit_candidate` asks of one response scale's data: the statistics, the per-subject
    ridge fits (the priors' starts), the roughness and the membership design, the run's settings and the
    starting points. :class:`CandidateData` answers in memory, ``dmlmm.distributed.fit.DaskCandidateData``
    from sums on a Dask cluster's workers."""

    stats: Any
    b_hat: np.ndarray
    roughness: np.ndarray | None
    n_subjects: int
    Z: np.ndarray | None
    visit_times: int | None

    def config_for(self, config: VIConfig) -> VIConfig: ...

    def start_factory(self, config: VIConfig, kind: str) -> StartFactory: ...

    def extra_starts(self, config: VIConfig, kind: str) -> list: ...

    def start_scales(self, config: VIConfig) -> Any: ...


@dataclass
class CandidateData:
    """What every candidate on one response scale fits, in memory: the subjects' statistics and starting fits.

    A candidate asks its data (:class:`CandidateInputs`) for the run's settings (:meth:`config_for`) and
    its starting points (:meth:`start_factory`, :meth:`start_scales`). The Dask fit answers from sums on its
    workers (``dmlmm.distributed.fit.DaskCandidateData``); the rest of a candidate's fit is the same code.

    Attributes
    ----------
    stats : SufficientStats of all subjects (membership covariates attached).
    b_hat : (N, D) the per-subject ridge fits; penalties : (N,) their ridge penalties.
    roughness : (D,) or None, the random-effects coordinates' roughness (the smoothness prior).
    n_subjects : N.
    Z : (N, q) membership design, or None.
    smooth : (b_hat, penalties) of the smooth start's ridge fits, or None
        (:func:`~dmlmm.models.starting.smooth_roughness`: fewer shared visit times than basis functions).
    visit_times : the number of distinct visit times where they are fewer than the basis functions and confound
        the noise (:attr:`~dmlmm.models.fitting.FitPlan.few_times`), else None; the deep mixture's prior reads it.
    """

    stats: SufficientStats
    b_hat: np.ndarray
    penalties: np.ndarray
    roughness: np.ndarray | None
    n_subjects: int
    Z: np.ndarray | None = None
    smooth: tuple[np.ndarray, np.ndarray] | None = None
    visit_times: int | None = None

    def config_for(self, config: VIConfig) -> VIConfig:
        """The settings a run on these data uses: the model's, unchanged."""
        return config

    def start_factory(self, config: VIConfig, kind: str) -> StartFactory:
        """``make_init(rows)``: the starting point of a run on the subjects at ``rows`` (None: all), noise
        model ``kind`` (:func:`~dmlmm.models.starting.init_factory`)."""
        return init_factory(self.stats, self.b_hat, config, kind, self.Z, self.penalties)

    def extra_starts(self, config: VIConfig, kind: str) -> list:
        """The starts explored beside the sizes' (each ``init(prior, generator)`` of all subjects): the smooth
        start where the data have one (:attr:`smooth`), else none."""
        if self.smooth is None:
            return []
        return [init_factory(self.stats, self.smooth[0], config, kind, self.Z, self.smooth[1])(None)]

    def start_scales(self, config: VIConfig):
        """The subjects' residual scales from their ridge fits (None without ``config.subject_df``): the
        minibatch fit's start outside its warm-start subsample."""
        return None if config.subject_df is None else init_globals(self.stats, self.b_hat, config, self.penalties)[3]


@dataclass
class CandidateFit:
    """A candidate's best run (over its ``n_init`` restarts), its config and the warnings that run raised."""

    result: VIResult
    config: VIConfig
    warnings: list = field(default_factory=list)


def fit_candidate(variant: "VariationalLongitudinalModel", kind: str, data: CandidateInputs,
                  to_beat: float | None = None, progress: bool = True) -> CandidateFit:
    """One candidate: ``variant``'s prior with noise model ``kind``, ``n_init`` restarts from
    ``random_state``, the highest ELBO kept (the first on a tie).

    ``to_beat``: an ELBO (model scale) already reached by another candidate, which the finishing runs
    race; each restart races the highest of it and the restarts before. ``progress``: a progress bar
    when the model asks for one.
    """
    # BLAS on one thread throughout: the fit's matrices are small (D x D per component, the local step's own
    # chunks), and a multi-threaded BLAS's spinning workers only took the cores from the fit and from other
    # processes (a MixtureLMM with noise_df: 21 s of CPU for 8.6 s of work on 2 cores)
    with blas_single_thread():
        return _fit_candidate(variant, kind, data, to_beat, progress)


def _fit_candidate(variant: "VariationalLongitudinalModel", kind: str, data: CandidateInputs,
                   to_beat: float | None, progress: bool) -> CandidateFit:
    stats, Z = data.stats, data.Z
    rng = np.random.default_rng(variant.random_state)
    best: CandidateFit | None = None
    for _ in range(int(variant.n_init)):
        prior = variant._make_prior(stats.dim_random, data.n_subjects, data.roughness, data.visit_times)
        config = data.config_for(variant._config(data.n_subjects, int(prior.path_components()[:, 0].max()) + 1))
        make_init = data.start_factory(config, kind)
        resize = lambda sizes, v=variant: v._sized(sizes)._make_prior(stats.dim_random, data.n_subjects,  # noqa: E731
                                                                      data.roughness, data.visit_times)
        callback = variant._progress_callback() if progress else None
        # delete moves compare against an emptied component's cost, which the membership model changes
        moves = variant.delete_moves and not config.hard_assignment and Z is None
        race = highest_elbo(to_beat, None if best is None else best.result.elbo)
        if config.batch_size is None:
            # the requested start and smaller ones are explored; the best runs on (inference/starts.py)
            extra = data.extra_starts(config, kind)
            res, caught = recorded(lambda: run_vi_with_starts(
                stats, prior, make_init(None), resize, config, rng, moves=moves, callback=callback, to_beat=race,
                extra_starts=extra))
        else:  # warm start on a subsample, natural gradients, full passes (inference/stochastic.py)
            start = data.start_scales(config)
            res, caught = recorded(lambda: run_vi_stochastic(
                stats, prior, make_init, resize, config, rng, variant._stochastic_settings(), moves=moves,
                callback=callback, start_scales=start))
        if callback is not None:
            callback.close()
        if best is None or res.elbo > best.result.elbo:
            best = CandidateFit(res, config, caught)
    return best


def fit_in_turn(variants: list[tuple["VariationalLongitudinalModel", str]], data: CandidateInputs,
                to_beat: float | None = None) -> CandidateFit:
    """Every candidate ``(variant, noise kind)`` on ``data`` one after the other, each racing the best so
    far (and ``to_beat``, another scale's ELBO on this scale); the highest ELBO kept (the first on a tie).
    Each run's warnings stay in its :class:`CandidateFit`: only the kept one's are raised, by the caller."""
    best: CandidateFit | None = None
    for variant, kind in variants:
        cand = fit_candidate(variant, kind, data, to_beat=highest_elbo(to_beat, None if best is None else best.result.elbo))
        if best is None or cand.result.elbo > best.result.elbo:
            best = cand
    return best


def highest_elbo(*elbos: float | None) -> float | None:
    """The highest of the ELBOs given (None: none)."""
    got = [e for e in elbos if e is not None]
    return max(got) if got else None


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Worker processes for ``n_jobs``: None -> 1, -1 -> the CPUs this process may use."""
    if n_jobs is None:
        return 1
    if n_jobs == -1:
        return _cpus()
    return int(n_jobs)


def workers_allowed() -> bool:
    """Whether this process may start worker processes: not a daemon (a ``multiprocessing.Pool`` worker,
    for one, whose children the standard library refuses)."""
    return not multiprocessing.current_process().daemon


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


@dataclass
class _Task:
    variant: Any
    kind: str
    data: CandidateData


def fit_candidates(tasks: list[tuple["VariationalLongitudinalModel", str, CandidateData]],
                   n_jobs: int, progress: bool = False) -> list[CandidateFit | BaseException]:
    """Every candidate ``(variant, kind, data)`` in full (no race), in up to ``n_jobs`` worker
    processes; in the order given, each a :class:`CandidateFit` or the exception its fit raised.
    ``progress``: a progress bar over the candidates, a step as each one ends (the workers draw none)."""
    workers = max(1, min(int(n_jobs), len(tasks)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tasks), desc=f"fitting {len(tasks)} candidates in {workers} processes", unit="fit",
                   leave=False)
    try:
        # the workers keep the local step's own threads as they are: its work is split into chunks by the
        # number of threads, so fewer threads would sum in another order and change the fit in its last digits
        with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool, stopping_workers(pool):
            futures = [pool.submit(_run_task, _Task(_without_progress(v), k, d)) for v, k, d in tasks]
            if bar is not None:
                for _ in as_completed(futures):
                    bar.update(1)
            out: list[CandidateFit | BaseException] = []
            for f in futures:
                exc = f.exception()
                out.append(exc if exc is not None else _rebuilt(f.result()))
    finally:
        if bar is not None:
            bar.close()
    return out


@contextmanager
def stopping_workers(pool: ProcessPoolExecutor):
    """Inside a ``with ProcessPoolExecutor``: when the caller is interrupted (Ctrl-C, SIGTERM turned into
    SystemExit by the command line, an error), the workers are terminated before the executor's own exit,
    which would otherwise wait for their fits to end; a terminated command line left them running for
    minutes, with the forkserver, as orphans."""
    try:
        yield pool
    except BaseException:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            if proc.is_alive():
                proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def _without_progress(variant: "VariationalLongitudinalModel") -> "VariationalLongitudinalModel":
    """``variant`` without its progress bar (workers cannot draw on the caller's terminal)."""
    return variant._copy_with(progress=False) if getattr(variant, "progress", False) else variant


_CONTEXT: Any = None


def _context():
    """forkserver (preloading dmlmm, so that each worker starts in milliseconds) where available, else spawn."""
    global _CONTEXT
    if _CONTEXT is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["dmlmm.models.candidates"])
        else:
            ctx = multiprocessing.get_context("spawn")
        _CONTEXT = ctx
    return _CONTEXT


def _run_task(task: _Task) -> tuple[VIResult, VIConfig, list[tuple]]:
    # every warning of the worker travels back with the candidate (one raised outside the candidate's own
    # record, e.g. while its prior is made, was printed raw by the worker and never reached the report)
    fit, around = recorded(lambda: fit_candidate(task.variant, task.kind, task.data, progress=False))
    # warnings travel as plain tuples (a WarningMessage may hold unpicklable context)
    return fit.result, fit.config, [(w.message, w.category, w.filename, w.lineno) for w in around + fit.warnings]


def _rebuilt(payload: tuple[VIResult, VIConfig, list[tuple]]) -> CandidateFit:
    res, config, caught = payload
    return CandidateFit(res, config, [warnings.WarningMessage(m, c, f, n) for m, c, f, n in caught])
