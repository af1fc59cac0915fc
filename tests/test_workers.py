import functools
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


def test_workers_compute_on_one_thread_and_the_caller_keeps_its_own():
    """The workers' environment asks torch and the BLAS for one thread each."""
    before = {name: os.environ.get(name) for name in workers.ONE_THREAD}
    read = functools.partial(os.getenv, "OMP_NUM_THREADS")  # os.getenv(name, item)
    assert set(workers.parallel_map(read, ["unset"] * 8, 2)) == {"1"}
    assert {name: os.environ.get(name) for name in workers.ONE_THREAD} == before


def test_the_network_gets_a_quarter_of_the_cores_beside_the_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert workers.network_threads(0, 0) == 4  # beside 16 decoding workers
    assert workers.network_threads(3, 0) == 3  # as configured
    assert workers.network_threads(0, 1) == 0  # searching here: torch's own
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert workers.network_threads(0, 0) == 2  # at least MIN_NETWORK_THREADS
    assert workers.network_threads(1, 0) == 1  # unless configured


def test_the_network_threads_sleep_unless_the_user_said_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    workers.network_threads_sleep()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["GOMP_SPINCOUNT"] == "10000"  # after a short spin
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    workers.network_threads_sleep()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert os.environ["GOMP_SPINCOUNT"] == "300000"


MAPPED_BYTES = """
import ctypes, sys
import numpy as np
from peptrm import workers

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    workers.keep_freed_memory()
big = np.ones(5_000_000)  # 40 MB, above glibc's largest mmap threshold
mapped = libc.mallinfo2().hblkhd
heap = libc.mallinfo2().arena
del big
print(mapped, heap, libc.mallinfo2().arena)
"""


def _malloc_figures(mode: str) -> list[int]:
    """(mmapped bytes with a 40 MB array alive, heap bytes then, after freeing it)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", MAPPED_BYTES, mode], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return [int(x) for x in out.stdout.split()]


def test_kept_freed_memory_serves_large_arrays_from_the_heap_and_keeps_it():
    """glibc maps a 40 MB array by itself (and unmaps it when freed); after
    `keep_freed_memory` it comes from the heap, which keeps it once freed."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        import pytest

        pytest.skip("glibc >= 2.33 only (mallinfo2)")
    mapped, heap, _ = _malloc_figures("default")
    assert mapped >= 40_000_000 and heap < 40_000_000
    mapped, heap, after = _malloc_figures("keep")
    assert mapped < 40_000_000 and heap >= 40_000_000 and after >= 40_000_000


def test_each_worker_keeps_freed_memory_as_it_starts():
    """The pool's initializer calls `keep_freed_memory` (in a process of its own:
    the initializer also sets up logging)."""
    import subprocess
    import sys

    code = (
        "from peptrm import workers; "
        "workers.keep_freed_memory = lambda: print('kept'); "
        "workers._start_worker(20)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["kept"], out.stderr
