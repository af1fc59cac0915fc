"""Does recursion earn its keep? Decoded peptide recall through the refinement.

For each model folder, on the peptide-disjoint held-out split of the training
files that training keeps out (or on dev with `--dev`, to be run once per
shipped model), this prints decoded peptide recall and AA precision:

  * after every supervision step from the blank draft (the refinement curve);
  * after every feedback round (`decoding.refine_rounds`): the search's best
    peptide goes back into the recursion as the draft, `FEEDBACK_STEPS` more
    steps run, and the search runs again;
  * after the steps `peptrm sequence` runs: each spectrum stops where the
    model's halting (`decoding.halt_threshold`, `decoding.halt_unchanged`)
    stops it ("halted");

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

`--by-charge` adds the "halted" rows of each precursor charge (2, 3, 4 and up)
and of peptides of up to 12 residues and longer, to see where a model is lost.

`--simulated N --charge Z` reads N realistic simulated spectra of precursor
charge Z instead, of tryptic peptides of the contaminants FASTA (which no run
trains on), with the simulation settings of `-c YAML` over the shipped ones
(e.g. `configs/experiments/argmax_nsup8_fade.yaml`); the seed is fixed.

`--fold-runs R0 R1 R2` reads out-of-fold instead: the training part (1,710
spectra, 9 times the held-out split), each spectrum by the run of MODEL_DIR's
recipe that left its fold out (`peptrm train --left-out-fold k`), with that
fold's annotator, as `peptrm calibrate --cross-fit-networks` reads them. The
held-out split has chosen many snapshots and flatters the one chosen; this set
has chosen none.

    python benchmarks/bench_refine.py MODEL_DIR [MODEL_DIR ...]
        [--rounds 2] [--scorers peptrm/resources] [--dev] [--steps N] [--given K]
        [--fold-runs R0 R1 R2] [--by-charge] [--simulated N --charge Z [-c YAML]]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from bench_dev import load, metrics, scores
from common import DEV, SHARED, TRAIN_FILES, load_model_one_process, print_provenance

from peptrm import decoding, evidence, masses, preprocess, simulate, train
from peptrm.config import load_config
from peptrm.io import Skipped
from peptrm.sequence import (
    FEEDBACK_STEPS,
    annotate,
    candidates_as_draft,
    in_folds,
    refine,
)
from peptrm.weights import BUNDLED, load_cross_fit

ANNOTATOR_FOLDS = [
    Path(__file__).resolve().parents[1]
    / "checkpoints"
    / "annotator"
    / "cross_fit"
    / f"fold{k}"
    for k in range(3)
]  # the peak annotators the bundled scorers are cross-fitted with


def score_model(
    folder: Path,
    scorers: Path,
    rounds: int,
    dev: bool,
    steps: int | None = None,
    given: int = 0,
    fold_runs: list[Path] | None = None,
    by_charge: bool = False,
    simulated: tuple[int, int, str | None] | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """(peptide recall, AA precision) per step and per round, for each decoder.

    `fold_runs` (one run of `folder`'s recipe per fold, each without that fold):
    out-of-fold instead, every training-part spectrum read by the run that left
    its fold out, with that fold's annotator, as `peptrm calibrate` reads them.
    """
    model, cfg = load_model_one_process(folder)
    models = [model]
    if fold_runs:
        spectra = train.training_part(TRAIN_FILES, cfg)
        models = load_cross_fit(ANNOTATOR_FOLDS, model, fold_runs)
    elif dev:
        spectra = load(sorted(DEV.glob("*.mgf")), cfg)
    elif simulated:
        spectra = simulated_spectra(cfg, *simulated)
    else:
        spectra = train.held_out_split(TRAIN_FILES, cfg)
    table = evidence.load_table(scorers)
    n_sup = steps or cfg.recursion.n_supervision
    read = in_folds(
        models,
        spectra,
        lambda run, part: read_spectra(run, cfg, part, table, rounds, n_sup, given),
    )
    truth = [s.peptide for s in spectra]
    out = {}
    for key in read[0]:
        out[key] = []
        for index in range(len(read[0][key])):
            match = metrics([r[key][index] for r in read], truth)
            out[key].append((match.peptide_recall, match.aa_precision))
    if by_charge:
        for name, members in subsets(spectra).items():
            for key in ("default halted", "alone halted"):
                found = [read[i][key][0] for i in members]
                match = metrics(found, [truth[i] for i in members])
                label = f"{key} {name} ({len(members)})"
                out[label] = [(match.peptide_recall, match.aa_precision)]
    out["spectra"] = len(spectra)
    return out


SIMULATED_FASTA = SHARED / "fasta" / "crap_2015-01-30.fasta"  # in no training run


def simulated_spectra(cfg, n: int, charge: int, settings: str | None) -> list:
    """`n` realistic simulated spectra of charge `charge`, preprocessed as real ones."""
    simulation = load_config(settings).simulation
    # A peptide that cannot carry `charge` gets the nearest plausible one
    # (`simulate.sample_charge`), as in training.
    top = max(charge, len(simulation.charge_weights))
    weights = [1.0 if z == charge else 0.0 for z in range(1, top + 1)]
    simulation = dataclasses.replace(simulation, charge_weights=weights)
    peptides = simulate.digest_fasta(SIMULATED_FASTA, simulation)
    rng = np.random.default_rng(100 + charge)
    prepare = preprocess.pipeline(cfg.preprocess)
    drawn = simulate.simulate_batch(peptides, n, rng, simulation, 1.0)
    spectra = [prepare(s) for s in drawn]
    return [s for s in spectra if not isinstance(s, Skipped)]


def subsets(spectra) -> dict[str, list[int]]:
    """Indices of the spectra by precursor charge and by peptide length."""
    lengths = [
        len(masses.strip_modifications(masses.parse(s.peptide))) for s in spectra
    ]
    groups = {
        "z2": [i for i, s in enumerate(spectra) if s.charge <= 2],
        "z3": [i for i, s in enumerate(spectra) if s.charge == 3],
        "z4+": [i for i, s in enumerate(spectra) if s.charge >= 4],
        "len<=12": [i for i, n in enumerate(lengths) if n <= 12],
        "len>12": [i for i, n in enumerate(lengths) if n > 12],
    }
    return {name: members for name, members in groups.items() if members}


def read_spectra(model, cfg, spectra, table, rounds: int, n_sup: int, given: int):
    """Per spectrum, {"<decoder> step|round": best peptide after each index}."""
    decoders = {
        "default": (cfg.decoding, table),
        "alone": (dataclasses.replace(cfg.decoding, evidence_weight=0.0), None),
    }
    found = {
        f"{name} {kind}": [[] for _ in range(n)]
        for name in decoders
        for kind, n in (("step", n_sup), ("round", rounds + 1), ("halted", 1))
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
            halted, _, _ = refine(  # as `peptrm sequence` stops each spectrum
                model, batch, n_sup, cfg.decoding.halt_threshold, draft,
                halt_unchanged=cfg.decoding.halt_unchanged,
                starts=0 if given else cfg.decoding.first_residue_starts,
            )  # fmt: skip
        for name, (settings, cleavage) in decoders.items():
            peaks = evidence.from_batch(batch, settings.fragment_tol_da, cleavage)
            best = decoding.decode(halted, mass, settings, 1, peaks)
            found[f"{name} halted"][0] += scores(best)[0]
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
    return [
        {key: [peptides[i] for peptides in rows] for key, rows in found.items()}
        for i in range(len(spectra))
    ]


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
    parser.add_argument(
        "--by-charge", action="store_true", help="halted rows by charge and length"
    )
    parser.add_argument("--simulated", type=int, help="N simulated spectra instead")
    parser.add_argument("--charge", type=int, default=2, help="their precursor charge")
    parser.add_argument("-c", "--config", help="simulation settings overlaid")
    parser.add_argument(
        "--fold-runs",
        nargs="+",
        type=Path,
        help="out-of-fold on the training part: one run of the recipe per fold",
    )
    args = parser.parse_args()
    print_provenance(" ".join(str(m) for m in args.models))
    for folder in args.models:
        result = score_model(
            folder,
            args.scorers,
            args.rounds,
            args.dev,
            args.steps,
            args.given,
            args.fold_runs,
            args.by_charge,
            (args.simulated, args.charge, args.config) if args.simulated else None,
        )
        split = (
            f"simulated, charge {args.charge}, settings {args.config or 'shipped'}"
            if args.simulated
            else "training part, out-of-fold"
            if args.fold_runs
            else "dev"
            if args.dev
            else "held-out split of the training files"
        )
        print(f"\n{folder}: {split}, {result.pop('spectra')} spectra")
        width = max(16, *(len(key) for key in result))
        print(f"{'':<{width}} {'index':>5} {'pep recall':>10} {'AA precision':>12}")
        for key, rows in result.items():
            for i, (recall, precision) in enumerate(rows):
                index = i + 1 if key.endswith("step") else i
                print(f"{key:<{width}} {index:>5} {recall:>10.4f} {precision:>12.4f}")


if __name__ == "__main__":
    main()
