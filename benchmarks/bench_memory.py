"""Peak memory of `sequence_files` at 1x and 10x input: the I/O path streams.

Builds an MGF from copies of ../shared/data/dev/qeplus2_dev.mgf (1x = 16 copies,
~30 MB, 14,032 spectra; 10x = 160 copies, ~300 MB), then sequences it in a fresh
process and prints that process's peak RSS. The network and the search are
replaced by a stub that returns one fixed candidate (PEPTLDEK) per spectrum, so what is
measured is reading, preprocessing, batching, q-values and mzTab writing (the
model's own memory does not grow with the input either: it sees one batch).

Run from the repository root: ``python benchmarks/bench_memory.py [--copies 16]``.
"""

import argparse
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import commit

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

CHILD = """
import resource, sys, time
import torch
from peptrm import masses, sequence
from peptrm.config import load_config
from peptrm.model import PepTRM

from peptrm.decoding import Candidate

TOKENS = masses.parse("PEPTLDEK")

def network_stub(model, spectra, cfg, device, summary):
    steps = torch.zeros(len(spectra), dtype=torch.long)
    return sequence.NetworkPass({}, None, steps)

def search_stub(model, refined, cfg, device, top_k, summary, *args, **kwargs):
    found = [
        [Candidate(TOKENS, [masses.TOKEN_INDEX[t] for t in TOKENS], -1.0, 0.5,
                   [0.5] * len(TOKENS), masses.peptide_mass(TOKENS), 0, 1.0, True)]
        for _ in refined.steps
    ]
    return found, [None] * len(found), refined.steps

# Both halves of every batch (`predictions` runs them apart, in two threads).
sequence.network_pass = network_stub
sequence.search_and_score = search_stub
cfg = load_config()
model = PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB))
start = time.perf_counter()
summary = sequence.sequence_files(
    [sys.argv[1]], sys.argv[2], model, cfg, progress=False
)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{summary.spectra} {seconds:.1f} {peak:.0f}")
"""


def run(copies: int, folder: Path) -> tuple[int, float, float, float]:
    """Spectra, input MB, seconds and peak RSS (MB) for `copies` of the dev file."""
    source = (SHARED / "dev" / "qeplus2_dev.mgf").read_bytes()
    path = folder / f"x{copies}.mgf"
    with open(path, "wb") as handle:
        for _ in range(copies):
            handle.write(source)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(folder / f"x{copies}.mztab")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    size = path.stat().st_size / 2**20
    path.unlink()
    return int(out[0]), size, float(out[1]), float(out[2])


def main() -> None:
    """Print what ran, then one line per input size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=16, help="copies at 1x")
    args = parser.parse_args()
    print(f"bench_memory: commit {commit()}, python {platform.python_version()}")
    print(f"command: python benchmarks/bench_memory.py --copies {args.copies}")
    print("input  spectra  MB  seconds  spectra/s  peak RSS MB")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for factor in (1, 10):
            n, size, seconds, peak = run(args.copies * factor, Path(folder))
            print(
                f"{factor:>4}x  {n:>7}  {size:>4.0f}  {seconds:>7.1f}  "
                f"{n / seconds:>9.0f}  {peak:>11.0f}"
            )
    print(
        f"total {time.perf_counter() - started:.0f} s; own RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
