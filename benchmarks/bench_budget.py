"""Search budget against accuracy: the default pipeline at several budgets.

The budget is `decoding.max_expansions` of the exact search and, with
`--beam-widths`, the `beam_width` of the beam search it falls back to.

Sequences the peptide-disjoint held-out split of the training files (never dev)
with the bundled model's default decoding (network, learned cleavage search,
reranker of its top K, calibration), once per budget, in one process on one
thread, and prints rank-1 peptide recall, AA precision and the seconds spent in
the network and in decoding. The figures are for choosing
`decoding.max_expansions`; side by side in one run, so their ratios hold on a
busy machine. `--training-part N` adds every Nth spectrum of the training part
(what the network, the cleavage table and the reranker were fitted on, so its
recall flatters every budget alike; it has ~9x as many spectra as the split).

    python benchmarks/bench_budget.py [--budgets 1000 500 300] [-m MODEL]
        [--training-part 3] [--beam-widths 64 32 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

from bench_dev import metrics
from common import TRAIN_FILES, load_model_one_process, print_provenance

from peptrm import masses, train
from peptrm.sequence import RunSummary, decode_batch, load_scorers
from peptrm.weights import BUNDLED


def main() -> None:
    """One row per budget."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 500, 300])
    parser.add_argument("-m", "--model", type=Path, default=BUNDLED)
    parser.add_argument(
        "--training-part",
        type=int,
        default=0,
        metavar="N",
        help="also every Nth spectrum of the training part (0: not)",
    )
    parser.add_argument(
        "--beam-widths",
        type=int,
        nargs="+",
        help="fallback beam widths to try at each budget (default: the model's)",
    )
    args = parser.parse_args()
    print_provenance(str(args.model))
    model, cfg = load_model_one_process(args.model)
    scorers = load_scorers(args.model)
    sets = {
        "held-out split of the training files": train.held_out_split(TRAIN_FILES, cfg)
    }
    if args.training_part > 0:
        part = train.training_part(TRAIN_FILES, cfg)[:: args.training_part]
        sets[f"the training part, one spectrum in {args.training_part}"] = part
    widths = args.beam_widths or [cfg.decoding.beam_width]
    for name, spectra in sets.items():
        print(f"\n{name}: {len(spectra)} spectra")
        table(model, cfg, scorers, spectra, args.budgets, widths)


def table(model, cfg, scorers, spectra, budgets, widths) -> None:
    """One row per budget and beam width on these spectra."""
    truth = [s.peptide for s in spectra]
    header = (
        ("budget", 7),
        ("beam", 5),
        ("pep recall", 10),
        ("AA prec", 8),
        ("model s", 8),
    )
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'decode s':>9}")
    for budget, beam in itertools.product(budgets, widths):
        decoding = dataclasses.replace(
            cfg.decoding, max_expansions=budget, beam_width=beam
        )
        run = dataclasses.replace(cfg, decoding=decoding)
        summary = RunSummary()
        found = []
        size = run.decoding.batch_size
        for start in range(0, len(spectra), size):
            candidates, _, _ = decode_batch(
                model, spectra[start : start + size], run, "cpu", 1, summary, scorers
            )
            found += [
                masses.format_peptide(c[0].tokens) if c else "" for c in candidates
            ]
        match = metrics(found, truth)
        print(
            f"{budget:>7} {beam:>5} {match.peptide_recall:>10.4f} "
            f"{match.aa_precision:>8.4f} "
            f"{summary.model_seconds:>8.1f} {summary.decode_seconds:>9.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
