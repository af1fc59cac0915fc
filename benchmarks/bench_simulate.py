"""Simulation speed, FASTA digest sizes, and real-vs-simulated fragment statistics.

Run from the repository root::

    .venv/bin/python benchmarks/bench_simulate.py [--spectra 2000] [--difficulty 1.0]

Prints spectra/s of `simulate_batch` in one process, the digest time and peptide
count of each shared FASTA, and `fragment_statistics` of every train MGF next to
the same statistics of simulated spectra of the same peptides and charges (b/y
matched within 0.02 Da; 0.5 Da for the ion-trap file), and of the high-resolution
files' charge-3+ spectra pooled (where long 1+ fragments are rare: compare
`-c configs/experiments/argmax_nsup8_fade.yaml`, `simulation.high_charge_fade`).
`-c` overlays a YAML on the shipped settings.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from common import commit
from pyteomics import mgf

from peptrm import masses
from peptrm.config import load_config
from peptrm.io import Spectrum, SpectrumRef
from peptrm.simulate import (
    STATISTICS,
    digest_fasta,
    fragment_statistics,
    simulate_batch,
    simulate_spectrum,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ION_TRAP_TOL_DA = 0.5  # low-resolution ion-trap library
TOL_DA = 0.02


def read_mgf(path: Path) -> list[Spectrum]:
    """Annotated spectra of an MGF (pyteomics directly; only SEQ-labelled ones)."""
    spectra = []
    with mgf.read(str(path), use_index=False, convert_arrays=1) as reader:
        for index, entry in enumerate(reader):
            params = entry["params"]
            charge = params.get("charge")
            if not params.get("seq") or not charge:
                continue
            spectra.append(
                Spectrum(
                    ref=SpectrumRef(str(path), index, params.get("title", "")),
                    mz=np.asarray(entry["m/z array"], dtype=float),
                    intensity=np.asarray(entry["intensity array"], dtype=np.float32),
                    precursor_mz=float(params["pepmass"][0]),
                    charge=int(charge[0]),
                    peptide=params["seq"],
                )
            )
    return spectra


def simulate_like(
    real: list[Spectrum], cfg, difficulty: float, rng: np.random.Generator
) -> list[Spectrum]:
    """Simulate one spectrum per real one, same peptide and charge."""
    out = []
    for spectrum in real:
        try:
            tokens = masses.parse(spectrum.peptide)
        except masses.UnknownResidueError:
            continue
        out.append(
            simulate_spectrum(
                tokens, spectrum.charge, rng, cfg, difficulty, spectrum.ref
            )
        )
    return out


def main() -> None:
    """Run the benchmark and print its figures."""
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--spectra", type=int, default=2000)
    arguments.add_argument("--difficulty", type=float, default=1.0)
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("-c", "--config", help="YAML overlaid on the defaults")
    args = arguments.parse_args()
    cfg = load_config(args.config).simulation

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"commit {commit()}, python {platform.python_version()}, "
        f"numpy {np.__version__}, pyteomics {metadata.version('pyteomics')}, "
        f"{platform.machine()} {platform.processor() or ''}".rstrip()
    )

    fastas = sorted((DATA / "fasta").glob("*.fasta"))
    peptides: list[str] = []
    for path in fastas:
        start = time.perf_counter()
        digested = digest_fasta(path, cfg)
        elapsed = time.perf_counter() - start
        print(f"digest {path.name}: {len(digested)} peptides in {elapsed:.1f} s")
        peptides.extend(digested)
    if not peptides:
        peptides = ["PEPTIDEK", "LESLIEKNR", "SAMPLERPEPTIDEK"]
        print(f"no FASTA under {DATA / 'fasta'}; timing on {len(peptides)} peptides")
    peptides = sorted(set(peptides))

    for difficulty in (0.0, args.difficulty):
        rng = np.random.default_rng(args.seed)
        start = time.perf_counter()
        spectra = simulate_batch(peptides, args.spectra, rng, cfg, difficulty)
        elapsed = time.perf_counter() - start
        peaks = np.median([s.mz.size for s in spectra])
        print(
            f"simulate difficulty {difficulty:.1f}: {args.spectra} spectra in "
            f"{elapsed:.2f} s = {args.spectra / elapsed:.0f} spectra/s (one process), "
            f"median {peaks:.0f} peaks"
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak_mb:.0f} MB")

    rows = []
    high_charge: list[Spectrum] = []  # charge 3+ of the high-resolution files
    for path in sorted((DATA / "train").glob("*.mgf")):
        tol_da = ION_TRAP_TOL_DA if "iontrap" in path.name else TOL_DA
        real = read_mgf(path)
        if tol_da == TOL_DA:
            high_charge += [s for s in real if s.charge >= 3]
        rng = np.random.default_rng(args.seed)
        simulated = simulate_like(real, cfg, args.difficulty, rng)
        rows.append(
            (
                path.stem,
                fragment_statistics(real, tol_da),
                fragment_statistics(simulated, tol_da),
            )
        )
    if high_charge:
        rng = np.random.default_rng(args.seed)
        simulated = simulate_like(high_charge, cfg, args.difficulty, rng)
        rows.append(
            (
                "charge 3+, 0.02 Da files",
                fragment_statistics(high_charge, TOL_DA),
                fragment_statistics(simulated, TOL_DA),
            )
        )
    if not rows:
        print(f"no train MGF under {DATA / 'train'}; statistics skipped")
        return
    print(f"\nfragment statistics, real | simulated (difficulty {args.difficulty})")
    header = f"{'statistic':48s}" + "".join(f"{name[:22]:>24s}" for name, _, _ in rows)
    print(header)
    for key, meaning in STATISTICS.items():
        cells = "".join(
            f"{real[key]:>11.3g} |{simulated[key]:>10.3g}"
            for _, real, simulated in rows
        )
        print(f"{meaning[:48]:48s}{cells}")


if __name__ == "__main__":
    main()
