"""Training: the LightningModule (deep supervision, losses, EMA) and the data stream.

Lightning owns the loop, checkpoints, resuming (`ckpt_path`), seeding, progress,
mixed precision and multiple devices. What is ours: the deep-supervision loop
written out in `training_step`, the physics losses, and a data stream whose
batches are a pure function of (seed, batch index), so that a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
import re
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import lightning as L  # noqa: N812 - the Lightning convention
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import load_file
from torch import Tensor
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from peptrm import masses, preprocess, simulate
from peptrm.config import Config, TrainingConfig, config_to_dict, load_config
from peptrm.io import Skipped, Spectrum, read_spectra
from peptrm.model import (
    ANNOTATED_IONS,
    ANNOTATOR_INPUTS,
    PepTRM,
    count_parameters,
    peak_chances,
)
from peptrm.weights import WEIGHTS_NAME, load_annotators, save_model

log = logging.getLogger(__name__)

VALIDATION_STREAM = (
    2**32 - 1
)  # seed word of the simulated validation set (no batch has it)


# --------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------
def steps_per_batch(cfg: Config) -> int:
    """Optimiser steps per batch: N_sup (deep supervision), or 1 for the annotator."""
    return 1 if cfg.training.annotator_only else cfg.recursion.n_supervision


def supervision_weights(n_supervision: int, decay: float) -> list[float]:
    """Weight of each deep-supervision step: decay^(N_sup-1-k), so the last is 1."""
    return [decay ** (n_supervision - 1 - k) for k in range(n_supervision)]


def expected_token_masses(probs: Tensor) -> Tensor:
    """Expected token mass at each position (B, L) of a soft draft (B, L, V)."""
    vocab_masses = torch.as_tensor(
        masses.VOCAB_MASSES, dtype=probs.dtype, device=probs.device
    )
    return probs @ vocab_masses  # (B, L)


def mass_loss(probs: Tensor, precursor_mass: Tensor) -> Tensor:
    """Smooth-L1 distance of the soft peptide's mass from the precursor, in residues.

    Dividing by the mean residue mass makes one missing residue cost about 1.
    """
    predicted = expected_token_masses(probs).sum(dim=1) + masses.H2O  # (B,)
    error = (predicted - precursor_mass.to(probs.dtype)) / masses.MEAN_RESIDUE_MASS
    return F.smooth_l1_loss(error, torch.zeros_like(error))


def spectrum_loss(
    probs: Tensor,
    precursor_mass: Tensor,
    mz: Tensor,
    intensity: Tensor,
    sigma_da: float,
) -> Tensor:
    """Matched-filter loss: the share of observed intensity no soft b/y ion explains.

    Recall-only: theoretical b, y, b++ and y++ ions of the soft draft are matched
    to every observed peak with a Gaussian of width `sigma_da`; a peak counts as
    explained by its best-matching ion, weighted by the chance that ion exists.
    Real spectra are mostly other peaks, so the floor is well above zero.
    """
    prefix = torch.cumsum(expected_token_masses(probs), dim=1)  # (B, L) b neutral
    alive = 1 - probs[..., masses.STOP_INDEX]  # (B, L) position holds a residue
    exists = alive[:, :-1] * alive[:, 1:]  # (B, L-1) a cleavage after position i
    b = prefix[:, :-1]  # (B, L-1)
    y = precursor_mass.to(probs.dtype).unsqueeze(1) - b  # (B, L-1) y = M - b (neutral)
    proton = masses.PROTON
    ions = torch.cat(
        [b + proton, y + proton, (b + 2 * proton) / 2, (y + 2 * proton) / 2], 1
    )
    weight = exists.repeat(1, 4)  # (B, 4(L-1))
    distance = mz.unsqueeze(2) - ions.unsqueeze(1)  # (B, P, 4(L-1))
    match = torch.exp(-0.5 * (distance / sigma_da) ** 2) * weight.unsqueeze(1)
    explained = match.max(dim=2).values  # (B, P)
    share = intensity / intensity.sum(dim=1, keepdim=True).clamp_min(1e-8)  # (B, P)
    return 1 - (share * explained).sum(dim=1).mean()


def counted_positions(tokens: Tensor) -> Tensor:
    """(B, L) True at a peptide's tokens and its first STOP (the end), not after."""
    counted = torch.ones_like(tokens, dtype=torch.bool)
    counted[:, 1:] = tokens[:, :-1] != masses.STOP_INDEX
    return counted


def residue_loss(logits: Tensor, tokens: Tensor, padding_weight: float) -> Tensor:
    """Cross-entropy per counted position; padding after the end weighs less.

    The decoder reads STOP at every position past a peptide, so padding is
    still trained, at `padding_weight`; the mean is over the weights, so a
    peptide's residues are not diluted by the STOP run after them.
    """
    per_position = F.cross_entropy(
        logits.transpose(1, 2), tokens, reduction="none"
    )  # (B, L)
    weight = counted_positions(tokens).to(per_position.dtype)
    weight = weight + padding_weight * (1 - weight)  # (B, L)
    return (per_position * weight).sum() / weight.sum()


def annotation_targets(mz: Tensor, tokens: Tensor, tol_da: float) -> Tensor:
    """(B, P, A) 1 where a peak lies within `tol_da` of an ion of its label.

    The ions are `model.ANNOTATED_IONS` of every cleavage between two residues
    of the label (not the one after an N-terminal modification alone), with the
    y side from the label's own mass, so a precursor's isotope error does not
    move them.
    """
    vocab_masses = torch.as_tensor(
        masses.VOCAB_MASSES, dtype=torch.float64, device=mz.device
    )
    prefix = torch.cumsum(vocab_masses[tokens], dim=1)  # (B, L) STOP weighs 0
    peptide = prefix[:, -1:] + masses.H2O  # (B, 1) the label's neutral mass
    residue = tokens != masses.STOP_INDEX
    cleaves = residue[:, :-1] & residue[:, 1:]  # (B, L-1) after position i
    n_terminal = torch.as_tensor(masses.N_TERMINAL_INDICES, device=tokens.device)
    cleaves[:, 0] &= ~torch.isin(tokens[:, 0], n_terminal)
    b = prefix[:, :-1]  # (B, L-1) b fragment's residue sum
    found = []
    for ion in ANNOTATED_IONS:
        ion_mz = masses.fragment_ion_mz(ion, b, peptide)  # (B, L-1)
        ion_mz = torch.where(cleaves, ion_mz, torch.full_like(ion_mz, math.inf))
        distance = (mz.double().unsqueeze(2) - ion_mz.unsqueeze(1)).abs()
        found.append(distance.min(dim=2).values <= tol_da)  # (B, P)
    return torch.stack(found, dim=-1).float()  # (B, P, A)


def annotation_loss(logits: Tensor, targets: Tensor, intensity: Tensor) -> Tensor:
    """Binary cross-entropy of the ion-type logits (B, P, A) over the real peaks."""
    per_peak = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    real = (intensity > 0).unsqueeze(-1).to(per_peak.dtype)  # (B, P, 1)
    return (per_peak * real).sum() / (real.sum() * logits.shape[-1]).clamp_min(1)


def annotated_batch_loss(
    model: PepTRM, batch: dict[str, Tensor], tol_da: float
) -> tuple[Tensor, Tensor, Tensor]:
    """A labelled batch through the peak annotator: loss, logits (B, P, A), targets.

    The targets are `annotation_targets` at `tol_da`; the loss `annotation_loss`.
    """
    targets = annotation_targets(batch["mz"], batch["tokens"], tol_da)
    logits = model.annotator(*(batch[key] for key in ANNOTATOR_INPUTS))
    return annotation_loss(logits, targets, batch["intensity"]), logits, targets


def frozen_core(cfg: Config) -> bool:
    """Whether a run trains only some weights, and so exports them as trained.

    An EMA would move the weights left as loaded by round-off; the learning
    rate's cosine decay smooths the ones trained instead.
    """
    return cfg.training.annotator_only or bool(cfg.training.trainable)


def ema_warmup_avg_fn(decay: float, warm_up: bool = True):
    """EMA update whose decay warms up: min(decay, (1 + n) / (10 + n)) at update n.

    With a fixed 0.999 the average still holds ~37 % of the random init after
    1,000 updates, which is most of a CPU run. `warm_up` False: the fixed decay
    (the ablation of this fix).
    """

    def update(averaged: Tensor, current: Tensor, n_averaged: Tensor) -> Tensor:
        n = float(n_averaged)
        rate = min(decay, (1 + n) / (10 + n)) if warm_up else decay
        return rate * averaged + (1 - rate) * current

    return update


def refinement_metrics(logits: Tensor, previous: Tensor | None, tokens: Tensor) -> dict:
    """Token accuracy, peptide accuracy and edit rate of one draft.

    Token accuracy counts the peptide's positions plus its first STOP (the end),
    not the padding after it.
    """
    predicted = logits.argmax(dim=-1)  # (B, L)
    counted = counted_positions(tokens)
    correct = (predicted == tokens) & counted
    out = {
        "token_accuracy": correct.sum() / counted.sum(),
        "peptide_accuracy": (correct | ~counted).all(dim=1).float().mean(),
    }
    if previous is not None:
        out["edit_rate"] = (
            (predicted != previous.argmax(dim=-1)) & counted
        ).sum() / counted.sum()
    return out


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def peptide_key(peptide: str) -> str:
    """Peptide identity for splits: residue letters with I = L."""
    return masses.strip_modifications(peptide).replace("I", "L")


def load_labelled(paths: Sequence[str | Path], cfg: Config) -> list[Spectrum]:
    """Read, label-check and preprocess labelled spectra; log what was left out."""
    prepare = preprocess.pipeline(cfg.preprocess)
    kept: list[Spectrum] = []
    problems: dict[str, int] = {}
    examples: list[str] = []
    for path in paths:
        for record in read_spectra(path):
            reason = None
            if isinstance(record, Skipped):
                reason = record.reason
            elif record.peptide is None or record.label_problem:
                reason = record.label_problem or f"{record.ref}: no SEQ"
            elif len(masses.parse(record.peptide)) > cfg.model.max_length:
                reason = f"{record.ref}: longer than max_length={cfg.model.max_length}"
            else:
                record = prepare(record)
                if isinstance(record, Skipped):
                    reason = record.reason
            if reason is None:
                kept.append(record)
                continue
            kind = re.sub(r"'[^']*'", "'...'", reason.split(": ", 1)[-1])
            kind = kind.split(" (")[0][:60]  # SEQ '...' has unknown residue '...'
            problems[kind] = problems.get(kind, 0) + 1
            if len(examples) < 3:
                examples.append(reason)
    if problems:
        log.info("left out of training: %s; e.g. %s", problems, examples)
    return kept


def split_by_peptide(
    spectra: Sequence[Spectrum], val_fraction: float, seed: int
) -> tuple[list[Spectrum], list[Spectrum]]:
    """Split spectra so that no peptide (I = L) is on both sides."""
    keys = sorted({peptide_key(s.peptide) for s in spectra})
    rng = np.random.default_rng(seed)
    n_val = int(round(len(keys) * val_fraction))
    val_keys = set(rng.permutation(keys)[:n_val].tolist())
    train = [s for s in spectra if peptide_key(s.peptide) not in val_keys]
    val = [s for s in spectra if peptide_key(s.peptide) in val_keys]
    return train, val


def fold_of(peptide: str, folds: int) -> int:
    """The cross-fitting fold (0..folds-1) of a peptide: a stable hash of its key.

    It depends on the peptide alone (I = L, modifications stripped), so every
    spectrum of a peptide falls in one fold, whichever files are read with it.
    """
    return zlib.crc32(peptide_key(peptide).encode()) % folds


def held_out_split(paths: Sequence[str | Path], cfg: Config) -> list[Spectrum]:
    """The peptide-disjoint validation split that training holds out of `paths`.

    The same files, `training.val_fraction` and seed give the same split, so
    decoder settings and calibration can be chosen on it rather than on dev.
    """
    _, val = split_by_peptide(
        load_labelled(paths, cfg), cfg.training.val_fraction, cfg.training.seed
    )
    return val


def training_part(paths: Sequence[str | Path], cfg: Config) -> list[Spectrum]:
    """The labelled spectra of `paths` that training learns from (not held out).

    Learned scorers (cleavage log-odds, reranker) are fitted on these, so the
    held-out split stays free to choose settings on.
    """
    train, _ = split_by_peptide(
        load_labelled(paths, cfg), cfg.training.val_fraction, cfg.training.seed
    )
    return train


def batch_words(t: TrainingConfig, batch_index: int) -> list[int]:
    """The seed words of batch `batch_index`: (seed, b), or (seed, b, stream).

    Stream 0 keeps the words every run before `training.stream` used, so their
    batches are unchanged; another stream's last word is never 0, so no batch of
    it is a batch of stream 0.
    """
    words = [t.seed, batch_index]
    return words + [t.stream] if t.stream else words


class TrainingStream(IterableDataset):
    """Endless batches mixing simulated and real spectra; batch b is f(seed, b, stream).

    Worker w of W makes batches start+w, start+w+W, ...; the DataLoader takes
    them round-robin, so the order is the same for any number of workers.
    """

    def __init__(
        self,
        cfg: Config,
        peptides: Sequence[str],
        real: Sequence[Spectrum],
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size  # DDP: this process's share
        self.peptides = list(peptides)
        self.real = list(real)
        self.start_batch = start_batch
        self.prepare = preprocess.pipeline(cfg.preprocess)
        # Peptides by length, so the curriculum can take the short ones first.
        self.by_length = sorted(self.peptides, key=lambda p: (len(p), p))
        self.lengths = np.array([len(p) for p in self.by_length])

    def longest(self, difficulty: float) -> int:
        """Longest simulated peptide allowed at a difficulty (length curriculum)."""
        start = self.cfg.training.curriculum_start_length
        end = self.cfg.simulation.max_length
        return int(round(start + (end - start) * difficulty))

    def augment(self, spectrum: Spectrum, rng: np.random.Generator) -> Spectrum:
        """A freshly perturbed copy of a real spectrum (`simulate.augment`)."""
        t = self.cfg.training
        return simulate.augment(
            spectrum,
            rng,
            t.augment_dropout,
            t.augment_noise_peaks,
            t.augment_intensity_sd,
            t.augment_shift_ppm,
        )

    def schedule(self, batch_index: int) -> tuple[float, float]:
        """Real-spectrum share and simulation difficulty at a batch."""
        t = self.cfg.training
        step = batch_index * steps_per_batch(self.cfg)
        progress = min(1.0, step / max(t.max_steps, 1))
        real = (
            t.real_fraction_start
            + (t.real_fraction_end - t.real_fraction_start) * progress
        )
        difficulty = min(1.0, step / max(t.synthetic_difficulty_steps, 1))
        return (real if self.real else 0.0), difficulty

    def make_batch(
        self, batch_index: int, position: int | None = None
    ) -> dict[str, Tensor]:
        """Build batch `batch_index` from its own seeded generator.

        `position` (default: `batch_index`) is how many batches this rank has
        taken, which sets the curricula: every rank is at the same point of them.
        """
        log.debug("making batch %d", batch_index)
        rng = np.random.default_rng(batch_words(self.cfg.training, batch_index))
        size = self.cfg.training.batch_size
        real_share, difficulty = self.schedule(
            batch_index if position is None else position
        )
        n_real = int(rng.binomial(size, real_share)) if self.peptides else size
        spectra = [
            self.augment(self.real[i], rng)
            for i in rng.integers(0, len(self.real), n_real)
        ]
        allowed = self.by_length
        if self.peptides:
            n_allowed = int(
                np.searchsorted(self.lengths, self.longest(difficulty), "right")
            )
            allowed = self.by_length[: max(n_allowed, 1)]
        while len(spectra) < size:
            simulated = simulate.simulate_batch(
                allowed, size - len(spectra), rng, self.cfg.simulation, difficulty
            )
            for spectrum in simulated:
                spectrum = self.prepare(spectrum)
                if not isinstance(spectrum, Skipped):
                    spectra.append(spectrum)
        batch = preprocess.collate(
            spectra, self.cfg.preprocess.n_peaks, self.cfg.model.max_length
        )
        if self.cfg.training.chance_annotators:  # each real spectrum's fold
            folds = self.cfg.training.folds
            fold = [fold_of(s.peptide, folds) for s in spectra[:n_real]]
            fold += [-1] * (len(spectra) - n_real)  # simulated
            batch["fold"] = torch.tensor(fold, dtype=torch.int64)  # (B,)
        return self.add_drafts(batch, rng)

    def add_drafts(
        self, batch: dict[str, Tensor], rng: np.random.Generator
    ) -> dict[str, Tensor]:
        """Give shares of the batch a draft of their own peptide to start from.

        A `draft_fraction` gets a wrong draft (`simulate.draft_errors` of the
        label); an `infill_fraction` gets its label with a stretch left blank
        (`simulate.infill_mask`). Adds ``draft`` (B, L) token indices,
        ``drafted`` (B,) True for the wrong drafts, and ``given`` (B, L) True
        at the positions whose draft token the recursion starts from.
        """
        t = self.cfg.training
        if t.draft_fraction <= 0 and t.infill_fraction <= 0:
            return batch
        tokens = batch["tokens"].numpy()
        share = rng.random(len(tokens))
        drafted = share < t.draft_fraction
        drafts = [
            simulate.draft_errors(row, rng, t.draft_mean_errors) if use else row
            for row, use in zip(tokens, drafted, strict=True)
        ]
        given = np.repeat(drafted[:, None], tokens.shape[1], axis=1)
        infilled = ~drafted & (share < t.draft_fraction + t.infill_fraction)
        for row in np.flatnonzero(infilled):
            given[row] = simulate.infill_mask(tokens[row], rng)
        batch["draft"] = torch.from_numpy(np.stack(drafts))  # (B, L)
        batch["drafted"] = torch.from_numpy(drafted)  # (B,)
        batch["given"] = torch.from_numpy(given)  # (B, L)
        return batch

    def global_index(self, position: int, n_workers: int) -> int:
        """The stream batch that this rank takes at its `position`-th batch.

        Runs of `n_workers` consecutive batches go to the ranks in turn, so every
        rank builds its own batches (none twice), each a function of the seed and
        the rank's position alone: a resumed run takes up exactly where it was.
        One rank takes every batch in order.
        """
        run, within = divmod(position, n_workers)
        return (run * self.world_size + self.rank) * n_workers + within

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        position = self.start_batch + worker
        while True:
            yield self.make_batch(self.global_index(position, n_workers), position)
            position += n_workers


def fixed_batches(spectra: Sequence[Spectrum], cfg: Config) -> list[dict[str, Tensor]]:
    """Collate a fixed list of spectra into validation batches."""
    size = cfg.training.batch_size
    return [
        preprocess.collate(
            spectra[i : i + size], cfg.preprocess.n_peaks, cfg.model.max_length
        )
        for i in range(0, len(spectra), size)
    ]


class DataModule(L.LightningDataModule):
    """Simulated + real training batches; real and simulated validation sets."""

    def __init__(
        self,
        cfg: Config,
        train_paths: Sequence[str | Path],
        fasta_paths: Sequence[str | Path],
        val_paths: Sequence[str | Path] = (),
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_paths = list(train_paths)
        self.fasta_paths = list(fasta_paths)
        self.val_paths = list(val_paths)
        self.start_batch = 0
        self.peptides: list[str] = []
        self.real: list[Spectrum] = []
        self.val_sets: dict[str, list[Spectrum]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Digest FASTAs, read and split labelled spectra, simulate a validation set."""
        if self.peptides or self.real:
            return
        cfg = self.cfg
        if self.fasta_paths:
            self.peptides = simulate.digest_fasta(self.fasta_paths, cfg.simulation)
            log.info(
                "%d peptides digested from %d FASTA files",
                len(self.peptides),
                len(self.fasta_paths),
            )
        labelled = load_labelled(self.train_paths, cfg) if self.train_paths else []
        if self.val_paths:
            self.real, val_real = labelled, load_labelled(self.val_paths, cfg)
        else:
            self.real, val_real = split_by_peptide(
                labelled, cfg.training.val_fraction, cfg.training.seed
            )
        left_out = cfg.training.left_out_fold
        if left_out >= 0:
            folds = cfg.training.folds
            self.real = [s for s in self.real if fold_of(s.peptide, folds) != left_out]
            log.info("leaving out fold %d of %d of the real spectra", left_out, folds)
        if not self.peptides and not self.real:
            raise ValueError(
                "nothing to train on: give labelled spectra and/or --fasta"
            )
        log.info("real spectra: %d train, %d validation", len(self.real), len(val_real))
        if val_real:
            self.val_sets["real"] = val_real
        if self.peptides:
            rng = np.random.default_rng([cfg.training.seed, VALIDATION_STREAM])
            prepare = preprocess.pipeline(cfg.preprocess)
            simulated = simulate.simulate_batch(
                self.peptides, 256, rng, cfg.simulation, 1.0
            )
            self.val_sets["synthetic"] = [
                s for s in map(prepare, simulated) if not isinstance(s, Skipped)
            ]

    def train_dataloader(self) -> DataLoader:
        """Endless training stream starting where a resumed run left off."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        stream = TrainingStream(
            self.cfg, self.peptides, self.real, self.start_batch, rank, world
        )
        workers = self.cfg.training.num_workers
        return DataLoader(
            stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader of fixed, pre-collated batches per validation set (real first)."""
        return [
            DataLoader(fixed_batches(spectra, self.cfg), batch_size=None)
            for spectra in self.val_sets.values()
        ]


# --------------------------------------------------------------------------
# The LightningModule
# --------------------------------------------------------------------------
class PepTRMModule(L.LightningModule):
    """PepTRM with deep supervision, physics losses and an EMA of its weights."""

    def __init__(
        self, cfg: Config, val_names: Sequence[str] = ("real", "synthetic")
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB))
        self.ema = AveragedModel(
            self.model,
            avg_fn=ema_warmup_avg_fn(
                cfg.training.ema_decay, warm_up=cfg.training.ema_warmup
            ),
            use_buffers=True,
        )
        # The EMA copy is updated by hand, never by gradients: left trainable, DDP
        # counted it as parameters "not used in producing the loss".
        self.ema.requires_grad_(False)
        if cfg.training.annotator_only:
            if not cfg.model.peak_annotator:
                raise ValueError(
                    "training.annotator_only needs model.peak_annotator: true"
                )
            self.model.requires_grad_(False)  # the network stays as loaded
            self.model.annotator.requires_grad_(True)
        if cfg.training.trainable:
            prefixes = tuple(cfg.training.trainable)
            self.model.requires_grad_(False)  # the rest stays as loaded
            chosen = [
                p for n, p in self.model.named_parameters() if n.startswith(prefixes)
            ]
            if not chosen:
                raise ValueError(
                    f"training.trainable {list(prefixes)} names no weight of the model"
                )
            for parameter in chosen:
                parameter.requires_grad_(True)
        # Runs that left a fold out: their annotators read the real spectra of
        # that fold (kept out of the state dict: they are read, never trained).
        self.fold_annotators = (
            [
                a.requires_grad_(False)
                for a in load_annotators(cfg.training.chance_annotators)
            ]
            if cfg.training.chance_annotators
            else []
        )
        if self.fold_annotators and not cfg.model.chance_evidence:
            raise ValueError("training.chance_annotators needs model.chance_evidence")
        self.automatic_optimization = False  # one optimiser step per supervision step
        self.weights = supervision_weights(
            cfg.recursion.n_supervision, cfg.training.supervision_decay
        )
        self.val_names = list(val_names)
        self.batches_seen = 0
        self.started = time.monotonic()  # less the wall-clock of earlier runs
        self.export_dir: Path | None = None  # where each validation exports EMA weights

    def sigma(self) -> float:
        """Spectrum-loss peak width now: geometric from sigma_start to sigma_end."""
        t = self.cfg.training
        progress = min(1.0, self.global_step / max(t.max_steps, 1))
        return t.sigma_start_da * (t.sigma_end_da / t.sigma_start_da) ** progress

    def step_loss(
        self, y: Tensor, halt: Tensor, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Every loss of one supervision step (before its step weight)."""
        t = self.cfg.training
        tokens = batch["tokens"]
        residue = residue_loss(y, tokens, t.padding_loss_weight)
        correct = (y.argmax(dim=-1) == tokens).all(dim=1).float()
        halting = F.binary_cross_entropy_with_logits(halt, correct)
        losses = {"residue": residue, "halt": halting}
        total = residue + t.halt_loss_weight * halting
        probs = y.float().softmax(dim=-1)
        if t.mass_loss_weight > 0:
            losses["mass"] = mass_loss(probs, batch["precursor_mass"])
            total = total + t.mass_loss_weight * losses["mass"]
        if t.spectrum_loss_weight > 0:
            losses["spectrum"] = spectrum_loss(
                probs,
                batch["precursor_mass"],
                batch["mz"],
                batch["intensity"],
                self.sigma(),
            )
            total = total + t.spectrum_loss_weight * losses["spectrum"]
        losses["total"] = total
        return losses

    @property
    def exported(self) -> PepTRM:
        """The weights validated and exported: the EMA's, or the live model's.

        The live model's when only some weights train (`frozen_core`).
        """
        return self.model if frozen_core(self.cfg) else self.ema.module

    def peak_chances(self, batch: dict[str, Tensor]) -> Tensor:
        """The chances (B, P, A) training reads: fold k's annotator on fold k.

        Real spectra of fold k (``batch["fold"]``) get the annotator of the run
        that never learned from them; simulated ones (-1) the model's own.
        """
        chances = self.model.annotate_batch(batch)
        for k, annotator in enumerate(self.fold_annotators):
            rows = batch["fold"] == k
            if rows.any():
                annotator.to(chances.device).eval()
                sub = {key: batch[key][rows] for key in ANNOTATOR_INPUTS}
                chances[rows] = peak_chances(annotator, sub)
        return chances

    def annotation_step_loss(
        self, model: PepTRM, batch: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The peak annotator's loss on a batch (`annotation_loss`), logits, targets."""
        return annotated_batch_loss(model, batch, self.cfg.training.annotation_tol_da)

    def training_step(self, batch: dict[str, Tensor], batch_index: int) -> None:
        """Deep supervision: N_sup improvement steps, each with its own loss, update."""
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        model = self.model
        if self.cfg.training.annotator_only:
            loss, _, _ = self.annotation_step_loss(model, batch)
            self.update(optimizer, scheduler, loss)
            self.log_batch({"annotation": loss}, loss, scheduler)
            return
        y = z = previous = None
        if self.cfg.model.chance_evidence:  # read once, by the annotators chosen
            batch["ion_chances"] = self.peak_chances(batch)
        for k in range(self.cfg.recursion.n_supervision):
            spectrum = model.encode_batch(batch)
            if y is None:
                y, z = model.initial_state(spectrum)
                if "draft" in batch:  # some spectra start from a draft to repair
                    y = model.draft_logits(batch["draft"], batch["given"])
            y, z, halt = model(spectrum, y, z, supervision_step=k)
            losses = self.step_loss(y, halt, batch)
            self.update(optimizer, scheduler, self.weights[k] * losses["total"])
            self.ema.update_parameters(model)
            y, z = y.detach(), z.detach()  # the next step starts from this draft
            if k == self.cfg.recursion.n_supervision - 1 or k == 0:
                with torch.no_grad():
                    metrics = refinement_metrics(y, previous, batch["tokens"])
                tag = "last" if k else "first"
                self.log(
                    f"train/token_accuracy_{tag}",
                    metrics["token_accuracy"],
                    prog_bar=tag == "last",
                )
            previous = y
        self.log_batch(losses, losses["total"], scheduler)
        self.log("train/sigma_da", self.sigma())

    def update(self, optimizer, scheduler, loss: Tensor) -> None:
        """One optimiser step on `loss`: backward, clip the gradient norm, schedule."""
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.clip_gradients(
            optimizer,
            gradient_clip_val=self.cfg.training.grad_clip,
            gradient_clip_algorithm="norm",
        )
        optimizer.step()
        scheduler.step()

    def log_batch(self, losses: dict[str, Tensor], loss: Tensor, scheduler) -> None:
        """Log a finished batch: data position, losses, wall-clock, learning rate."""
        self.log("train/batch", float(self.batches_seen))  # exact on resume
        self.batches_seen += 1
        self.log_dict(
            {f"train/{name}": value for name, value in losses.items()}, prog_bar=False
        )
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/wall_s", time.monotonic() - self.started)
        self.log("train/lr", scheduler.get_last_lr()[0])

    @torch.no_grad()
    def validation_step(
        self, batch: dict[str, Tensor], batch_index: int, dataloader_idx: int = 0
    ) -> None:
        """Refinement tracker with EMA weights: accuracy, edits and gain per step."""
        name = (
            self.val_names[dataloader_idx]
            if dataloader_idx < len(self.val_names)
            else str(dataloader_idx)
        )
        model = self.exported
        if self.cfg.training.annotator_only:
            self.annotation_metrics(name, model, batch)
            return
        spectrum = model.encode_batch(batch)
        y, z = model.initial_state(spectrum)
        previous_accuracy = None
        previous = None
        for k in range(self.cfg.recursion.n_supervision):
            y, z, halt = model(spectrum, y, z, supervision_step=k)
            metrics = refinement_metrics(y, previous, batch["tokens"])
            step = k + 1
            self.log(
                f"val_{name}/token_accuracy_t{step}",
                metrics["token_accuracy"],
                add_dataloader_idx=False,
            )
            if "edit_rate" in metrics:
                self.log(
                    f"val_{name}/edit_rate_t{step}",
                    metrics["edit_rate"],
                    add_dataloader_idx=False,
                )
                self.log(
                    f"val_{name}/improvement_t{step}",
                    metrics["token_accuracy"] - previous_accuracy,
                    add_dataloader_idx=False,
                )
            previous_accuracy = metrics["token_accuracy"]
            previous = y
        self.log(
            f"val_{name}/token_accuracy",
            metrics["token_accuracy"],
            add_dataloader_idx=False,
            prog_bar=True,
        )
        self.log(
            f"val_{name}/peptide_accuracy",
            metrics["peptide_accuracy"],
            add_dataloader_idx=False,
        )
        self.log(
            f"val_{name}/wall_s",
            time.monotonic() - self.started,
            add_dataloader_idx=False,
        )

    def annotation_metrics(
        self, name: str, model: PepTRM, batch: dict[str, Tensor]
    ) -> None:
        """The annotator's loss, precision and recall (at a chance of 0.5) per ion."""
        loss, logits, targets = self.annotation_step_loss(model, batch)
        real = (batch["intensity"] > 0).unsqueeze(-1)
        called, truth = (logits > 0) & real, (targets > 0) & real
        values = {f"val_{name}/annotation": loss}
        for a, ion in enumerate(ANNOTATED_IONS):
            said, true = called[..., a], truth[..., a]
            hit = (said & true).sum()
            values[f"val_{name}/precision_{ion[0]}"] = hit / said.sum().clamp_min(1)
            values[f"val_{name}/recall_{ion[0]}"] = hit / true.sum().clamp_min(1)
        values[f"val_{name}/wall_s"] = time.monotonic() - self.started
        self.log_dict(values, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        """Export the weights after every validation, so a cut run leaves a model."""
        if self.export_dir is not None and self.trainer.is_global_zero:
            save_model(self.exported, self.cfg, self.export_dir)

    def configure_optimizers(self):
        """AdamW with linear warm-up then cosine decay, stepped per optimiser step."""
        t = self.cfg.training
        trained = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trained, lr=t.learning_rate, weight_decay=t.weight_decay
        )

        def factor(step: int) -> float:
            if step < t.warmup_steps:
                return (step + 1) / t.warmup_steps
            progress = min(
                1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
            )
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the full config and the data position with the weights."""
        checkpoint["peptrm_config"] = config_to_dict(self.cfg)
        checkpoint["batches_seen"] = self.batches_seen
        checkpoint["wall_s"] = time.monotonic() - self.started

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the data position and the training wall-clock so far.

        A resumed run then sees the batches it would have, and `wall_s` goes on.
        """
        self.batches_seen = checkpoint.get("batches_seen", 0)
        self.started = time.monotonic() - checkpoint.get("wall_s", 0.0)


def export_checkpoint(path: str | Path, folder: str | Path) -> Path:
    """Save a training checkpoint's EMA weights as a model folder (as training does).

    Lets a run's checkpoints be compared by decoded recall after the fact, and
    the best one shipped.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    cfg = load_config(overrides=checkpoint["peptrm_config"])
    model = PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB))
    prefix = "model." if frozen_core(cfg) else "ema.module."
    state = {
        k[len(prefix) :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(prefix)
    }
    model.load_state_dict(state)
    return save_model(model, cfg, folder)


class BatchProgressBar(L.pytorch.callbacks.TQDMProgressBar):
    """Lightning's bar, counting batches against the batches the run will make.

    Lightning sizes an endless stream's bar by max_steps, but each batch takes
    N_sup optimiser steps, so the bar stopped at 1/N_sup of its total with an
    ETA N_sup times too long.
    """

    def __init__(self, n_supervision: int) -> None:
        super().__init__()
        self.n_supervision = n_supervision

    @property
    def total_train_batches(self) -> int | float:
        """Batches until max_steps optimiser steps."""
        steps = self.trainer.max_steps
        return math.ceil(steps / self.n_supervision) if steps > 0 else math.inf


def config_from_checkpoint(path: str | Path) -> Config:
    """The config stored inside a training checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return load_config(overrides=checkpoint["peptrm_config"])


def train(
    cfg: Config,
    train_paths: Sequence[str | Path],
    fasta_paths: Sequence[str | Path],
    out_dir: str | Path,
    val_paths: Sequence[str | Path] = (),
    resume: str | Path | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress: bool = True,
    max_time: str | None = None,
    stop_at_step: int | None = None,
    init_from: str | Path | None = None,
) -> Path:
    """Train (or resume) a PepTRM model; export the EMA weights into `out_dir`/model.

    `init_from` (a saved model folder of the same architecture) starts a new
    run from its weights, with fresh schedules: fine-tuning with a new recipe.
    Returns the folder holding `model.safetensors` and `model.yaml`.
    """
    out_dir = Path(out_dir)
    L.seed_everything(cfg.training.seed, workers=True)
    datamodule = DataModule(cfg, train_paths, fasta_paths, val_paths)
    datamodule.setup()
    module = PepTRMModule(cfg, val_names=list(datamodule.val_sets))
    if init_from is not None and not resume:
        state = load_file(Path(init_from) / WEIGHTS_NAME)
        # Parts the recipe adds (e.g. model.evidence_logits) start fresh.
        missing, unexpected = module.model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(
                f"{init_from}: weights the model settings do not have: {unexpected}"
            )
        module.ema.module.load_state_dict(state, strict=False)
        log.info(
            "starting from the weights of %s (new: %s)", init_from, missing or "none"
        )
    log.info(
        "model: %d parameters (%.1f MB fp32)",
        count_parameters(module.model),
        count_parameters(module.model) * 4 / 1e6,
    )
    if (
        resume
    ):  # the stream must start at the next unseen batch, before Lightning prefetches
        checkpoint = torch.load(resume, map_location="cpu", weights_only=False)
        datamodule.start_batch = checkpoint.get("batches_seen", 0)
    module.export_dir = out_dir / "model"
    if cfg.training.compile:
        module.model = torch.compile(module.model)
    # global_step grows by N_sup per batch, so an interval that is not a multiple
    # of N_sup would only fire at the least common multiple: round it to one.
    n_sup = steps_per_batch(cfg)
    every = max(1, round(cfg.training.checkpoint_every_steps / n_sup)) * n_sup
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        every_n_train_steps=every,
        save_last=True,
        save_top_k=-1,
    )
    batches_per_val = max(1, cfg.training.val_every_steps // n_sup)
    trainer = L.Trainer(
        default_root_dir=out_dir,
        max_steps=stop_at_step or cfg.training.max_steps,  # schedules use the config's
        max_time=max_time,
        accelerator=accelerator,
        devices=devices,
        precision=cfg.training.precision,
        val_check_interval=batches_per_val,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        callbacks=[checkpoints, BatchProgressBar(n_sup)] if progress else [checkpoints],
        logger=L.pytorch.loggers.CSVLogger(out_dir, name="logs"),
        log_every_n_steps=max(1, min(50, batches_per_val)),
        enable_progress_bar=progress,
        deterministic=False,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    trainer.save_checkpoint(
        out_dir / "checkpoints" / "end.ckpt"
    )  # resume point, any stop
    folder = out_dir / "model"
    if trainer.is_global_zero:  # one writer under DDP
        save_model(module.exported, cfg, folder)
        log.info(
            "exported %s weights to %s",
            "the" if frozen_core(cfg) else "EMA",
            folder,
        )
    return folder
