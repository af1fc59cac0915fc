"""Probe (session 26, not part of PepTRM): how often the first residue is right.

For the bundled network: the true first residue among the first step's likeliest
1 / 3 (STOP excluded), and the likeliest first residue after the halted run as
`peptrm sequence` runs it, on the held-out split of the training files and on
300 simulated spectra of charge 2 and 3 (with the fade of
`configs/experiments/argmax_nsup8_fade.yaml`, and charge 3 without it). From the
repository root:

    OMP_NUM_THREADS=2 python \
        checkpoints/first_residue_starts/probe_first_residue.py [DIR]

(DIR: another model folder; the bundled model by default).
"""

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_refine import simulated_spectra  # noqa: E402
from common import TRAIN_FILES, load_model_one_process  # noqa: E402

from peptrm import masses, preprocess, train  # noqa: E402
from peptrm.sequence import RunSummary, annotate, network_pass, refine  # noqa: E402

FADE = str(ROOT / "configs" / "experiments" / "argmax_nsup8_fade.yaml")


def main() -> None:
    """Print the first residue's accuracy after step 1 and after the halted run."""
    torch.set_num_threads(2)
    model, cfg = load_model_one_process(sys.argv[1] if len(sys.argv) > 1 else None)
    length = cfg.model.max_length
    sets = {
        "held-out": train.held_out_split(TRAIN_FILES, cfg),
        "simulated z2, fade settings": simulated_spectra(cfg, 300, 2, FADE),
        "simulated z3, faded": simulated_spectra(cfg, 300, 3, FADE),
        "simulated z3, not faded": simulated_spectra(cfg, 300, 3, None),
    }
    for name, spectra in sets.items():
        top1, top3, halted = [], [], []
        for start in range(0, len(spectra), 256):
            part = spectra[start : start + 256]
            batch = annotate(model, preprocess.collate(part, cfg.preprocess.n_peaks))
            truth = torch.as_tensor(
                np.stack([masses.encode(s.peptide, length)[0] for s in part])
            )
            _, _, (first,) = refine(model, batch, 1, 1.1)
            first = first[:, 0].clone()
            first[:, masses.STOP_INDEX] = -np.inf
            top = first.topk(3, dim=-1).indices
            top1 += (top[:, 0] == truth).tolist()
            top3 += (top == truth[:, None]).any(dim=1).tolist()
            last = network_pass(model, part, cfg, "cpu", RunSummary()).log_probs
            halted += (last[:, 0].argmax(dim=-1) == truth).tolist()
        print(  # noqa: T201
            f"{name:28s} {len(spectra):4d} spectra; first residue after step 1: "
            f"top-1 {np.mean(top1):.3f}, top-3 {np.mean(top3):.3f}; "
            f"after the halted run: {np.mean(halted):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
