"""Decoding throughput: greedy vs mass-constrained, on peaked model-like outputs.

Each spectrum gets a random tryptic-like peptide (real residue, modification and
N-terminal tokens; K/R at the C-terminus), its exact neutral mass plus a
precursor error of a few ppm and sometimes a +1 13C isotope error, and (B, L, V)
log-probs that put most of the mass on the true token at each position with
Gaussian logit noise. A share of positions is "confused": the model prefers a
wrong token there, so the argmax peptide misses the precursor mass and the
constraint has work to do. A second run doubles every precursor mass (a wrong
charge state), where usually nothing fits near the top and the search must
prove it or run out of budget.

    python benchmarks/bench_decoding.py --batch-size 256 --batches 4
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

import peptrm
from peptrm import decoding, masses
from peptrm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RESIDUES = [
    t for t in masses.VOCAB[1:] if masses.TOKEN_INDEX[t] in decoding.RESIDUE_INDICES
]


def commit() -> str:
    """Read the checked-out commit from .git without running git."""
    head = ROOT / ".git" / "HEAD"
    if not head.exists():
        return "unknown"
    ref = head.read_text().strip()
    if not ref.startswith("ref: "):
        return ref
    name = ref[5:]
    loose = ROOT / ".git" / name
    if loose.exists():
        return loose.read_text().strip()
    packed = ROOT / ".git" / "packed-refs"
    for line in packed.read_text().splitlines() if packed.exists() else []:
        if line.endswith(" " + name):
            return line.split()[0]
    return "unknown"


def random_peptide(rng: np.random.Generator, max_tokens: int) -> list[str]:
    """Draw a tryptic-like peptide of 7..30 residues, rarely N-terminally modified."""
    n = int(rng.integers(7, min(30, max_tokens - 1) + 1))
    body = [str(t) for t in rng.choice(RESIDUES[:-1], size=n - 1)]
    body = [t for t in body if t not in ("K", "R")] or ["A"]
    tokens = body + [str(rng.choice(["K", "R"]))]
    if rng.random() < 0.05:
        tokens = [str(rng.choice(list(masses.N_TERMINAL_MODIFICATIONS)))] + tokens
    return tokens


def model_like_log_probs(
    rng: np.random.Generator,
    peptides: list[list[str]],
    length: int,
    confused: float,
    noise: float,
) -> np.ndarray:
    """(B, L, V) log-probs peaked on each true token (or a wrong one, sometimes)."""
    batch = len(peptides)
    logits = rng.normal(0.0, noise, size=(batch, length, len(masses.VOCAB)))
    targets = np.stack([masses.encode(p, length) for p in peptides])  # (B, L)
    for b in range(batch):
        for i, t in enumerate(targets[b]):
            logits[b, i, t] += 8.0
            if t != masses.STOP_INDEX and rng.random() < confused:
                wrong = rng.choice(decoding.RESIDUE_INDICES)
                logits[b, i, wrong] += 8.0 + rng.uniform(0.2, 2.0)
    logits[:, 1:, list(masses.N_TERMINAL_INDICES)] -= 8.0
    return torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()


def observed_masses(
    rng: np.random.Generator, peptides: list[list[str]], isotope_rate: float
) -> np.ndarray:
    """Exact peptide masses with 3 ppm sd error and sometimes a +1 13C error."""
    exact = np.array([masses.peptide_mass(p) for p in peptides])
    isotope = (rng.random(len(exact)) < isotope_rate) * masses.C13_SPACING
    return exact + isotope + exact * rng.normal(0, 3e-6, len(exact))


def run(name: str, log_probs: np.ndarray, precursor: np.ndarray, cfg, top_k: int):
    """Decode once greedily and once constrained; print one line of figures."""
    started = time.perf_counter()
    plain = decoding.greedy(log_probs)
    greedy_s = time.perf_counter() - started
    started = time.perf_counter()
    constrained = decoding.decode(log_probs, precursor, cfg, top_k)
    constrained_s = time.perf_counter() - started
    tol = cfg.precursor_tol_ppm
    greedy_fits = np.mean(
        [
            decoding.closest_isotope(c.mass, p, cfg)[2]
            for c, p in zip(plain, precursor, strict=True)
        ]
    )
    fits = np.mean([c[0].constrained for c in constrained])
    within = np.mean(
        [
            abs(c[0].mass_error_ppm) <= tol * 1.0001
            for c in constrained
            if c[0].constrained
        ]
        or [np.nan]
    )
    n = len(log_probs)
    print(
        f"{name:<14} spectra {n:5d}  greedy {n / greedy_s:9.0f}/s "
        f"(fits {greedy_fits:.3f})  constrained {n / constrained_s:8.1f}/s "
        f"({constrained_s:.2f} s; fits {fits:.3f}; of those within tol {within:.3f})"
    )
    return constrained


def main() -> None:
    """Parse arguments, print provenance, run the normal and wrong-charge cases."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--confused", type=float, default=0.03)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = load_config().decoding
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"commit {commit()}  peptrm {peptrm.__version__}  python "
        f"{platform.python_version()}  torch {torch.__version__}  numpy "
        f"{np.__version__}"
    )
    print(
        f"device: CPU {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"tol {cfg.precursor_tol_ppm} ppm, "
        f"isotopes {cfg.min_isotope}..{cfg.max_isotope}"
        f", max_expansions {cfg.max_expansions}, top_k {args.top_k}, L {args.length}"
        f", confused {args.confused}, noise {args.noise}"
    )
    rng = np.random.default_rng(args.seed)
    for batch in range(args.batches):
        peptides = [random_peptide(rng, args.length) for _ in range(args.batch_size)]
        log_probs = model_like_log_probs(
            rng, peptides, args.length, args.confused, args.noise
        )
        precursor = observed_masses(rng, peptides, 0.1)
        print(
            f"batch {batch}: precursor masses {precursor.min():.0f}-"
            f"{precursor.max():.0f} Da"
        )
        found = run("right charge", log_probs, precursor, cfg, args.top_k)
        recall = np.mean(
            [
                masses.format_peptide(c[0].tokens)
                == masses.format_peptide(masses.decode(masses.encode(p, args.length)))
                for c, p in zip(found, peptides, strict=True)
            ]
        )
        print(f"{'':<14} constrained top-1 equals the true peptide: {recall:.3f}")
        run("wrong charge", log_probs, precursor * 2 + masses.H2O, cfg, args.top_k)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
