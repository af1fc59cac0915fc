import os

from peptrm import workers


def test_started_workers_run_before_the_first_search_and_serve_it():
    """start_workers makes the pool the search then uses: live processes, not ours."""
    assert workers.start_workers(1) == set()
    started = workers.start_workers(2)
    assert started and os.getpid() not in started
    for pid in started:
        os.kill(pid, 0)  # alive (raises if not)
    pool = workers._pool(2)
    used = set(workers.parallel_map(workers._ready, list(range(8)), 2))
    assert workers._pool(2) is pool and used and os.getpid() not in used


def test_workers_import_no_torch():
    """It starts the forkserver before torch is imported, so it must not need it."""
    import subprocess
    import sys

    code = "import sys, peptrm.workers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_pool_pays_from_four_chunks():
    assert not workers.pool_pays(3) and workers.pool_pays(workers.POOL_PAYS_AT)


def test_without_a_forkserver_everything_runs_here(monkeypatch):
    """Where there is no forkserver (Windows), no pool starts and work runs here."""
    monkeypatch.setattr(workers, "FORKSERVER", False)
    monkeypatch.setattr(workers, "_POOL", None)
    assert workers.start_workers(2) == set()
    assert workers.parallel_map(workers._ready, list(range(8)), 2) == [os.getpid()] * 8
    workers.start_forkserver()  # does nothing
    assert workers._POOL is None
