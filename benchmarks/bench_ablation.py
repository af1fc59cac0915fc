"""Ablations of the network at equal training budget, by held-out decoded recall.

Each arm is the base recipe with a few settings changed; every arm trains from
the same seed for the same number of optimiser steps (`--stop-at-step`, on the
base recipe's schedules) on one CPU thread, and is scored on the peptide-disjoint
held-out split of the training files that training keeps out (never dev):

  * decoded peptide recall after every supervision step with the default decoder
    (mass-constrained + fragment evidence), i.e. the refinement curve;
  * peptide recall and AA precision of the network alone (evidence weight 0);
  * CPU-seconds of training (user + system of the training process).

An arm named `full` can reuse a checkpoint of a longer run of the base recipe
(`--reuse RUN`: its checkpoint at the same step), which is the same computation.

    python benchmarks/bench_ablation.py --base configs/experiments/ion_d64.yaml
        --stop-at-step 1600 --out runs/ablation [--reuse runs/ion_d64] [--arms ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
from pathlib import Path

import yaml
from bench_dev import all_steps, metrics, scores
from common import SHARED, TRAIN_FILES, load_model_one_process, print_provenance

from peptrm import decoding, evidence, preprocess, train

ARMS: dict[str, dict] = {
    "full": {},
    "no ion evidence": {"model": {"ion_evidence": False, "complement_encoding": False}},
    "T = 1": {"recursion": {"n_cycles": 1}},
    "suffix evidence": {"model": {"suffix_evidence": True}},
    "N_sup = 1": {"recursion": {"n_supervision": 1}},
    "no curriculum": {"training": {"curriculum_start_length": 30}},
    "no augmentation": {
        "training": {
            "augment_dropout": 0.0,
            "augment_noise_peaks": 0,
            "augment_intensity_sd": 0.0,
            "augment_shift_ppm": 0.0,
        }
    },
    "padding weighs 1": {"training": {"padding_loss_weight": 1.0}},
    "EMA without warm-up": {"training": {"ema_warmup": False}},
    "step embedding std 1": {"model": {"step_embedding_std": 1.0}},  # N(0, 1)
}


def merged(base: dict, overlay: dict) -> dict:
    """`overlay` laid over `base`, section by section."""
    out = {k: dict(v) for k, v in base.items()}
    for section, values in overlay.items():
        out.setdefault(section, {}).update(values)
    return out


def train_arm(name: str, config: dict, out: Path, stop: int, reuse: Path | None):
    """Train one arm (or export the reused run's checkpoint); CPU-seconds spent."""
    folder = out / name.replace(" ", "_").replace("=", "").replace("__", "_")
    folder.mkdir(parents=True, exist_ok=True)
    if reuse is not None:
        ckpt = next((reuse / "checkpoints").glob(f"*step={stop}.ckpt"), None)
        if ckpt is None:
            raise SystemExit(f"{reuse}: no checkpoint at step {stop}")
        train.export_checkpoint(ckpt, folder / "model")
        return folder / "model", float("nan")
    done = folder / "cpu_seconds.txt"
    if done.exists():  # trained by an earlier run of this benchmark
        return folder / "model", float(done.read_text())
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [
        str(Path(sys.executable).parent / "peptrm"), "train", *map(str, TRAIN_FILES),
        "--fasta", *map(str, sorted((SHARED / "fasta").glob("*.fasta"))),
        "-o", str(folder), "-c", str(path), "--stop-at-step", str(stop),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(folder / "train.log", "w") as log:
        subprocess.run(command, check=True, env=env, stdout=log, stderr=log)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    done.write_text(f"{cpu:.1f}")
    return folder / "model", cpu


def score_arm(model_dir: Path) -> dict:
    """Held-out decoded peptide recall per step, and the network alone."""
    # One process: code edited while a long ablation runs cannot reach a worker.
    model, cfg = load_model_one_process(model_dir)
    spectra = train.held_out_split(TRAIN_FILES, cfg)
    truth = [s.peptide for s in spectra]
    n_sup = cfg.recursion.n_supervision
    by_step: list[list[str]] = [[] for _ in range(n_sup)]
    alone: list[str] = []
    model_only = dataclasses.replace(cfg.decoding, evidence_weight=0.0)
    for start in range(0, len(spectra), 256):
        batch = preprocess.collate(spectra[start : start + 256], cfg.preprocess.n_peaks)
        history, _, _ = all_steps(model, batch, n_sup, 1.0)
        peaks = evidence.from_batch(batch, cfg.decoding.fragment_tol_da)
        mass = batch["precursor_mass"]
        for k, log_probs in enumerate(history):
            found = decoding.decode(log_probs, mass, cfg.decoding, 1, peaks)
            by_step[k] += scores(found)[0]
        alone += scores(decoding.decode(history[-1], mass, model_only, 1))[0]
    curve = [metrics(found, truth).peptide_recall for found in by_step]
    network = metrics(alone, truth)
    return {
        "spectra": len(spectra),
        "curve": curve,
        "alone_recall": network.peptide_recall,
        "alone_aa_precision": network.aa_precision,
    }


def main() -> None:
    """Train and score each arm; print one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--stop-at-step", type=int, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--reuse", type=Path, help="a run of --base for the full arm")
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()
    print_provenance()
    base = yaml.safe_load(args.base.read_text())
    rows = []
    for name in args.arms:
        reuse = args.reuse if name == "full" else None
        model_dir, cpu = train_arm(
            name, merged(base, ARMS[name]), args.out, args.stop_at_step, reuse
        )
        result = score_arm(model_dir)
        rows.append((name, cpu, result))
        print(f"{name}: {result} cpu {cpu:.0f} s", flush=True)
    print(
        f"\nheld-out split of the training files ({rows[0][2]['spectra']} spectra), "
        f"{args.stop_at_step} optimiser steps per arm, base {args.base}"
    )
    print(
        f"{'arm':<18} {'CPU s':>6} {'recall step 1':>13} {'last step':>9} "
        f"{'network alone':>13} {'alone AA prec':>13}"
    )
    for name, cpu, r in rows:
        print(
            f"{name:<18} {cpu:>6.0f} {r['curve'][0]:>13.4f} {r['curve'][-1]:>9.4f} "
            f"{r['alone_recall']:>13.4f} {r['alone_aa_precision']:>13.4f}"
        )


if __name__ == "__main__":
    main()
