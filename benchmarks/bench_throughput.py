"""Whole-process `peptrm sequence` throughput against input size and batch size.

Runs the real command (a fresh process each time: imports, model load, reading,
network, search, reranking, writing) on the first N spectra of the dev files
(written to one temporary MGF, labels kept) and prints, per run, the spectra,
the wall-clock seconds of the whole process, spectra/s, the seconds the
command itself reports for the network and for decoding, and the cost per
spectrum. If cost is linear in the input, seconds per spectrum stay flat as N
grows (past the fixed start-up, printed as the intercept of a least-squares
line through wall-clock against N).

    python benchmarks/bench_throughput.py [--sizes 170 341 682 1365]
        [--batch-sizes 64 128 256 512] [--batch-input 682]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SHARED, print_provenance

DEV = sorted((SHARED / "dev").glob("*.mgf"))
REPORTED = re.compile(r"[\d.]+ s in all: model ([\d.]+) s, decoding ([\d.]+) s")


def dev_blocks() -> list[str]:
    """Every spectrum of the dev files as its MGF text, in file order."""
    blocks: list[str] = []
    for path in DEV:
        for block in path.read_text().split("BEGIN IONS")[1:]:
            blocks.append("BEGIN IONS" + block.split("END IONS")[0] + "END IONS\n")
    return blocks


def dev_subset(blocks: list[str], n: int, folder: Path) -> Path:
    """An MGF of the first `n` of `blocks` (`dev_blocks`)."""
    if n > len(blocks):
        raise SystemExit(f"--sizes: the dev files hold {len(blocks)} spectra, not {n}")
    out = folder / f"dev_first_{n}.mgf"
    out.write_text("".join(blocks[:n]))
    return out


def run(mgf: Path, batch_size: int | None, folder: Path) -> dict:
    """One `peptrm sequence` process; its wall-clock and what it reports."""
    output = folder / f"{mgf.stem}_{batch_size}.mztab"
    command = [
        str(Path(sys.executable).parent / "peptrm"), "sequence", str(mgf),
        "-o", str(output), "--no-progress",
    ]  # fmt: skip
    if batch_size:
        command += ["--batch-size", str(batch_size)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    found = REPORTED.search(done.stderr)
    if found is None:
        raise SystemExit(f"no timing line in the log of {' '.join(command)}")
    model, decoding = (float(v) for v in found.groups())
    return {"wall": wall, "model": model, "decoding": decoding}


def print_row(label: str, n: int, r: dict) -> None:
    """One table row: a run of `n` spectra."""
    print(
        f"{label:>12} {n:>8} {r['wall']:>8.1f} {n / r['wall']:>10.1f} "
        f"{r['model']:>8.1f} {r['decoding']:>10.1f} {1000 * r['wall'] / n:>10.1f}",
        flush=True,
    )


def main() -> None:
    """Input-size rows, then batch-size rows; one table each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[170, 341, 682, 1365])
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512]
    )
    parser.add_argument(
        "--batch-input", type=int, default=682, help="spectra per batch-size run"
    )
    args = parser.parse_args()
    print_provenance()
    header = (
        f"{'':>12} {'spectra':>8} {'wall s':>8} {'spectra/s':>10} "
        f"{'model s':>8} {'decoding s':>10} {'ms/spectrum':>10}"
    )
    blocks = dev_blocks()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("\nwhole process against input size (default batch size)")
        print(header)
        walls = []
        for n in args.sizes:
            result = run(dev_subset(blocks, n, folder), None, folder)
            walls.append(result["wall"])
            print_row("input", n, result)
        if len(args.sizes) > 1:
            slope, intercept = np.polyfit(args.sizes, walls, 1)
            print(
                f"least squares: wall = {intercept:.1f} s + "
                f"{1000 * slope:.1f} ms x spectra"
            )
        print(f"\nwhole process against batch size ({args.batch_input} spectra)")
        print(header)
        mgf = dev_subset(blocks, args.batch_input, folder)
        for size in args.batch_sizes:
            print_row(f"batch {size}", args.batch_input, run(mgf, size, folder))


if __name__ == "__main__":
    main()
