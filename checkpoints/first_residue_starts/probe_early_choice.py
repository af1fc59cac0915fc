"""Probe (session 26, not part of PepTRM): choose the first-residue start early.

As `probe_starts_select.py` (whose loading and start drafts it reuses), K starts
(default 3) each run the whole recursion, but each spectrum's run is chosen by its
draft's likeliness after s steps (1, 2, 3, 4, 8) and that run's final draft
decoded: could the other starts stop after s steps and save their later steps?
From the repository root:

    OMP_NUM_THREADS=1 python checkpoints/first_residue_starts/probe_early_choice.py \
        [--simulated 300 --charge 3 -c configs/experiments/argmax_nsup8_fade.yaml]
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dev import metrics, scores  # noqa: E402
from probe_starts_select import arguments, first_residues, setup, start_draft  # noqa: E402

from peptrm import decoding, evidence, preprocess  # noqa: E402
from peptrm.sequence import annotate, refine  # noqa: E402


def main() -> None:
    """Print peptide recall and AA precision for each choosing step."""
    args = arguments(3)
    model, cfg, spectra, alone, table = setup(args)
    n_sup, k = cfg.recursion.n_supervision, args.k
    rows = {}
    for start in range(0, len(spectra), 256):
        part = spectra[start : start + 256]
        n = len(part)
        batch = annotate(model, preprocess.collate(part, cfg.preprocess.n_peaks))
        mass = batch["precursor_mass"]
        top, _ = first_residues(model, batch, k)
        finals, histories = [], []
        for j in range(k):
            final, _, history = refine(
                model,
                batch,
                n_sup,
                cfg.decoding.halt_threshold,
                start_draft(model, cfg, top[:, j]),
                halt_unchanged=cfg.decoding.halt_unchanged,
            )
            finals.append(final)  # halted spectra keep their last draft
            histories.append(history + [history[-1]] * (n_sup - len(history)))
        finals = torch.stack(finals)
        plain = evidence.from_batch(batch, alone.fragment_tol_da, None)
        peaks = evidence.from_batch(batch, cfg.decoding.fragment_tol_da, table)
        for s in (1, 2, 3, 4, n_sup):
            liked = torch.stack([h[s - 1].max(-1).values.sum(-1) for h in histories])
            kept = finals[liked.argmax(0), torch.arange(n)]
            for decoder, settings, evidence_of in (
                ("alone", alone, plain),
                ("default", cfg.decoding, peaks),
            ):
                found = decoding.decode(kept, mass, settings, 1, evidence_of)
                name = f"k{k} chosen after step {s} {decoder}"
                rows.setdefault(name, []).extend(scores(found)[0])
    truth = [s.peptide for s in spectra]
    for name, peptides in rows.items():
        m = metrics(peptides, truth)
        print(  # noqa: T201
            f"{name:36s} pep recall {m.peptide_recall:.4f} "
            f"AA precision {m.aa_precision:.4f}"
        )


if __name__ == "__main__":
    main()
