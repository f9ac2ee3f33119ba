"""n_jobs: the candidates of one fit (scales, prior variants, noise models) at once in worker processes."""

import warnings

import numpy as np
import pytest

import dmlmm.models.fitting as fitting
from dmlmm import DeepMixtureLMM, MixtureLMM, SplineBasis
from dmlmm.exceptions import ConvergenceWarning
from dmlmm.models.candidates import resolve_n_jobs
from dmlmm.simulate import dgp1


@pytest.fixture(scope="module")
def sim():
    return dgp1(3, n_subjects=80)


@pytest.fixture
def sent(monkeypatch):
    """The candidates sent to worker processes, per fit (fails the tests if a fit never sends any)."""
    calls = []
    real = fitting.fit_candidates

    def spy(tasks, n_jobs, progress=False):
        calls.append((len(tasks), n_jobs))
        return real(tasks, n_jobs, progress)

    monkeypatch.setattr(fitting, "fit_candidates", spy)
    return calls


def _fit(model, data, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data, **kw)
    return model, sorted((w.category.__name__, str(w.message)) for w in caught)


def _same_fit(a, b):
    assert a.elbo_ == b.elbo_
    assert a.n_iter_ == b.n_iter_ and a.n_components_ == b.n_components_
    assert getattr(a.prior_, "loading_order", None) == getattr(b.prior_, "loading_order", None)
    assert (a.labels_ == b.labels_).all()
    np.testing.assert_array_equal(a.random_effects_.to_numpy(), b.random_effects_.to_numpy())
    assert a.sigma2_ == b.sigma2_


def test_deep_mixture_loading_orders_in_workers_give_the_same_fit(sim, sent):
    """loading_order="auto" fits orders 2 and 1: in two workers the kept fit is the one-process fit,
    to the last digit (each candidate starts from the same random state, in either mode)."""
    make = lambda jobs: DeepMixtureLMM((4, 2), (2, 1), basis=SplineBasis(8, lower=0, upper=1),  # noqa: E731
                                       random_state=0, n_jobs=jobs)
    one, w1 = _fit(make(None), sim.data)
    assert sent == []
    two, w2 = _fit(make(2), sim.data)
    assert sent == [(2, 2)]
    _same_fit(one, two)
    assert w1 == w2


def test_scales_and_covariances_in_workers_give_the_same_fit_and_warnings(sim, sent):
    """A positive response: two scales times two covariances, four candidates in up to four workers;
    the same scale kept, the same fit, and the kept candidate's warnings raised once (here a
    ConvergenceWarning from a small iteration budget)."""
    data = sim.data.assign(y=np.exp(sim.data["y"]))
    make = lambda jobs: MixtureLMM(3, basis=SplineBasis(6, lower=0, upper=1), random_state=1, max_iter=30,  # noqa: E731
                                   n_jobs=jobs)
    one, w1 = _fit(make(1), data)
    four, w4 = _fit(make(-1), data)
    assert len(sent) == 1 and sent[0][0] == 4
    assert set(one.elbo_by_transform_) == set(four.elbo_by_transform_) == {"none", "log"}
    assert one.response_transform_ == four.response_transform_
    assert one.elbo_by_transform_[one.response_transform_ or "none"] == four.elbo_by_transform_[
        four.response_transform_ or "none"]
    _same_fit(one, four)
    assert w1 == w4 and any(c == ConvergenceWarning.__name__ for c, _ in w4)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2"])
def test_bad_n_jobs_is_refused_by_name(sim, bad):
    with pytest.raises(ValueError, match=r"n_jobs must be None, -1 or a positive integer, got"):
        MixtureLMM(2, n_jobs=bad).fit(sim.data)


def test_resolve_n_jobs():
    assert resolve_n_jobs(None) == 1 and resolve_n_jobs(3) == 3
    assert resolve_n_jobs(-1) >= 1


def test_a_script_without_the_main_guard_is_told_and_still_fitted(tmp_path):
    """Workers import the main script; without ``if __name__ == "__main__":`` they cannot start. The fit
    then says so (naming the guard) and runs in the calling process instead of failing."""
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text(
        "import warnings\n"
        "warnings.simplefilter('ignore')\n"
        "warnings.simplefilter('always', RuntimeWarning)\n"
        "from dmlmm import DeepMixtureLMM, SplineBasis\n"
        "from dmlmm.simulate import dgp1\n"
        "sim = dgp1(3, n_subjects=40)\n"
        "m = DeepMixtureLMM((3, 2), (2, 1), basis=SplineBasis(6, lower=0, upper=1), random_state=0,\n"
        "                   max_iter=60, n_jobs=2).fit(sim.data)\n"
        "print('fitted', m.n_iter_)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fitted" in out.stdout
    assert "n_jobs=2: the worker processes stopped before finishing" in out.stderr
    assert 'if __name__ == "__main__":' in out.stderr


def test_the_progress_bar_counts_candidates(sim, capsys):
    """With workers, progress=True draws one bar in the calling process, a step per candidate fitted."""
    DeepMixtureLMM((3, 2), (2, 1), basis=SplineBasis(6, lower=0, upper=1), random_state=0, max_iter=60,
                   progress=True, n_jobs=2).fit(sim.data)
    err = capsys.readouterr().err
    assert "fitting 2 candidates in 2 processes" in err and "0/2" in err


def test_a_daemon_process_fits_in_place_and_says_so(sim, monkeypatch):
    """A daemonic process (a multiprocessing.Pool worker) may not start children: the fit warns and runs
    in the process itself, with the same result, instead of failing deep in multiprocessing."""
    import multiprocessing

    make = lambda jobs: DeepMixtureLMM((3, 2), (2, 1), basis=SplineBasis(6, lower=0, upper=1),  # noqa: E731
                                       random_state=0, max_iter=60, n_jobs=jobs)
    alone, _ = _fit(make(None), sim.data)
    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", True)
    assert multiprocessing.current_process().daemon
    with pytest.warns(RuntimeWarning, match=r"n_jobs=2: this process is a daemon .* fitting in this process instead"):
        inside = make(2).fit(sim.data)
    _same_fit(alone, inside)


def test_an_interrupted_caller_stops_its_workers():
    """Interrupted (Ctrl-C, or SIGTERM, which the command line turns into SystemExit) while workers fit, the
    executor's exit no longer waits for their fits: they are terminated at once. A terminated `dmlmm fit` left
    them running for minutes as orphans, holding its pipes open."""
    import time
    from concurrent.futures import ProcessPoolExecutor

    from dmlmm.models.candidates import _context, stopping_workers

    t0 = time.perf_counter()
    with pytest.raises(SystemExit):
        with ProcessPoolExecutor(max_workers=2, mp_context=_context()) as pool, stopping_workers(pool):
            futures = [pool.submit(time.sleep, 60) for _ in range(2)]
            while not all(f.running() for f in futures):
                time.sleep(0.05)
            procs = list(pool._processes.values())
            raise SystemExit(143)
    assert time.perf_counter() - t0 < 30
    for p in procs:
        p.join(timeout=10)
        assert not p.is_alive()


def test_every_candidate_fit_runs_blas_on_one_thread(monkeypatch, sim):
    """The fit's own work is small matrices (and the local step its own threads): BLAS runs on one thread
    through the starts, the moves, the final run and a minibatch fit's phases, and is restored afterwards
    (a multi-threaded BLAS's spinning workers doubled a noise_df fit's CPU time)."""
    from threadpoolctl import threadpool_info

    import dmlmm.models.candidates as candidates

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    if all(n == 1 for n in before):
        pytest.skip("BLAS runs on one thread here already (one CPU or OMP_NUM_THREADS=1)")
    seen = []
    for name in ("run_vi_with_starts", "run_vi_stochastic"):
        real = getattr(candidates, name)
        monkeypatch.setattr(candidates, name, lambda *a, _real=real, **kw: (seen.append(blas_threads()), _real(*a, **kw))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MixtureLMM(2, basis=SplineBasis(5), max_iter=20, random_state=0).fit(sim.data)
        MixtureLMM(2, basis=SplineBasis(5), max_iter=20, batch_size=20, subsample=40, random_state=0).fit(sim.data)
    assert len(seen) >= 2 and all(n == 1 for threads in seen for n in threads), seen
    assert blas_threads() == before
