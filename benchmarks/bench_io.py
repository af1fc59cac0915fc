"""Read + preprocess throughput of the MGF and mzML readers on the shared data.

Run from the repository root: ``python benchmarks/bench_io.py [--repeats N]``.
"""

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from common import commit

import peptrm
from peptrm import io, preprocess
from peptrm.config import load_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(path: Path, repeats: int) -> tuple[int, int, float]:
    """Return (spectra, skipped, best seconds) for read + preprocess of one file."""
    run = preprocess.pipeline(load_config().preprocess)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        n = skipped = 0
        for record in io.read_spectra(path):
            out = run(record)
            n += 1
            skipped += isinstance(out, io.Skipped)
        best = min(best, time.perf_counter() - start)
    return n, skipped, best


def main() -> None:
    """Print what ran, then one line of figures per shared file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs")
    args = parser.parse_args()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"peptrm {peptrm.__version__}, commit {commit()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, device cpu"
    )
    files = sorted((SHARED / "dev").glob("*.mgf")) + sorted(
        p for p in (SHARED / "raw").iterdir() if p.suffix.lower() == ".mzml"
    )
    if not files:
        print(f"no files under {SHARED}; nothing to measure")
        return
    print(f"{'file':<34}{'records':>9}{'skipped':>9}{'seconds':>10}{'spectra/s':>11}")
    for path in files:
        n, skipped, seconds = measure(path, args.repeats)
        print(f"{path.name:<34}{n:>9}{skipped:>9}{seconds:>10.3f}{n / seconds:>11.0f}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
