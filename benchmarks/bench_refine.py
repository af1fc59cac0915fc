"""Does recursion earn its keep? Decoded peptide recall through the refinement.

For each model folder, on the peptide-disjoint held-out split of the training
files that training keeps out (or on dev with `--dev`, to be run once per
shipped model), this prints decoded peptide recall and AA precision:

  * after every supervision step from the blank draft (the refinement curve);
  * after every feedback round (`decoding.refine_rounds`): the search's best
    peptide goes back into the recursion as the draft, `FEEDBACK_STEPS` more
    steps run, and the search runs again;

each twice: with the default decoder (the model's search objective plus the
learned cleavage log-odds of `--scorers`, top-1 search) and with the network
alone (evidence weight 0, no table: only the precursor mass constrains the
search, also in the rounds that feed back).

`--steps N` runs N supervision steps (default: the model's own N_sup), to see
whether the curve goes on rising past what the model trained with. `--given K`
is a diagnostic of reading the spectrum where the ions are: the recursion
starts from each label's first K tokens (the rest blank), so the lookups of
position K sit on true ions; a network that reads them extends the right run.
Its rows also count the given tokens, so compare them across models, not with
the blank start's.

    python benchmarks/bench_refine.py MODEL_DIR [MODEL_DIR ...]
        [--rounds 2] [--scorers peptrm/resources] [--dev] [--steps N] [--given K]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from bench_dev import load, metrics, scores
from common import DEV, TRAIN_FILES, load_model_one_process, print_provenance

from peptrm import decoding, evidence, masses, preprocess, train
from peptrm.sequence import FEEDBACK_STEPS, annotate, candidates_as_draft, refine
from peptrm.weights import BUNDLED


def score_model(
    folder: Path,
    scorers: Path,
    rounds: int,
    dev: bool,
    steps: int | None = None,
    given: int = 0,
) -> dict[str, list[tuple[float, float]]]:
    """(peptide recall, AA precision) per step and per round, for each decoder."""
    model, cfg = load_model_one_process(folder)
    spectra = (
        load(sorted(DEV.glob("*.mgf")), cfg)
        if dev
        else train.held_out_split(TRAIN_FILES, cfg)
    )
    truth = [s.peptide for s in spectra]
    table = evidence.load_table(scorers)
    decoders = {
        "default": (cfg.decoding, table),
        "alone": (dataclasses.replace(cfg.decoding, evidence_weight=0.0), None),
    }
    n_sup = steps or cfg.recursion.n_supervision
    found = {
        f"{name} {kind}": [[] for _ in range(n)]
        for name in decoders
        for kind, n in (("step", n_sup), ("round", rounds + 1))
    }
    for start in range(0, len(spectra), 256):
        batch = preprocess.collate(spectra[start : start + 256], cfg.preprocess.n_peaks)
        batch = annotate(model, batch)
        mass = batch["precursor_mass"]
        draft = (
            given_draft(model, spectra[start : start + 256], given) if given else None
        )
        with torch.no_grad():  # every step, none halts
            _, _, history = refine(model, batch, n_sup, 1.1, draft)
        for name, (settings, cleavage) in decoders.items():
            peaks = evidence.from_batch(batch, settings.fragment_tol_da, cleavage)
            for k, log_probs in enumerate(history):
                best = decoding.decode(log_probs, mass, settings, 1, peaks)
                found[f"{name} step"][k] += scores(best)[0]
            for r in range(rounds + 1):
                found[f"{name} round"][r] += scores(best)[0]
                if r == rounds:
                    break
                draft = candidates_as_draft(model, best, cfg.model.max_length)
                log_probs, _, _ = refine(model, batch, FEEDBACK_STEPS, 1.0, draft)
                best = decoding.decode(log_probs, mass, settings, 1, peaks)
    out = {}
    for key, by_index in found.items():
        out[key] = []
        for peptides in by_index:
            match = metrics(peptides, truth)
            out[key].append((match.peptide_recall, match.aa_precision))
    out["spectra"] = len(spectra)
    return out


def given_draft(model, spectra, given: int) -> torch.Tensor:
    """Drafts (B, L, V) holding each label's first `given` tokens, blank after."""
    length = model.cfg.max_length
    tokens = torch.as_tensor(
        np.stack([masses.encode(s.peptide, length) for s in spectra])
    )
    positions = (torch.arange(length) < given).expand(len(spectra), -1)  # (B, L)
    return model.draft_logits(tokens, positions)


def main() -> None:
    """Score each model folder; print one table per model."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="*", type=Path, default=[BUNDLED])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scorers", type=Path, default=BUNDLED)
    parser.add_argument("--dev", action="store_true", help="dev, once per model")
    parser.add_argument("--steps", type=int, help="supervision steps (model's N_sup)")
    parser.add_argument("--given", type=int, default=0, help="start from K true tokens")
    args = parser.parse_args()
    print_provenance(" ".join(str(m) for m in args.models))
    for folder in args.models:
        result = score_model(
            folder, args.scorers, args.rounds, args.dev, args.steps, args.given
        )
        split = "dev" if args.dev else "held-out split of the training files"
        print(f"\n{folder}: {split}, {result.pop('spectra')} spectra")
        print(f"{'':<16} {'index':>5} {'pep recall':>10} {'AA precision':>12}")
        for key, rows in result.items():
            for i, (recall, precision) in enumerate(rows):
                index = i + 1 if key.endswith("step") else i
                print(f"{key:<16} {index:>5} {recall:>10.4f} {precision:>12.4f}")


if __name__ == "__main__":
    main()
