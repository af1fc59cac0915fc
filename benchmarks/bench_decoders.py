"""Decoder settings side by side on one model's refined distributions.

The model runs once per batch; every decoder setting then decodes the same
log-probabilities, so the figures differ only by the decoder. For each setting:
peptide recall, AA precision and recall, constrained rows (a fitting peptide was
found) and decoding spectra/s.

Choose settings on the training split, never on dev: the default set is the
peptide-disjoint validation split of ../shared/data/train that `peptrm train`
holds out (same files, `val_fraction` and seed), subsampled to --limit spectra.

    python benchmarks/bench_decoders.py [--model DIR] [--files A.mgf ...]
        [--weights 0 2] [--workers 1 2] [--beam-widths 0 64] [--tolerances 0.01 0.02]
        [--budgets 1000 300] [--limit 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from common import TRAIN_FILES, print_provenance

from peptrm import decoding, evidence, masses, preprocess, train
from peptrm.metrics import aa_match_batch
from peptrm.sequence import refine
from peptrm.weights import load_model


def main() -> None:
    """Decode one model's output with every setting; print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model folder (default: bundled)")
    parser.add_argument("--files", nargs="*", type=Path, help="labelled MGF files")
    parser.add_argument("--weights", nargs="*", type=float, default=[0, 2])
    parser.add_argument("--beam-widths", nargs="*", type=int, default=[64])
    parser.add_argument("--tolerances", nargs="*", type=float, default=[0.01])
    parser.add_argument("--budgets", nargs="*", type=int, default=[1000])
    parser.add_argument(
        "--workers", nargs="*", type=int, default=[1], help="decoding processes"
    )
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    print_provenance(args.model)
    model, cfg = load_model(args.model)
    if args.files:
        spectra = train.load_labelled(args.files, cfg)
        where = ", ".join(p.name for p in args.files)
    else:
        spectra = train.held_out_split(TRAIN_FILES, cfg)
        where = "held-out split of ../shared/data/train"
    rng = np.random.default_rng(0)
    if len(spectra) > args.limit:
        keep = np.sort(rng.choice(len(spectra), args.limit, replace=False))
        spectra = [spectra[i] for i in keep]
    print(f"spectra: {len(spectra)} from {where}")
    truth = [s.peptide for s in spectra]
    settings = [
        (w, beam, tol, budget, workers)
        for w in args.weights
        for beam in args.beam_widths
        for tol in args.tolerances
        for budget in args.budgets
        for workers in args.workers
    ]
    decoded = {s: [] for s in settings}
    seconds = dict.fromkeys(settings, 0.0)
    for start in range(0, len(spectra), args.batch_size):
        chunk = spectra[start : start + args.batch_size]
        batch = preprocess.collate(chunk, cfg.preprocess.n_peaks)
        with torch.no_grad():
            log_probs, _, _ = refine(model, batch, cfg.inference_steps, 1.0)
        for setting in settings:
            weight, beam, tol, budget, workers = setting
            options = dataclasses.replace(
                cfg.decoding,
                evidence_weight=weight,
                beam_width=beam,
                fragment_tol_da=tol,
                max_expansions=budget,
                workers=workers,
            )
            t0 = time.perf_counter()
            peaks = evidence.from_batch(batch, tol)
            found = decoding.decode(
                log_probs, batch["precursor_mass"], options, 1, peaks
            )
            seconds[setting] += time.perf_counter() - t0
            decoded[setting] += found
    print(
        f"\n{'weight':>6} {'beam':>4} {'tol Da':>6} {'budget':>6} {'procs':>5} "
        f"{'pep recall':>10} "
        f"{'AA prec':>7} {'AA rec':>6} {'fitted':>6} {'spectra/s':>9}"
    )
    for setting in settings:
        found = decoded[setting]
        peptides = [masses.format_peptide(c[0].tokens) for c in found]
        m = aa_match_batch(peptides, truth)
        fitted = sum(c[0].constrained for c in found)
        weight, beam, tol, budget, workers = setting
        print(
            f"{weight:>6g} {beam:>4d} {tol:>6g} {budget:>6d} {workers:>5d} "
            f"{m.peptide_recall:>10.4f} "
            f"{m.aa_precision:>7.4f} {m.aa_recall:>6.4f} {fitted:>6d} "
            f"{len(found) / seconds[setting]:>9.1f}"
        )


if __name__ == "__main__":
    main()
