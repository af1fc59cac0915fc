"""Can the network repair a draft, and tell a right candidate from a wrong one.

On the peptide-disjoint held-out split of the training files (never dev), for
each model folder:

  * repair: every spectrum's own peptide with Poisson(1.5) search-like errors
    (`simulate.draft_errors`, seed 7) is given as the draft; after 1, 2 and 4
    supervision steps it prints the share of wrong positions fixed, of right
    positions kept, and of peptides wholly right (draft, then network argmax);
  * verdict: each of the search's top `--k` candidates (default decoder with the
    model's cleavage table) is given as the draft for one step; rank-1 recall
    when candidates are ordered by the search, by the halting probability, and
    by the mean log-probability the network gives the candidate's own tokens.

    python benchmarks/bench_repair.py MODEL_DIR [MODEL_DIR ...] [--k 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import TRAIN_FILES, load_model_one_process, print_provenance

from peptrm import evidence, masses, preprocess, simulate, train
from peptrm.metrics import same_peptide
from peptrm.sequence import annotate, refine, search_top
from peptrm.weights import BUNDLED


def repair(model, batch: dict, tokens: torch.Tensor) -> list[tuple[int, ...]]:
    """(steps, fixed, kept, peptide right in the draft, after) rows."""
    rng = np.random.default_rng(7)
    drafts = np.stack([simulate.draft_errors(t, rng, 1.5) for t in tokens.numpy()])
    drafts = torch.from_numpy(drafts)
    ends = (tokens != 0).sum(dim=1, keepdim=True)
    counted = (tokens != 0) | (torch.arange(tokens.shape[1]) == ends)
    wrong, right = (drafts != tokens) & counted, (drafts == tokens) & counted
    rows = []
    for steps in (1, 2, 4):
        log_probs, _, _ = refine(model, batch, steps, 1.1, model.draft_logits(drafts))
        out = log_probs.argmax(dim=-1)
        rows.append(
            (
                steps,
                float(((out == tokens) & wrong).sum() / wrong.sum()),
                float(((out == tokens) & right).sum() / right.sum()),
                float((drafts == tokens).all(dim=1).float().mean()),
                float((out == tokens).all(dim=1).float().mean()),
            )
        )
    return rows


@torch.no_grad()
def verdict(model, cfg, batch: dict, truth: list[str], k: int, table) -> dict:
    """Rank-1 recall of the search's top k reordered by the network's verdict."""
    log_probs, _, _ = refine(model, batch, cfg.inference_steps, 1.1)
    peaks = evidence.from_batch(
        annotate(model, batch), cfg.decoding.fragment_tol_da, table
    )
    found = search_top(log_probs, batch["precursor_mass"], cfg, k, peaks, k)
    length = cfg.model.max_length
    halting = [[] for _ in found]
    agreement = [[] for _ in found]
    for j in range(k):  # the j-th candidates of every spectrum that has one
        rows = [i for i, options in enumerate(found) if len(options) > j]
        if not rows:
            break
        sub = {key: value[rows] for key, value in batch.items()}
        tokens = torch.stack(
            [torch.as_tensor(masses.encode(found[i][j].tokens, length)) for i in rows]
        )
        spectrum = model.encode_batch(sub)
        _, z = model.initial_state(spectrum)
        y, _, halt = model(spectrum, model.draft_logits(tokens), z)
        own = y.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        ends = (tokens != 0).sum(dim=1, keepdim=True)
        counted = (torch.arange(length) <= ends).float()
        mean = (own * counted).sum(1) / counted.sum(1)
        for r, i in enumerate(rows):
            halting[i].append(float(halt[r]))
            agreement[i].append(float(mean[r]))

    def right(i: int, j: int) -> bool:
        return same_peptide(masses.format_peptide(found[i][j].tokens), truth[i])

    order = {
        "search": lambda i: 0,
        "halting": lambda i: int(np.argmax(halting[i])),
        "own tokens": lambda i: int(np.argmax(agreement[i])),
    }
    n = len(truth)
    out = {
        name: sum(right(i, pick(i)) for i in range(n) if found[i]) / n
        for name, pick in order.items()
    }
    out[f"recall@{k}"] = (
        sum(any(right(i, j) for j in range(len(found[i]))) for i in range(n)) / n
    )
    return out


def main() -> None:
    """One block per model."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="*", type=Path, default=[BUNDLED])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--scorers", type=Path, default=BUNDLED)
    args = parser.parse_args()
    print_provenance(" ".join(str(m) for m in args.models))
    table = evidence.load_table(args.scorers)
    for folder in args.models:
        model, cfg = load_model_one_process(folder)
        spectra = train.held_out_split(TRAIN_FILES, cfg)
        truth = [masses.format_peptide(masses.parse(s.peptide)) for s in spectra]
        batch = preprocess.collate(
            spectra, cfg.preprocess.n_peaks, cfg.model.max_length
        )
        print(
            f"\n{folder}: held-out split of the training files, {len(spectra)} spectra"
        )
        print("repair of drafts with Poisson(1.5) errors:")
        print(f"{'steps':>5} {'fixed':>6} {'kept':>6} {'draft right':>11} {'after':>6}")
        for steps, fixed, kept, before, after in repair(model, batch, batch["tokens"]):
            print(
                f"{steps:>5} {fixed:>6.3f} {kept:>6.3f} {before:>11.3f} {after:>6.3f}"
            )
        print(f"rank-1 recall of the search's top {args.k}, reordered by:")
        for name, recall in verdict(model, cfg, batch, truth, args.k, table).items():
            print(f"  {name:<12} {recall:.4f}")


if __name__ == "__main__":
    main()
