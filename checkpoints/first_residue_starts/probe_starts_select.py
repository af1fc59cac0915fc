"""Probe (session 26, not part of PepTRM): first-residue starts, chosen three ways.

From the bundled network's first step, each spectrum's K likeliest first residues
(STOP excluded) each start a recursion (that residue given, the rest blank; the
shipped halting). Per spectrum one run is kept: by its draft's own likeliness (the
sum of each position's best log-probability; "greedy", with or without the plain
run from the blank draft as a candidate), by the network-alone search's score
("search"), or, "gate<t", greedy among the starts only where the first residue's
probability is below t (the plain run elsewhere). The kept run is decoded by the
network alone (evidence weight 0) and by the default top-1 search. From the
repository root:

    OMP_NUM_THREADS=1 python checkpoints/first_residue_starts/probe_starts_select.py \
        [--simulated 300 --charge 3 -c configs/experiments/argmax_nsup8_fade.yaml]

(without --simulated: the held-out split of the training files).
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_dev import metrics, scores  # noqa: E402
from bench_refine import simulated_spectra  # noqa: E402
from common import TRAIN_FILES, load_model_one_process  # noqa: E402

from peptrm import decoding, evidence, preprocess, train  # noqa: E402
from peptrm.sequence import annotate, refine  # noqa: E402


def first_residues(model, batch, k):
    """The first step's k likeliest first residues (B, k), and the top one's chance.

    STOP is excluded; the chance (B,) is the likeliest residue's probability.
    """
    _, _, (first,) = refine(model, batch, 1, 1.1)
    first = first[:, 0].clone()
    first[:, 0] = -np.inf  # STOP is no first residue
    return first.topk(k, dim=-1).indices, first.softmax(-1).max(-1).values


def start_draft(model, cfg, residue):
    """The draft (B, L, V) that gives each spectrum its first residue (B,) alone."""
    n, length = len(residue), cfg.model.max_length
    tokens = torch.zeros(n, length, dtype=torch.long)
    tokens[:, 0] = residue
    given = torch.zeros(n, length, dtype=torch.bool)
    given[:, 0] = True
    return model.draft_logits(tokens, given)


def start_runs(model, cfg, batch, k):
    """The plain run's log-probs, then each of the k starts' (k + 1, B, L, V)."""
    halting = dict(halt_unchanged=cfg.decoding.halt_unchanged)
    steps, threshold = cfg.recursion.n_supervision, cfg.decoding.halt_threshold
    base, _, _ = refine(model, batch, steps, threshold, **halting)
    top, confidence = first_residues(model, batch, k)
    runs = [base]
    for j in range(k):
        draft = start_draft(model, cfg, top[:, j])
        runs.append(refine(model, batch, steps, threshold, draft, **halting)[0])
    return torch.stack(runs), confidence


def arguments(k: int) -> argparse.Namespace:
    """Both probes' command line: `--k`, `--simulated N --charge Z -c YAML`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=k)
    parser.add_argument("--simulated", type=int, default=0)
    parser.add_argument("--charge", type=int, default=3)
    parser.add_argument("-c", default=None)
    return parser.parse_args()


def setup(args):
    """The bundled model and config, the spectra, and the two decoders' settings.

    The spectra are `args`' (simulated or the held-out split); the network-alone
    decoding settings and the bundled cleavage table complete them.
    """
    torch.set_num_threads(1)
    model, cfg = load_model_one_process(None)
    if args.simulated:
        spectra = simulated_spectra(cfg, args.simulated, args.charge, args.c)
    else:
        spectra = train.held_out_split(TRAIN_FILES, cfg)
    alone = dataclasses.replace(cfg.decoding, evidence_weight=0.0)
    table = evidence.load_table(ROOT / "peptrm" / "resources")
    return model, cfg, spectra, alone, table


def main() -> None:
    """Print peptide recall and AA precision of each way of choosing."""
    args = arguments(5)
    model, cfg, spectra, alone, table = setup(args)
    rows, sure = {}, []
    for start in range(0, len(spectra), 256):
        part = spectra[start : start + 256]
        n = len(part)
        batch = annotate(model, preprocess.collate(part, cfg.preprocess.n_peaks))
        mass = batch["precursor_mass"]
        runs, confidence = start_runs(model, cfg, batch, args.k)
        sure += confidence.tolist()
        liked = runs.max(-1).values.sum(-1)  # (K + 1, B)
        plain = evidence.from_batch(batch, alone.fragment_tol_da, None)
        peaks = evidence.from_batch(batch, cfg.decoding.fragment_tol_da, table)
        searched = [decoding.decode(r, mass, alone, 1, plain) for r in runs]
        search_score = torch.tensor(
            [[c[0].search_score if c else -1e9 for c in d] for d in searched]
        )
        choices = {"base": torch.zeros(n, dtype=torch.long)}
        for k in (3, 5):
            if k > args.k:
                continue
            starts_only = liked[1 : k + 1].argmax(0) + 1
            choices[f"k{k} greedy+base"] = liked[: k + 1].argmax(0)
            choices[f"k{k} greedy"] = starts_only
            choices[f"k{k} search"] = search_score[1 : k + 1].argmax(0) + 1
            for t in (0.5, 0.8, 0.95):
                gated = torch.where(confidence < t, starts_only, 0)
                choices[f"k{k} greedy gate<{t}"] = gated
        for name, index in choices.items():
            kept = runs[index, torch.arange(n)]
            for decoder, settings, evidence_of in (
                ("alone", alone, plain),
                ("default", cfg.decoding, peaks),
            ):
                found = decoding.decode(kept, mass, settings, 1, evidence_of)
                rows.setdefault(f"{name} {decoder}", []).extend(scores(found)[0])
    sure = np.array(sure)
    shares = [float((sure < t).mean()) for t in (0.5, 0.8, 0.95)]
    print(  # noqa: T201
        "spectra", len(spectra), "share with first-residue prob < 0.5/0.8/0.95:", shares
    )
    truth = [s.peptide for s in spectra]
    for name, peptides in rows.items():
        m = metrics(peptides, truth)
        print(  # noqa: T201
            f"{name:32s} pep recall {m.peptide_recall:.4f} "
            f"AA precision {m.aa_precision:.4f}"
        )


if __name__ == "__main__":
    main()
