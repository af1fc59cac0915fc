import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from peptrm import decoding, evidence, masses, metrics, preprocess, rerank, sequence
from peptrm.config import load_config
from peptrm.io import InputError, Spectrum, read_predictions, read_spectra
from peptrm.model import PepTRM
from peptrm.weights import BUNDLED, load_model

DATA_BOM = Path(__file__).parent / "data" / "bom.mgf"
TINY = {
    "model": {"dim": 32, "n_heads": 4, "n_encoder_layers": 1, "n_core_layers": 1},
    "recursion": {"n_latent_steps": 1, "n_cycles": 2, "n_supervision": 3},
    "preprocess": {"n_peaks": 50},
    # several batches, and skipped spectra between; the network on the one thread
    # the tests run torch on (conftest), as the paths compared here do: the thread
    # count changes the float rounding, and with it a score in the last digits
    "decoding": {"batch_size": 4, "network_threads": 1},
}


@pytest.fixture(scope="module")
def tiny():
    """A tiny random-weight model and its config (n_supervision 3)."""
    cfg = load_config(overrides=TINY)
    torch.manual_seed(0)
    return PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB)).eval(), cfg


def _with_decoding(cfg, **changes):
    return dataclasses.replace(
        cfg, decoding=dataclasses.replace(cfg.decoding, **changes)
    )


def _run(model, cfg, paths, **kwargs):
    return list(sequence.predictions(paths, model, cfg, progress=False, **kwargs))


def _spectra_in(path) -> int:
    """Spectra in an MGF, counted from its text rather than through our reader."""
    return path.read_text().count("BEGIN IONS")


def _rank_one(rows):
    return [r for r in rows if r.rank == 1]


def test_every_spectrum_gets_one_rank_one_row_in_input_order(
    tiny, broken_mgf, small_mgf
):
    model, cfg = tiny
    rows = _run(model, cfg, [broken_mgf, small_mgf])
    expected = [
        (path.name, index)
        for path in (broken_mgf, small_mgf)
        for index in range(_spectra_in(path))
    ]
    assert len(expected) == 20
    assert [(Path(r.ref.path).name, r.ref.index) for r in rows] == expected
    assert all(r.rank == 1 for r in rows)  # top_k 1 by default
    skipped = {r.ref.index for r in rows if r.status.startswith("skipped:")}
    assert rows[0].ref.title == "good" and rows[0].peptide
    assert skipped == {1, 2, 3, 4, 5, 8, 9}  # see tests/data/README.md
    for row in rows:
        if row.status.startswith("skipped:"):
            assert row.peptide == "" and math.isnan(row.score)
            assert str(row.ref) in row.status  # names file, spectrum and title
        else:
            assert row.peptide and 0.0 <= row.score <= 1.0
            assert len(row.aa_scores) == len(masses.parse(row.peptide))


def test_top_k_gives_ranked_rows_after_one_rank_one_row(tiny, small_mgf):
    model, cfg = tiny
    rows = _run(model, cfg, [small_mgf], top_k=3)
    assert len(_rank_one(rows)) == _spectra_in(small_mgf)
    previous = None
    for row in rows:
        if row.rank == 1:
            previous = row
            continue
        assert row.ref == previous.ref and row.rank == previous.rank + 1 <= 3
        assert row.peptide != previous.peptide  # distinct candidates
        previous = row
    assert len(rows) > len(_rank_one(rows))  # some spectrum has a second candidate
    # Without a reranker, ranks follow the search's own objective (log-prob plus
    # evidence), so asking for more rows never changes the first.
    alone = _run(model, cfg, [small_mgf], top_k=1)
    assert [r.peptide for r in alone] == [r.peptide for r in _rank_one(rows)]


def test_halting_threshold_zero_stops_every_spectrum_after_one_step(tiny, small_mgf):
    model, cfg = tiny
    rows = _run(model, _with_decoding(cfg, halt_threshold=0.0), [small_mgf])
    assert [r.n_steps for r in rows] == [1] * _spectra_in(small_mgf)


@pytest.mark.parametrize("configured, run", [(0, 3), (2, 2), (5, 3)])
def test_halting_threshold_one_runs_the_configured_supervision_steps(
    tiny, small_mgf, configured, run
):
    """supervision_steps 0 runs all of the model's N_sup = 3; more is capped at 3."""
    model, cfg = tiny
    summary = sequence.RunSummary()
    cfg = _with_decoding(cfg, halt_threshold=1.0, supervision_steps=configured)
    rows = _run(model, cfg, [small_mgf], summary=summary)
    assert [r.n_steps for r in rows] == [run] * _spectra_in(small_mgf)
    assert summary.mean_steps == run
    assert (summary.spectra, summary.sequenced, summary.skipped) == (10, 10, 0)


def _batch(cfg, path):
    prepare = preprocess.pipeline(cfg.preprocess)
    spectra = [prepare(s) for s in read_spectra(path) if isinstance(s, Spectrum)]
    return preprocess.collate(spectra, cfg.preprocess.n_peaks)


def test_refine_returns_one_history_entry_per_step_run(tiny, small_mgf):
    model, cfg = tiny
    batch = _batch(cfg, small_mgf)
    log_probs, steps, history = sequence.refine(model, batch, 3, halt_threshold=1.0)
    assert len(history) == 3 and steps.tolist() == [3] * 10
    assert torch.equal(log_probs, history[-1])
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(10, 32))
    assert not torch.equal(history[0], history[-1])  # later steps change the draft
    halted, steps, history = sequence.refine(model, batch, 3, halt_threshold=0.0)
    assert len(history) == 1 and steps.tolist() == [1] * 10
    one_step, _, _ = sequence.refine(model, batch, 1, halt_threshold=1.0)
    assert torch.equal(halted, one_step)  # a halted spectrum keeps its draft


def test_network_parts_hold_similar_peak_counts_in_aligned_widths():
    """Rows sort by the columns they use (to the last nonzero m/z or intensity)
    and split into parts of about the size asked; each width is 16k - 1 columns
    (16k with the precursor token) around its widest row, at most the batch's."""
    used = torch.tensor([3, 150, 15, 16, 0, 40, 149, 31, 32, 7])
    mz = (torch.arange(150) < used.unsqueeze(1)) * 500.0  # (10, 150)
    intensity = (mz > 0).float()
    intensity[2, 14] = 0.0  # a zero-intensity peak inside still counts by its m/z
    parts = sequence.peak_parts(mz, intensity, size=3)
    rows = [part.tolist() for part, _ in parts]
    assert rows == [[4, 0, 9], [2, 3, 7], [8, 5], [6, 1]]  # counts 0 3 7 | 15 16 31
    assert [width for _, width in parts] == [15, 31, 47, 150]
    assert sequence.peak_parts(mz, intensity, size=64)[0][1] == 150


def test_the_network_reads_a_batch_in_parts_as_it_reads_it_whole(
    small_mgf, monkeypatch
):
    """`network_pass` runs the bundled network on parts of similar peak counts,
    each cut to 16k - 1 peak columns: every spectrum gets, to the bit, the
    log-probabilities, steps and peak chances of the whole batch at full width."""
    model, cfg = load_model()
    prepare = preprocess.pipeline(cfg.preprocess)
    spectra = [prepare(s) for s in read_spectra(small_mgf) if isinstance(s, Spectrum)]
    widths = []
    encode = PepTRM.encode

    def spy(self, mz, *args, **kwargs):
        widths.append(mz.shape[1])
        return encode(self, mz, *args, **kwargs)

    monkeypatch.setattr(PepTRM, "encode", spy)
    monkeypatch.setattr(sequence, "PART_SPECTRA", 3)
    summary = sequence.RunSummary()
    parted = sequence.network_pass(model, spectra, cfg, "cpu", summary)
    assert widths == [47, 63, 95, 127]  # 13 21 34 | 35 48 60 | 87 90 | 109 123 peaks
    whole = sequence.annotate(model, _batch(cfg, small_mgf))
    log_probs, steps, _ = sequence.refine(
        model,
        whole,
        cfg.inference_steps,
        cfg.decoding.halt_threshold,
        halt_unchanged=cfg.decoding.halt_unchanged,
    )
    assert widths[-1] == cfg.preprocess.n_peaks  # the whole batch at full width
    assert torch.equal(parted.log_probs, log_probs)
    assert torch.equal(parted.steps, steps)
    peaks = whole["mz"] > 0
    assert torch.equal(parted.batch["ion_chances"][peaks], whole["ion_chances"][peaks])
    assert parted.batch["ion_chances"].shape == whole["ion_chances"].shape


def test_halted_spectra_are_not_computed_again(small_mgf, monkeypatch):
    """Spectra 0 and 3 halt after the first step: the next steps run on the
    other 8 alone, which end as they do when nothing halts (bit for bit), and
    the halted two keep their first draft."""
    from peptrm.model import PepTRM

    model, cfg = load_model()
    batch = _batch(cfg, small_mgf)
    halting = batch["precursor_mass"][[0, 3]]
    sizes = []
    forward = PepTRM.forward

    def halt_two(self, spectrum, y, z, supervision_step=0):
        sizes.append(len(spectrum.x))
        y, z, halt = forward(self, spectrum, y, z, supervision_step)
        chosen = torch.isin(spectrum.precursor_mass, halting)
        return y, z, torch.where(chosen, 20.0, -20.0)

    monkeypatch.setattr(PepTRM, "forward", halt_two)
    sequence.annotate(model, batch)
    log_probs, steps, history = sequence.refine(model, batch, 3, halt_threshold=0.9)
    assert sizes == [16, 8, 8]  # 10 padded to 16 with copies of 0, which halt too
    assert steps.tolist() == [1, 3, 3, 1, 3, 3, 3, 3, 3, 3]
    everything, _, _ = sequence.refine(model, batch, 3, halt_threshold=1.0)
    rest = [i for i in range(10) if i not in (0, 3)]
    assert torch.equal(log_probs[rest], everything[rest])
    assert torch.equal(log_probs[[0, 3]], history[0][[0, 3]])


def test_a_spectrum_halts_once_its_likeliest_tokens_held_for_n_steps(small_mgf):
    """`halt_unchanged` 2: each spectrum ends at the first step whose likeliest
    tokens equal those of the two steps before, with that step's draft, as read
    from a run where none halts; the rest run every step."""
    model, cfg = load_model()
    batch = sequence.annotate(model, _batch(cfg, small_mgf))
    n = cfg.recursion.n_supervision
    _, _, history = sequence.refine(model, batch, n, halt_threshold=1.1)
    tokens = [h.argmax(-1) for h in history]
    expected = []
    for i in range(10):
        held, stop = 0, n - 1
        for k in range(1, n):
            held = held + 1 if torch.equal(tokens[k][i], tokens[k - 1][i]) else 0
            if held == 2:
                stop = k
                break
        expected.append(stop)
    log_probs, steps, _ = sequence.refine(
        model, batch, n, halt_threshold=1.1, halt_unchanged=2
    )
    assert steps.tolist() == [k + 1 for k in expected]
    assert 0 < sum(k < n - 1 for k in expected) < 10  # some halt early, not all
    for i, k in enumerate(expected):
        torch.testing.assert_close(log_probs[i], history[k][i])


def test_a_spectrum_reads_the_same_whatever_batch_it_sits_in():
    """A spectrum's network pass is the same, to the bit, alone, in the whole
    demo, or in another order (what `--devices N` and cross-fitting need): a
    batch of 1 or 2 rounds otherwise unless padded (`padded_rows`)."""
    model, cfg = load_model()
    spectra = _demo_spectra(cfg)
    summary = sequence.RunSummary()
    whole = sequence.network_pass(model, spectra, cfg, "cpu", summary)
    backwards = sequence.network_pass(model, spectra[::-1], cfg, "cpu", summary)
    assert torch.equal(backwards.log_probs.flip(0), whole.log_probs)
    assert torch.equal(
        backwards.batch["ion_chances"].flip(0), whole.batch["ion_chances"]
    )
    for i in (0, 17, 12):
        alone = sequence.network_pass(model, spectra[i : i + 1], cfg, "cpu", summary)
        assert torch.equal(alone.log_probs[0], whole.log_probs[i])
        assert torch.equal(alone.steps[0], whole.steps[i])
    # the padding is `refine`'s and `annotate`'s own, so every caller has it:
    # two spectra fed back from the search read what they read in the batch
    batch = sequence.annotate(
        model, preprocess.collate(spectra, cfg.preprocess.n_peaks)
    )
    draft = model.draft_logits(whole.log_probs.argmax(-1))
    fed, _, _ = sequence.refine(model, batch, 2, 1.0, draft)
    pair = {key: value[[12, 17]] for key, value in batch.items()}
    fed_pair, _, _ = sequence.refine(model, pair, 2, 1.0, draft[[12, 17]])
    assert torch.equal(fed_pair, fed[[12, 17]])


def test_the_lookup_cache_reads_what_looking_every_row_up_reads(monkeypatch):
    """Between think steps most prefix masses hold; the lookups of those rows
    are copied from the last step's (`model.LookupCache`), the rest looked up
    afresh. Through every step, and as spectra halt and drop out, the drafts
    are the same to the bit as with every row looked up, from far fewer."""
    model, cfg = load_model()
    batch = sequence.annotate(
        model, preprocess.collate(_demo_spectra(cfg), cfg.preprocess.n_peaks)
    )
    looked_up = []
    rows = PepTRM._look_up_rows

    def counted(self, b, *args, **kwargs):
        looked_up[-1] += len(b)
        return rows(self, b, *args, **kwargs)

    remember = PepTRM.remember

    def uncached(self, spectrum):
        return remember(self, spectrum)._replace(lookups=None)

    monkeypatch.setattr(PepTRM, "_look_up_rows", counted)
    runs = []
    for cached in (True, False):
        looked_up.append(0)
        if not cached:
            monkeypatch.setattr(PepTRM, "remember", uncached)
        runs.append(sequence.refine(model, batch, 8, 0.9, halt_unchanged=2))
    (with_cache, steps, history), (without, steps_without, history_without) = runs
    assert torch.equal(with_cache, without) and torch.equal(steps, steps_without)
    assert all(map(torch.equal, history, history_without))
    assert 1 < steps.min() < steps.max()  # spectra halted along the way
    assert looked_up[0] < 0.5 * looked_up[1]  # 2,410 rows against 6,144 here


def test_a_bfloat16_network_reads_the_demo_as_the_float32_one_does(small_mgf):
    model, cfg = load_model()
    batch = _batch(cfg, small_mgf)
    n = cfg.recursion.n_supervision
    full, _, _ = sequence.refine(model, batch, n, 1.1)
    half, _, history = sequence.refine(model, batch, n, 1.1, precision="bfloat16")
    assert half.dtype == torch.float32 and history[-1].dtype == torch.float32
    assert not torch.equal(half, full)  # it did run in bfloat16
    assert torch.allclose(half.exp().sum(-1), torch.ones(10, 32), atol=1e-4)
    agree = (half.argmax(-1) == full.argmax(-1)).float().mean().item()
    assert agree > 0.85  # 0.92 here with the bundled ion-evidence network


def test_first_residue_starts_keep_the_run_its_own_reading_likes_best():
    model, cfg = load_model()
    batch = sequence.annotate(
        model, preprocess.collate(_demo_spectra(cfg), cfg.preprocess.n_peaks)
    )
    n, length, starts = len(batch["mz"]), cfg.model.max_length, 3
    kept, steps, history = sequence.refine(
        model, batch, 8, 0.9, halt_unchanged=2, starts=starts
    )
    # by hand: the first step's likeliest first residues (never STOP), each a
    # recursion of its own from a draft that gives it alone
    _, _, (first,) = sequence.refine(model, batch, 1, 1.1)
    residue = first[:, 0].clone()
    residue[:, masses.STOP_INDEX] = -math.inf
    top = residue.topk(starts, dim=-1).indices  # (B, K)
    runs, run_steps = [], []
    for k in range(starts):
        tokens = torch.zeros(n, length, dtype=torch.long)
        tokens[:, 0] = top[:, k]
        given = torch.zeros(n, length, dtype=torch.bool)
        given[:, 0] = True
        draft = model.draft_logits(tokens, given)
        log_probs, used, _ = sequence.refine(
            model, batch, 8, 0.9, draft, halt_unchanged=2
        )
        runs.append(log_probs)
        run_steps.append(used)
    runs = torch.stack(runs)  # (K, B, L, V)
    liked = runs.max(dim=-1).values.sum(dim=-1)  # (K, B)
    best = liked.argmax(dim=0)
    assert torch.allclose(kept, runs[best, torch.arange(n)], atol=1e-4)
    assert torch.equal(steps, torch.stack(run_steps).sum(dim=0) + 1)
    assert len(history) == int(torch.stack(run_steps).max())
    assert torch.allclose(history[-1], runs[best, torch.arange(n)], atol=1e-4)
    assert len(set(best.tolist())) > 1  # not always the likeliest residue's run
    # the kept draft's first residue is one of the starts, not STOP
    first_kept = kept[:, 0].argmax(dim=-1)
    assert (first_kept[:, None] == top).any(dim=1).float().mean() > 0.9
    # a draft given from outside (feedback rounds) runs once, as before
    draft = model.draft_logits(kept.argmax(dim=-1))
    fed, _, _ = sequence.refine(model, batch, 2, 1.0, draft, starts=starts)
    assert torch.equal(fed, sequence.refine(model, batch, 2, 1.0, draft)[0])
    # more starts than tokens: each token but STOP starts once (1 + 28 steps)
    _, every, _ = sequence.refine(model, batch, 1, 1.1, starts=100)
    assert every.tolist() == [len(masses.VOCAB)] * n


def test_ok_rows_fit_the_precursor_within_tolerance(tiny, broken_mgf, small_mgf):
    model, cfg = tiny
    rows = _run(model, cfg, [broken_mgf, small_mgf], top_k=3)
    tol_ppm = cfg.decoding.precursor_tol_ppm
    ok = [r for r in rows if r.status == "ok"]
    assert len(ok) >= 10  # the check below has rows to look at
    for row in ok:
        calc_mz = masses.precursor_mz(row.peptide, row.charge)
        assert row.calc_mz == pytest.approx(calc_mz, abs=1e-9)
        assert cfg.decoding.min_isotope <= row.isotope <= cfg.decoding.max_isotope
        observed = masses.mz_to_mass(row.precursor_mz, row.charge)
        offset = row.isotope * masses.C13_SPACING
        error_da = observed - offset - masses.peptide_mass(row.peptide)
        assert abs(error_da) <= tol_ppm * 1e-6 * observed + 1e-9
        assert abs(row.mass_error_ppm) <= tol_ppm + 1e-6
    for row in rows:  # a greedy fallback is the only row of its spectrum
        if row.status == "unconstrained":
            assert row.rank == 1
            assert sum(r.ref == row.ref for r in rows) == 1


def test_a_fitting_peptide_never_reports_more_ppm_than_the_tolerance():
    cfg = load_config().decoding  # 20 ppm, isotopes 0..1
    length = 32
    log_probs = np.full((1, length, len(masses.VOCAB)), math.log(1e-6))
    log_probs[0, np.arange(length), masses.encode("PEPTIDEK", length)] = 0.0
    mass = masses.peptide_mass("PEPTIDEK")  # 927.45 Da
    # the +1 13C peak, 99.99 % of the way to the upper edge of the window
    edge = 0.9999 * cfg.precursor_tol_ppm * 1e-6
    precursor = (mass + masses.C13_SPACING) / (1 - edge)
    ((candidate,),) = decoding.decode(log_probs, [precursor], cfg)
    assert candidate.constrained and candidate.isotope == 1  # it fits: status "ok"
    assert abs(candidate.mass_error_ppm) <= cfg.precursor_tol_ppm  # 20.020 ppm


def test_one_refine_round_still_gives_one_row_per_spectrum(tiny, broken_mgf, small_mgf):
    model, cfg = tiny
    plain = _run(model, cfg, [broken_mgf, small_mgf])
    refined = _run(model, _with_decoding(cfg, refine_rounds=1), [broken_mgf, small_mgf])
    assert [(r.ref, r.rank) for r in refined] == [(r.ref, r.rank) for r in plain]
    for before, after in zip(plain, refined, strict=True):
        assert after.status.startswith("skipped:") == before.status.startswith(
            "skipped:"
        )
        if before.n_steps is not None:
            assert after.n_steps > before.n_steps  # the round ran more steps
        if after.status == "ok":
            assert abs(after.mass_error_ppm) <= cfg.decoding.precursor_tol_ppm + 1e-6


def test_two_sequencing_processes_write_what_one_does_in_input_order(
    tiny, broken_mgf, small_mgf
):
    # batch size 4: five batches (skipped spectra between) go to two CPU
    # processes and come back in input order, row for row the same
    model, cfg = tiny
    summary_one, summary_two = sequence.RunSummary(), sequence.RunSummary()
    one = _run(model, cfg, [broken_mgf, small_mgf], summary=summary_one)
    two = _run(model, cfg, [broken_mgf, small_mgf], summary=summary_two, devices=2)
    assert len(one) == 20 and [str(r.ref) for r in two] == [str(r.ref) for r in one]
    for a, b in zip(one, two, strict=True):
        assert (a.peptide, a.status, a.n_steps) == (b.peptide, b.status, b.n_steps)
        assert a.score == pytest.approx(b.score, nan_ok=True)
    assert summary_two.steps == summary_one.steps > 0
    assert summary_two.skipped == summary_one.skipped == 7  # tests/data/README.md


def test_devices_name_gpus_in_turn_and_refuse_a_numbered_one():
    assert sequence.device_names("cpu", 1) == ["cpu"]
    assert sequence.device_names("cuda:1", 1) == ["cuda:1"]
    assert sequence.device_names("cpu", 3) == ["cpu"] * 3
    with pytest.raises(ValueError, match="give --device cuda or cpu"):
        sequence.device_names("cuda:1", 2)
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="GPUs visible"):
            sequence.device_names("cuda", 2)


def test_bundled_model_sequences_the_small_file(small_mgf):
    model, cfg = load_model()
    cfg = _with_decoding(cfg, batch_size=16)
    rows = _run(model, cfg, [small_mgf])
    assert [r.ref.index for r in rows] == list(range(10))
    assert all(r.status in ("ok", "unconstrained") for r in rows)
    for row in rows:
        assert masses.parse(row.peptide)  # a peptide in our vocabulary
        assert 0.0 < row.score <= 1.0
    assert sum(r.status == "ok" for r in rows) >= 5  # the mass constraint mostly fits


def _log_loss(scores: np.ndarray, correct: np.ndarray) -> float:
    p = np.clip(scores, 1e-12, 1 - 1e-12)
    return float(-np.mean(correct * np.log(p) + (1 - correct) * np.log(1 - p)))


def test_calibrate_fits_on_labelled_spectra_and_reports_before_and_after():
    # What a logistic fit with an unpenalised intercept promises in-sample (binned
    # ECE is not among them: it may rise or fall with package versions): its
    # log-loss is at most the base rate's entropy (the intercept-only model costs
    # no penalty), its mean score is the share right, and the fit is
    # deterministic.
    model, cfg = load_model()  # the bundled model, on the demo's labelled spectra
    prepare = preprocess.pipeline(cfg.preprocess)
    demo = Path(sequence.__file__).parent / "resources" / "demo.mgf"
    spectra = [prepare(s) for s in read_spectra(demo) if isinstance(s, Spectrum)]
    scorers, report = sequence.calibrate(model, spectra, cfg, fitted_on="demo")
    fitted = scorers.calibration
    assert report["spectra"] == 40 and 0 < report["correct"] < 40
    assert 0 <= report["ece_raw"] <= 1 and 0 <= report["ece_calibrated"] <= 1
    assert fitted.fitted_on == "demo" and fitted.peptide.shape == (5,)

    found, peaks, _ = sequence.decode_batch(
        model,
        spectra,
        cfg,
        "cpu",
        1,
        sequence.RunSummary(),
        sequence.Scorers(cleavage=scorers.cleavage),
        head_k=rerank.DEFAULT_K,
    )  # fmt: skip  (what calibrate searched: its cleavage table, a top-K search)
    best = [options[0] for options in found]
    assert all(c.tokens for c in best)  # every demo spectrum decodes to a peptide
    correct = np.array(
        [
            float(metrics.aa_match(c.tokens, masses.parse(s.peptide))[1])
            for c, s in zip(best, spectra, strict=True)
        ]
    )
    assert correct.sum() == report["correct"]
    scores = np.array([fitted.apply(c, p)[0] for c, p in zip(best, peaks, strict=True)])
    assert np.all((scores >= 0) & (scores <= 1))
    rate = correct.mean()
    entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert _log_loss(scores, correct) <= entropy + 1e-6
    assert scores.mean() == pytest.approx(rate, abs=1e-3)  # calibration in the large

    again, _ = sequence.calibrate(model, spectra, cfg, fitted_on="demo")
    np.testing.assert_array_equal(again.calibration.peptide, fitted.peptide)
    np.testing.assert_array_equal(again.calibration.residue, fitted.residue)
    with pytest.raises(ValueError, match="no usable labelled spectra"):
        sequence.calibrate(model, [], cfg)


def test_calibrate_fits_the_rerankers_probability_map_on_other_spectra(small_mgf):
    # the reranker learns from the first half of the demo spectra; its map to a
    # probability is refitted on the other half and the ten small.mgf ones, where
    # the rank-1 scores then average to the share of those spectra right at rank 1
    # (a logistic fit's promise)
    model, cfg = load_model()
    prepare = preprocess.pipeline(cfg.preprocess)
    demo = Path(sequence.__file__).parent / "resources" / "demo.mgf"
    spectra = [prepare(s) for s in read_spectra(demo) if isinstance(s, Spectrum)]
    small = [prepare(s) for s in read_spectra(small_mgf) if isinstance(s, Spectrum)]
    spectra, other = spectra[:20], spectra[20:] + small
    scorers, report = sequence.calibrate(
        model, spectra, cfg, platt_spectra=other, platt_fitted_on="other"
    )
    assert report["platt_spectra"] == 30
    assert scorers.reranker.fitted_on.endswith("Platt map: other")
    found, _, _ = sequence.decode_batch(
        model, other, cfg, "cpu", 1, sequence.RunSummary(), scorers
    )
    right = [
        metrics.aa_match(options[0].tokens, masses.parse(s.peptide))[1]
        for options, s in zip(found, other, strict=True)
    ]
    assert 0 < sum(right) < len(right)
    scores = [options[0].score for options in found]
    assert np.mean(scores) == pytest.approx(np.mean(right), abs=0.02)


def test_the_reranker_reads_the_model_probabilities_it_was_fitted_on(small_mgf):
    # calibration replaces each candidate's residue scores; the reranker was
    # fitted on the model's own residue probabilities, so it must rank on those
    model, cfg = load_model()
    scorers = sequence.load_scorers(BUNDLED)
    prepare = preprocess.pipeline(cfg.preprocess)
    spectra = [prepare(s) for s in read_spectra(small_mgf) if isinstance(s, Spectrum)]
    k = scorers.reranker.k  # every candidate is reranked
    found, peaks, _ = sequence.decode_batch(
        model, spectra, cfg, "cpu", k, sequence.RunSummary(), head_k=k,
        scorers=sequence.Scorers(cleavage=scorers.cleavage),
    )  # fmt: skip
    charges = [s.charge for s in spectra]
    raw = [[dataclasses.replace(c) for c in options] for options in found]
    applied = scorers.apply_many(list(zip(found, peaks, charges, strict=True)))
    for options, before, spectrum_peaks, charge in zip(
        applied, raw, peaks, charges, strict=True
    ):
        probability = scorers.reranker.probabilities(before, spectrum_peaks, charge)
        assert [c.score for c in options] == pytest.approx(
            sorted(probability, reverse=True)
        )
        residues = {
            tuple(c.indices): scorers.calibration.apply(c, spectrum_peaks)[1]
            for c in before
        }
        for candidate in options:  # the rows carry the calibrated residue scores
            assert candidate.aa_scores == pytest.approx(
                residues[tuple(candidate.indices)]
            )


def test_an_unreadable_file_becomes_a_row_and_the_run_goes_on(
    tiny, tmp_path, small_mgf
):
    model, cfg = tiny
    garbage = tmp_path / "garbage.mgf"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    notes = tmp_path / "notes.txt"
    notes.write_text("BEGIN IONS\n")
    summary = sequence.RunSummary()
    rows = _run(model, cfg, [garbage, small_mgf, notes], summary=summary)
    firsts = [(Path(r.ref.path).name, r.ref.index) for r in _rank_one(rows)]
    assert firsts == [
        ("garbage.mgf", 0),
        *[("small.mgf", i) for i in range(_spectra_in(small_mgf))],
        ("notes.txt", 0),
    ]
    assert rows[0].status.startswith(f"skipped: {garbage}: binary data at line 3")
    assert rows[-1].status.startswith(f"skipped: {notes}: unknown extension '.txt'")
    assert set(summary.unreadable) == {str(garbage), str(notes)}


def test_a_folder_is_its_spectrum_files_and_the_output_safe(tiny, tmp_path, small_mgf):
    model, cfg = tiny
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "b.mgf").write_bytes(small_mgf.read_bytes())
    (folder / "a.mgf").write_bytes(DATA_BOM.read_bytes())
    (folder / "readme.txt").write_text("not spectra")
    out = tmp_path / "out.csv"
    summary = sequence.sequence_files([folder], out, model, cfg, progress=False)
    assert summary.inputs == [str(folder / "a.mgf"), str(folder / "b.mgf")]
    assert summary.spectra == 3 + 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "runs"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="is a directory with no .mgf, .mzML"):
        sequence.sequence_files([empty], out, model, cfg, progress=False)


def _demo_spectra(cfg):
    prepare = preprocess.pipeline(cfg.preprocess)
    demo = Path(sequence.__file__).parent / "resources" / "demo.mgf"
    return [prepare(s) for s in read_spectra(demo) if isinstance(s, Spectrum)]


def test_top_k_never_changes_rank_one_with_or_without_a_reranker():
    model, cfg = load_model()
    cfg = _with_decoding(cfg, workers=1)
    spectra = _demo_spectra(cfg)
    scorers, _ = sequence.calibrate(model, spectra, cfg, rerank_k=10)
    no_reranker = dataclasses.replace(scorers, reranker=None)
    for chosen in (no_reranker, scorers):
        firsts = []
        for top_k in (1, 5, 12):
            found, _, _ = sequence.decode_batch(
                model, spectra, cfg, "cpu", top_k, sequence.RunSummary(), chosen
            )
            assert all(len(options) <= top_k for options in found)
            firsts.append([masses.format_peptide(o[0].tokens) for o in found])
        assert firsts[0] == firsts[1] == firsts[2]


def test_fdr_marks_rows_above_it_and_keeps_every_row(tmp_path, broken_mgf, small_mgf):
    model, cfg = load_model()
    out = tmp_path / "out.csv"
    sequence.sequence_files(
        [broken_mgf, small_mgf], out, model, cfg, progress=False, fdr=0.05
    )
    rows = read_predictions(out)
    assert len(rows) == _spectra_in(broken_mgf) + _spectra_in(small_mgf)
    ranked = [r for r in rows if r.peptide]
    assert ranked and all(r.q_value is not None for r in ranked)
    for row in ranked:
        assert (row.q_value <= 0.05) == (not row.status.startswith("above FDR"))
    assert all(r.q_value is None for r in rows if not r.peptide)


def test_refinement_trace_reads_every_step_of_the_draft(small_mgf):
    model, cfg = load_model()
    spectrum = _demo_spectra(cfg)[0]
    trace = sequence.refinement_trace(model, spectrum, cfg)
    assert [t.step for t in trace] == list(range(1, cfg.recursion.n_supervision + 1))
    for step in trace:
        assert len(step.confidence) == len(masses.parse(step.peptide))
        assert all(0 < c <= 1 for c in step.confidence) and 0 <= step.explained <= 1
    # the last step's draft is what refine's final distribution reads greedily
    batch = preprocess.collate([spectrum], cfg.preprocess.n_peaks)
    log_probs, _, _ = sequence.refine(model, batch, cfg.recursion.n_supervision, 1.1)
    (last,) = decoding.greedy(log_probs)
    assert trace[-1].peptide == masses.format_peptide(last.tokens)


def test_the_network_reading_ahead_of_the_search_changes_no_row(
    tiny, broken_mgf, small_mgf
):
    # predictions() runs the network on the next batch while a thread searches
    # the last; batch by batch in turn, predict_batch gives the same rows
    model, cfg = tiny
    summary = sequence.RunSummary()
    rows = _run(model, cfg, [broken_mgf, small_mgf], summary=summary)
    prepare = preprocess.pipeline(cfg.preprocess)
    spectra = [
        record
        for path in (broken_mgf, small_mgf)
        for record in map(prepare, read_spectra(path))
        if isinstance(record, Spectrum)
    ]
    size = cfg.decoding.batch_size
    in_turn = sequence.RunSummary()
    expected = [
        row
        for start in range(0, len(spectra), size)
        for per_spectrum in sequence.predict_batch(
            model, spectra[start : start + size], cfg, "cpu", 1, in_turn
        )
        for row in per_spectrum
    ]
    sequenced = [r for r in rows if not r.status.startswith("skipped:")]
    assert len(sequenced) == len(expected) == 13
    for a, b in zip(sequenced, expected, strict=True):
        assert (str(a.ref), a.peptide, a.status, a.n_steps) == (
            str(b.ref),
            b.peptide,
            b.status,
            b.n_steps,
        )
        assert a.score == pytest.approx(b.score)
    assert summary.steps == in_turn.steps > 0
    assert summary.unconstrained == in_turn.unconstrained


def test_the_network_runs_on_its_threads_and_the_callers_come_back(
    tiny, small_mgf, monkeypatch
):
    # beside decoding workers the network takes `network_threads`; searching in
    # this process (one worker) it keeps torch's own; the caller's count returns
    model, cfg = tiny
    seen = []
    network_pass = sequence.network_pass

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return network_pass(*args, **kwargs)

    monkeypatch.setattr(sequence, "network_pass", recording)
    before = torch.get_num_threads()
    beside = _with_decoding(cfg, workers=2, network_threads=before + 1)
    assert _run(model, beside, [small_mgf]) and set(seen) == {before + 1}
    assert torch.get_num_threads() == before
    seen.clear()
    assert _run(model, _with_decoding(cfg, workers=1), [small_mgf])
    assert set(seen) == {before}


def test_a_model_with_a_peak_annotator_searches_with_its_chances():
    from peptrm.evidence import CHANCE_EDGES

    bundled, cfg = load_model()
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, peak_annotator=True)
    )
    torch.manual_seed(0)  # a fresh annotator beside the bundled network
    model = PepTRM(cfg.model, cfg.recursion, len(masses.VOCAB)).eval()
    model.load_state_dict(bundled.state_dict(), strict=False)
    prepare = preprocess.pipeline(cfg.preprocess)
    demo = Path(sequence.__file__).parent / "resources" / "demo.mgf"
    spectra = [prepare(s) for s in read_spectra(demo) if isinstance(s, Spectrum)]
    scorers, _ = sequence.calibrate(model, spectra[:20], cfg, rerank_k=0)
    assert scorers.cleavage.peak_states == "annotation"
    found, peaks, _ = sequence.decode_batch(
        model, spectra[:2], cfg, "cpu", 1, sequence.RunSummary(), scorers
    )
    assert all(options for options in found)
    batch = preprocess.collate(spectra[:2], cfg.preprocess.n_peaks)
    chances = model.annotate_batch(batch)[0].double().numpy()  # (P, A)
    real = batch["mz"][0].numpy() > 0
    order = np.argsort(batch["mz"][0].numpy()[real], kind="stable")
    expected = 1 + np.searchsorted(CHANCE_EDGES, chances[real][order], side="right")
    np.testing.assert_array_equal(peaks[0].state, expected)


def test_cross_fitting_reads_each_spectrum_with_the_run_that_left_its_fold_out():
    from peptrm.train import fold_of

    model, cfg = load_model()
    spectra = _demo_spectra(cfg)
    folds = [fold_of(s.peptide, 3) for s in spectra]
    assert set(folds) == {0, 1, 2}
    runs = []
    for shift in (0.0, 2.0, -2.0):  # three annotators: as bundled, surer, less sure
        run, _ = load_model()
        with torch.no_grad():
            run.annotator.head.bias.add_(shift)
        runs.append(run)
    scorers, report = sequence.calibrate(
        model, spectra, cfg, fitted_on="demo", rerank_k=0, cross_fit=runs
    )
    # the table is what fold k's spectra say when fold k's run annotates them
    peaks = [None] * len(spectra)
    for k, run in enumerate(runs):
        rows = [i for i, f in enumerate(folds) if f == k]
        annotated = sequence._annotated_peaks(
            run, [spectra[i] for i in rows], cfg, "cpu"
        )
        for i, found in zip(rows, annotated, strict=True):
            peaks[i] = found
    expected = evidence.fit_table(
        spectra, cfg.decoding.fragment_tol_da, fitted_on="demo", peaks=peaks
    )
    assert np.array_equal(scorers.cleavage.log_odds, expected.log_odds)
    plain, plain_report = sequence.calibrate(
        model, spectra, cfg, fitted_on="demo", rerank_k=0
    )
    assert not np.array_equal(plain.cleavage.log_odds, expected.log_odds)
    # the same run for every fold is no cross-fitting at all: the same scorers
    same, same_report = sequence.calibrate(
        model, spectra, cfg, fitted_on="demo", rerank_k=0, cross_fit=[model] * 3
    )
    assert np.array_equal(same.cleavage.log_odds, plain.cleavage.log_odds)
    assert np.array_equal(same.calibration.peptide, plain.calibration.peptide)
    assert same_report["correct"] == plain_report["correct"]
