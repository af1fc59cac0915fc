"""How sure the peak annotator is on spectra it learned from and on others.

The learned scorers (cleavage table, reranker) are fitted on the training part
of the training files; sequencing meets spectra the annotator never saw. This
prints, for the model's annotator, the per-peak loss of its ion-type chances
(`train.annotated_batch_loss`, labels within `training.annotation_tol_da` of the
label's b, y, b++, y++ ions) and its mean chance on the labelled ions and on
the other peaks, on the training part and on the held-out split. With
`--cross-fit RUN ...` (runs of `peptrm train --left-out-fold k`), it adds the
training part read out-of-fold, as `peptrm calibrate --cross-fit` reads it:
each spectrum by the run that left its fold out.

    python benchmarks/bench_annotator.py [--model DIR] [--cross-fit RUN ...]
"""

from __future__ import annotations

import argparse

import torch
from common import TRAIN_FILES, print_provenance

from peptrm import preprocess, train
from peptrm.weights import load_cross_fit, load_model


def sureness(model, spectra, cfg) -> dict[str, float]:
    """Per-peak loss and mean chances on labelled ions and other peaks."""
    loss = ions = others = n_ions = n_others = 0.0
    size = cfg.decoding.batch_size
    for start in range(0, len(spectra), size):
        part = spectra[start : start + size]
        batch = preprocess.collate(part, cfg.preprocess.n_peaks, cfg.model.max_length)
        with torch.no_grad():
            batch_loss, logits, targets = train.annotated_batch_loss(
                model, batch, cfg.training.annotation_tol_da
            )
        loss += batch_loss.item() * len(part)
        chance = torch.sigmoid(logits)
        real = (batch["intensity"] > 0).unsqueeze(-1).expand_as(chance)
        ions += chance[real & (targets == 1)].sum().item()
        others += chance[real & (targets == 0)].sum().item()
        n_ions += (real & (targets == 1)).sum().item()
        n_others += (real & (targets == 0)).sum().item()
    return {
        "spectra": len(spectra),
        "loss": loss / len(spectra),
        "ions": ions / n_ions,
        "others": others / n_others,
    }


def main() -> None:
    """Print the annotator's sureness on each set of spectra."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--cross-fit", nargs="+", default=[])
    args = parser.parse_args()
    print_provenance(args.model)
    model, cfg = load_model(args.model)
    if not cfg.model.peak_annotator:
        raise SystemExit("the model has no peak annotator")
    part = train.training_part(TRAIN_FILES, cfg)
    rows = {
        "training part": sureness(model, part, cfg),
        "held-out split": sureness(model, train.held_out_split(TRAIN_FILES, cfg), cfg),
    }
    if args.cross_fit:
        runs = load_cross_fit(args.cross_fit, model)
        for k, run in enumerate(runs):
            fold = [s for s in part if train.fold_of(s.peptide, len(runs)) == k]
            rows[f"training part, fold {k} out-of-fold"] = sureness(run, fold, cfg)
    print(f"\n{'':<38}{'spectra':>8}{'per-peak loss':>15}{'chance, ions':>14}"
          f"{'chance, others':>16}")  # fmt: skip
    for name, row in rows.items():
        print(
            f"{name:<38}{row['spectra']:>8}{row['loss']:>15.4f}{row['ions']:>14.3f}"
            f"{row['others']:>16.4f}"
        )


if __name__ == "__main__":
    main()
