import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from peptrm import masses, preprocess
from peptrm.config import load_config
from peptrm.io import Spectrum, read_spectra
from peptrm.train import (
    DataModule,
    PepTRMModule,
    TrainingStream,
    annotation_targets,
    fold_of,
    held_out_split,
    mass_loss,
    refinement_metrics,
    spectrum_loss,
    split_by_peptide,
    supervision_weights,
    train,
    training_part,
)

DATA = Path(__file__).parent / "data"
TINY = {
    "model": {"dim": 32, "n_heads": 4, "n_encoder_layers": 1, "n_core_layers": 1},
    "recursion": {"n_latent_steps": 1, "n_cycles": 2, "n_supervision": 2},
    "training": {
        "batch_size": 8,
        "max_steps": 8,
        "warmup_steps": 2,
        "val_every_steps": 2,
        "checkpoint_every_steps": 4,
        "num_workers": 0,
    },
    "preprocess": {"n_peaks": 50},
}


def _real_batch(cfg, path=DATA / "overfit64.mgf"):
    prepare = preprocess.pipeline(cfg.preprocess)
    spectra = [prepare(s) for s in read_spectra(path) if isinstance(s, Spectrum)]
    return preprocess.collate(spectra, cfg.preprocess.n_peaks, cfg.model.max_length)


def _deep_supervision_step(module, optimizer, batch):
    """The training step's loop without Lightning (same losses, one update a step)."""
    y = z = None
    for k in range(module.cfg.recursion.n_supervision):
        spectrum = module.model.encode_batch(batch)
        if y is None:
            y, z = module.model.initial_state(spectrum)
        y, z, halt = module.model(spectrum, y, z, supervision_step=k)
        loss = module.step_loss(y, halt, batch)["total"]
        optimizer.zero_grad()
        (module.weights[k] * loss).backward()
        optimizer.step()
        y, z = y.detach(), z.detach()
    return y, loss.item()


def test_supervision_weights_let_the_last_step_dominate():
    assert supervision_weights(3, 0.5) == [0.25, 0.5, 1.0]


def test_mass_loss_is_zero_for_the_right_peptide_and_one_residue_per_missing_residue():
    tokens = torch.as_tensor(masses.encode("PEPTLDEK", 12))
    probs = torch.nn.functional.one_hot(tokens, len(masses.VOCAB)).double().unsqueeze(0)
    right = torch.tensor([masses.peptide_mass("PEPTLDEK")], dtype=torch.float64)
    assert mass_loss(probs, right).item() == pytest.approx(0.0, abs=1e-9)
    heavier = right + 3 * masses.MEAN_RESIDUE_MASS  # smooth-L1 of 3 residues = 2.5
    assert mass_loss(probs, heavier).item() == pytest.approx(2.5, abs=1e-6)


def test_spectrum_loss_rewards_the_true_ladder():
    peptide = "PEPTLDEK"
    b, y = masses.fragment_mz(peptide)
    mz = torch.as_tensor(
        np.sort(np.concatenate([b, y])), dtype=torch.float64
    ).unsqueeze(0)
    intensity = torch.ones_like(mz)
    precursor = torch.tensor([masses.peptide_mass(peptide)], dtype=torch.float64)

    def loss(text):
        tokens = torch.as_tensor(masses.encode(text, 12))
        probs = torch.nn.functional.one_hot(tokens, len(masses.VOCAB)).double()
        return spectrum_loss(probs.unsqueeze(0), precursor, mz, intensity, 0.05).item()

    assert loss(peptide) == pytest.approx(0.0, abs=1e-6)  # every peak explained
    assert loss("PEPTLDKE") > 0.1  # a swap leaves the y1/y2 and b6/b7 peaks unexplained


def test_refinement_metrics_count_the_end_but_not_the_padding():
    tokens = torch.as_tensor(masses.encode("PEK", 6)).unsqueeze(0)
    logits = torch.nn.functional.one_hot(tokens, len(masses.VOCAB)).float() * 10
    logits[0, 5] = 0  # a padding position wrong: not counted
    logits[0, 5, 1] = 10
    metrics = refinement_metrics(logits, None, tokens)
    assert (
        metrics["token_accuracy"].item() == 1.0 and metrics["peptide_accuracy"] == 1.0
    )
    logits[0, 3] = 0  # the end (first STOP) wrong: counted
    logits[0, 3, 1] = 10
    assert refinement_metrics(logits, logits, tokens)["token_accuracy"].item() == 0.75


def test_one_gradient_step_reduces_the_loss():
    cfg = load_config(overrides=TINY)
    torch.manual_seed(0)
    module = PepTRMModule(cfg)
    batch = _real_batch(cfg)
    optimizer = torch.optim.Adam(module.model.parameters(), lr=1e-3)
    _, before = _deep_supervision_step(module, optimizer, batch)
    _, after = _deep_supervision_step(module, optimizer, batch)
    assert after < before


def test_overfits_64_real_spectra():
    """A tiny model memorises a batch of 64 real spectra: > 95 % token accuracy."""
    cfg = load_config(
        overrides={
            **TINY,
            "model": {
                "dim": 64,
                "n_heads": 4,
                "n_encoder_layers": 1,
                "n_core_layers": 2,
            },
            "training": {"mass_loss_weight": 0.0, "spectrum_loss_weight": 0.0},
        }
    )
    torch.manual_seed(0)
    module = PepTRMModule(cfg)
    batch = _real_batch(cfg)
    assert batch["tokens"].shape[0] == 64
    optimizer = torch.optim.Adam(module.model.parameters(), lr=3e-3)
    accuracy = 0.0
    for _ in range(400):
        y, _ = _deep_supervision_step(module, optimizer, batch)
        accuracy = refinement_metrics(y, None, batch["tokens"])["token_accuracy"].item()
        if accuracy > 0.95:
            break
    assert accuracy > 0.95


def test_split_by_peptide_is_disjoint():
    spectra = [
        s for s in read_spectra(DATA / "overfit64.mgf") if isinstance(s, Spectrum)
    ]
    spectra += spectra[:10]  # repeated peptides must stay on one side
    train_set, val_set = split_by_peptide(spectra, 0.25, seed=1)
    key = lambda s: masses.strip_modifications(s.peptide).replace("I", "L")  # noqa: E731
    assert not {key(s) for s in train_set} & {key(s) for s in val_set}
    assert len(train_set) + len(val_set) == len(spectra) and val_set


def test_stream_batches_depend_only_on_seed_and_index():
    cfg = load_config(overrides=TINY)
    real = [s for s in read_spectra(DATA / "overfit64.mgf") if isinstance(s, Spectrum)]
    peptides = ["PEPTIDEK", "LVNELTEFAK", "AEFVEVTK", "YLYEIAR"]
    prepare = preprocess.pipeline(cfg.preprocess)
    real = [prepare(s) for s in real]
    a = TrainingStream(cfg, peptides, real).make_batch(5)
    b = TrainingStream(cfg, peptides, real, start_batch=3).make_batch(5)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    c = TrainingStream(cfg, peptides, real).make_batch(6)
    assert not torch.equal(a["mz"], c["mz"])


def test_another_stream_draws_new_batches_reproducibly():
    """A fine-tune on stream 1 replays none of stream 0's batches, and its own again."""
    cfg = load_config(overrides=TINY)
    other = load_config(
        overrides={**TINY, "training": {**TINY["training"], "stream": 1}}
    )
    real = [s for s in read_spectra(DATA / "overfit64.mgf") if isinstance(s, Spectrum)]
    peptides = ["PEPTIDEK", "LVNELTEFAK", "AEFVEVTK", "YLYEIAR"]
    prepare = preprocess.pipeline(cfg.preprocess)
    real = [prepare(s) for s in real]
    first = [TrainingStream(cfg, peptides, real).make_batch(b)["mz"] for b in range(8)]
    new = TrainingStream(other, peptides, real).make_batch(5)
    again = TrainingStream(other, peptides, real, start_batch=2).make_batch(5)
    for key in new:
        torch.testing.assert_close(new[key], again[key])
    assert not any(
        m.shape == new["mz"].shape and torch.equal(m, new["mz"]) for m in first
    )


def _losses(run: Path) -> dict[int, float]:
    """Training loss by data position (train/batch), over every log of a run."""
    losses = {}
    for path in sorted(run.glob("logs/version_*/metrics.csv")):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                if row.get("train/loss"):
                    losses[int(float(row["train/batch"]))] = float(row["train/loss"])
    return losses


def test_resume_continues_the_same_loss_curve(tmp_path):
    """8 steps straight equal 4 steps, a checkpoint, then 4 resumed steps."""
    cfg = load_config(overrides=TINY)
    fasta = tmp_path / "tiny.fasta"
    fasta.write_text(
        ">sp|P02769|ALBU_BOVIN\nDTHKSEIAHRFKDLGEEHFKGLVLIAFSQYLQQCPFDEHVKLVNELTEFAKTCVADESHAGCEK\n"
    )
    train(cfg, [DATA / "overfit64.mgf"], [fasta], tmp_path / "straight", progress=False)
    train(
        cfg,
        [DATA / "overfit64.mgf"],
        [fasta],
        tmp_path / "resumed",
        progress=False,
        stop_at_step=4,
    )  # interrupted half way
    train(
        cfg,
        [DATA / "overfit64.mgf"],
        [fasta],
        tmp_path / "resumed",
        progress=False,
        resume=tmp_path / "resumed" / "checkpoints" / "end.ckpt",
    )
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert sorted(straight) == sorted(resumed) == [0, 1, 2, 3]
    values = [straight[b] for b in range(4)]
    assert np.allclose(values, [resumed[b] for b in range(4)], rtol=1e-5), (
        straight,
        resumed,
    )
    assert all(math.isfinite(v) for v in values)
    # the resumed run's clock goes on from the interrupted one's, not from 0
    clock = [
        float(row["train/wall_s"])
        for path in sorted((tmp_path / "resumed").glob("logs/version_*/metrics.csv"))
        for row in csv.DictReader(open(path))
        if row.get("train/wall_s")
    ]
    assert len(clock) == 4 and clock == sorted(clock) and clock[0] > 0


def test_held_out_split_is_what_training_validates_on():
    cfg = load_config(overrides=TINY)
    module = DataModule(cfg, [DATA / "overfit64.mgf"], [], [])
    module.setup()
    held_out = held_out_split([DATA / "overfit64.mgf"], cfg)
    assert held_out and len(held_out) < 64
    assert [s.ref for s in held_out] == [s.ref for s in module.val_sets["real"]]


def test_fold_of_reads_the_peptide_alone():
    # I = L and modifications do not move a peptide to another fold
    assert fold_of("PEPTIDEK", 3) == fold_of("PEPTLDEK", 3)
    assert fold_of("M+15.995PEPTIDEK", 3) == fold_of("MPEPTIDEK", 3)
    spectra = [
        s for s in read_spectra(DATA / "overfit64.mgf") if isinstance(s, Spectrum)
    ]
    folds = [fold_of(s.peptide, 3) for s in spectra]
    assert set(folds) == {0, 1, 2}  # 64 peptides fill every fold
    assert folds == [fold_of(s.peptide, 3) for s in reversed(spectra)][::-1]


def test_a_run_that_leaves_a_fold_out_learns_from_the_other_folds_alone():
    cfg = load_config(
        overrides={**TINY, "training": {**TINY["training"], "left_out_fold": 1}}
    )
    module = DataModule(cfg, [DATA / "overfit64.mgf"], [], [])
    module.setup()
    part = training_part([DATA / "overfit64.mgf"], cfg)
    kept = [s.ref for s in part if fold_of(s.peptide, cfg.training.folds) != 1]
    assert [s.ref for s in module.real] == kept
    assert 0 < len(kept) < len(part)  # fold 1 held some of the training part
    # validation is the held-out split, whichever fold is left out
    held_out = held_out_split([DATA / "overfit64.mgf"], cfg)
    assert [s.ref for s in held_out] == [s.ref for s in module.val_sets["real"]]


def test_stream_gives_a_share_of_spectra_a_wrong_draft_of_their_own_peptide():
    cfg = load_config(
        overrides={
            **TINY,
            "training": {
                **TINY["training"],
                "batch_size": 64,
                "draft_fraction": 0.5,
                "draft_mean_errors": 1.5,
            },
        }
    )
    real = [s for s in read_spectra(DATA / "overfit64.mgf") if isinstance(s, Spectrum)]
    prepare = preprocess.pipeline(cfg.preprocess)
    stream = TrainingStream(cfg, [], [prepare(s) for s in real])
    batch = stream.make_batch(2)
    drafted = batch["drafted"]
    assert 16 < int(drafted.sum()) < 48
    tokens, draft = batch["tokens"], batch["draft"]
    assert torch.equal(draft[~drafted], tokens[~drafted])
    wrong = (draft[drafted] != tokens[drafted]).any(dim=1).float().mean()
    assert 0.6 < wrong < 0.95  # Poisson(1.5) errors: ~78 % of drafts are wrong
    assert torch.equal(batch["given"], drafted.unsqueeze(1).expand_as(draft))
    again = TrainingStream(cfg, [], [prepare(s) for s in real]).make_batch(2)
    assert torch.equal(again["draft"], draft)  # f(seed, batch index)


def test_stream_gives_a_share_of_spectra_their_peptide_with_a_stretch_blank():
    t = {**TINY["training"], "batch_size": 64}
    cfg = load_config(
        overrides={
            **TINY,
            "training": {**t, "draft_fraction": 0.25, "infill_fraction": 0.5},
        }
    )
    real = [s for s in read_spectra(DATA / "overfit64.mgf") if isinstance(s, Spectrum)]
    prepare = preprocess.pipeline(cfg.preprocess)
    batch = TrainingStream(cfg, [], [prepare(s) for s in real]).make_batch(2)
    given, drafted = batch["given"], batch["drafted"]
    whole = given.all(dim=1)
    assert torch.equal(whole[drafted], torch.ones_like(whole[drafted]))
    infilled = ~drafted & given.any(dim=1) & ~whole
    blank = ~drafted & ~given.any(dim=1)  # the blank draft of initial_state
    assert 20 < int(infilled.sum()) < 44 and int(blank.sum()) > 4
    assert int(infilled.sum() + blank.sum() + drafted.sum()) == 64
    # The stretch rows keep their own tokens wherever they are given.
    assert torch.equal(batch["draft"][infilled], batch["tokens"][infilled])


def test_init_from_starts_a_run_from_saved_weights(tmp_path):
    cfg = load_config(overrides=TINY)
    first = train(cfg, [DATA / "overfit64.mgf"], [], tmp_path / "a", progress=False)
    module = PepTRMModule(cfg)
    fresh = {k: v.clone() for k, v in module.model.state_dict().items()}
    second = train(
        cfg,
        [DATA / "overfit64.mgf"],
        [],
        tmp_path / "b",
        progress=False,
        stop_at_step=2,
        init_from=first,
    )
    from safetensors.torch import load_file

    start = load_file(first / "model.safetensors")
    after = load_file(second / "model.safetensors")
    # one batch of fine-tuning moves the weights a little from the start, far
    # less than they are from a fresh initialisation
    key = "heads.residues.weight"
    assert (after[key] - start[key]).norm() < 0.5 * (fresh[key] - start[key]).norm()


def test_each_rank_builds_its_own_batches_of_one_stream():
    cfg = load_config(overrides=TINY)
    real = [s for s in read_spectra(DATA / "overfit64.mgf") if isinstance(s, Spectrum)]
    prepare = preprocess.pipeline(cfg.preprocess)
    real = [prepare(s) for s in real]
    ranks = [TrainingStream(cfg, [], real, rank=r, world_size=2) for r in (0, 1)]
    one = TrainingStream(cfg, [], real)
    # runs of n_workers batches go to the ranks in turn; one rank takes them all
    assert [ranks[0].global_index(p, 2) for p in range(4)] == [0, 1, 4, 5]
    assert [ranks[1].global_index(p, 2) for p in range(4)] == [2, 3, 6, 7]
    assert [one.global_index(p, 3) for p in range(5)] == [0, 1, 2, 3, 4]
    first = [next(iter(stream)) for stream in ranks]
    assert not torch.equal(first[0]["mz"], first[1]["mz"])
    torch.testing.assert_close(first[1]["mz"], one.make_batch(1)["mz"])


def _train_cli(tmp_path, out: str, *extra: str) -> None:
    import subprocess
    import sys

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    command = [sys.executable, "-m", "peptrm", "train", str(DATA / "overfit64.mgf")]
    command += ["-o", str(tmp_path / out), "--no-progress", *extra]
    if "--resume" not in extra:
        command += ["-c", str(config)]
    subprocess.run(command, check=True, timeout=300, capture_output=True)


def test_two_process_ddp_on_cpu_trains_like_one_and_resumes_exactly(tmp_path):
    """`--accelerator cpu --devices 2`: rank 0's first batch is the one-process
    run's, the curve stays close to it, and 4 + 4 resumed steps give the 8
    straight steps' losses."""
    ddp = ("--accelerator", "cpu", "--devices", "2")
    _train_cli(tmp_path, "one", "--accelerator", "cpu", "--devices", "1")
    _train_cli(tmp_path, "two", *ddp)
    _train_cli(tmp_path, "cut", *ddp, "--stop-at-step", "4")
    checkpoint = str(tmp_path / "cut" / "checkpoints" / "end.ckpt")
    _train_cli(tmp_path, "cut", *ddp, "--resume", checkpoint)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    resumed = _losses(tmp_path / "cut")
    assert sorted(one) == sorted(two) == sorted(resumed) == [0, 1, 2, 3]
    # batch 0 is the same batch; its logged (last-step) loss already follows one
    # update, which under DDP averages rank 1's gradient in
    assert math.isclose(one[0], two[0], rel_tol=1e-2) and one[0] != two[0]
    assert all(abs(two[b] - one[b]) < 0.2 * one[b] for b in range(4)), (one, two)
    assert np.allclose([two[b] for b in range(4)], [resumed[b] for b in range(4)])
    assert (tmp_path / "two" / "model" / "model.safetensors").exists()


def test_annotation_targets_label_the_peaks_at_the_labels_ions():
    peptide = ["+42.011", "P", "E", "P", "T", "L", "D", "E", "K"]
    b, y = masses.fragment_mz(peptide, 1)
    b2, y2 = masses.fragment_mz(peptide, 2)
    modification_only = masses.token_mass("+42.011") + masses.PROTON  # no fragment
    mz = [b[2], y[4] + 0.015, y2[5], b[1] + 0.05, 433.7, modification_only, 0.0]
    tokens = torch.as_tensor(masses.encode(peptide, 32)).unsqueeze(0)
    found = annotation_targets(torch.tensor([mz]), tokens, 0.02)[0]  # (P, A)
    b_, y_, b2_, y2_ = range(4)
    assert found[0].tolist() == [1, 0, 0, 0]  # b3 (its m/z is no other ion's)
    assert found[1, y_] == 1 and found[2, y2_] == 1  # y5 15 mDa off; y6++
    assert found[3:].sum() == 0  # 50 mDa off, noise, the modification alone, padding


def _fine_tune(tmp_path, overrides: dict, stop_at_step: int):
    """A TINY run (`tmp_path/a`), then `overrides` started from it (`tmp_path/b`).

    Returns the weights of the first run's model and of the fine-tuned one.
    """
    from safetensors.torch import load_file

    cfg = load_config(overrides=TINY)
    first = train(cfg, [DATA / "overfit64.mgf"], [], tmp_path / "a", progress=False)
    second = train(
        load_config(overrides=overrides),
        [DATA / "overfit64.mgf"],
        [],
        tmp_path / "b",
        progress=False,
        stop_at_step=stop_at_step,
        init_from=first,
    )
    return load_file(first / "model.safetensors"), load_file(
        second / "model.safetensors"
    )


def test_annotator_only_trains_the_annotator_and_leaves_the_network(tmp_path):
    annotating = {
        **TINY,
        "model": {**TINY["model"], "peak_annotator": True, "annotator_layers": 1},
        "training": {**TINY["training"], "annotator_only": True},
    }
    # four batches: one optimiser step each
    start, after = _fine_tune(tmp_path, annotating, stop_at_step=4)
    assert all(torch.equal(after[k], v) for k, v in start.items())
    added = [k for k in after if k not in start]
    assert added and all(k.startswith("annotator.") for k in added)
    log_file = next((tmp_path / "b").glob("logs/*/metrics.csv"))
    rows = list(csv.DictReader(open(log_file)))
    assert sum(1 for r in rows if r.get("val_real/annotation")) == 2  # batches 2, 4


def test_trainable_trains_only_the_weights_it_names(tmp_path):
    some = {**TINY, "training": {**TINY["training"], "trainable": ["heads.gate"]}}
    start, after = _fine_tune(tmp_path, some, stop_at_step=4)
    changed = {k for k, v in start.items() if not torch.equal(after[k], v)}
    assert changed == {"heads.gate.weight", "heads.gate.bias"}
    with pytest.raises(ValueError, match="names no weight"):
        nothing = {**TINY, "training": {**TINY["training"], "trainable": ["nope"]}}
        PepTRMModule(load_config(overrides=nothing))


def test_real_spectra_read_the_chances_of_the_annotator_that_never_saw_them(tmp_path):
    """With chance_annotators, fold k's real spectra are annotated by the run
    that left fold k out; simulated spectra by the model's own annotator."""
    from peptrm.model import PepTRM, peak_chances
    from peptrm.weights import load_model, save_model

    shape = {**TINY["model"], "peak_annotator": True, "annotator_layers": 1}
    base = load_config(overrides={**TINY, "model": shape})
    folders = []
    for k in range(3):
        torch.manual_seed(10 + k)
        run = PepTRM(base.model, base.recursion, len(masses.VOCAB))
        cross = dataclasses.replace(base.training, left_out_fold=k)
        folders.append(save_model(run, dataclasses.replace(base, training=cross),
                                  tmp_path / f"fold{k}").parent)  # fmt: skip
    reading = {
        **TINY,
        "model": {**shape, "chance_evidence": True},
        "training": {**TINY["training"], "real_fraction_start": 0.5,
                     "chance_annotators": [str(f) for f in folders]},
    }  # fmt: skip
    cfg = load_config(overrides=reading)
    real = [s for s in read_spectra(DATA / "overfit64.mgf") if isinstance(s, Spectrum)]
    stream = TrainingStream(cfg, ["PEPTIDEK", "ELVISLIVESK", "SAMPLERK"], real)
    batch = stream.make_batch(0)
    fold = batch["fold"]
    assert (fold == -1).any() and (fold >= 0).any()  # simulated and real rows
    module = PepTRMModule(cfg)
    chances = module.peak_chances(batch)
    own = peak_chances(module.model.annotator, batch)
    torch.testing.assert_close(chances[fold == -1], own[fold == -1])
    inputs = ("mz", "intensity", "precursor_mass", "charge")
    for k in range(3):
        rows = fold == k
        if not rows.any():
            continue
        annotator = load_model(folders[k])[0].annotator
        sub = {key: batch[key][rows] for key in inputs}
        torch.testing.assert_close(chances[rows], peak_chances(annotator, sub))
        assert not torch.allclose(chances[rows], own[rows])
