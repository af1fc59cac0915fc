from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from pyteomics import mgf

from peptrm import masses, predicted
from peptrm.config import load_config
from peptrm.io import Spectrum, SpectrumRef
from peptrm.simulate import (
    NEAR_MASS,
    PAIR_OF,
    PAIR_SWAPS,
    charge_range,
    digest_fasta,
    draft_errors,
    fragment_statistics,
    infill_mask,
    random_peptide,
    sample_charge,
    simulate_batch,
    simulate_spectrum,
)

DATA = Path(__file__).parents[2] / "shared" / "data"

# Human ubiquitin (UniProt P0CG48, one 76-residue repeat), and a made-up entry with
# an X to check that non-standard letters are dropped.
UBIQUITIN = (
    "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
)
# Cleaved by hand after every K/R (none is followed by P), kept if 6-30 residues.
UBIQUITIN_TRYPTIC = [
    "EGIPPDQQR",
    "ESTLHLVLR",
    "LIFAGK",
    "MQIFVK",
    "QLEDGR",
    "TITLEVEPSDTIENVK",
    "TLSDYNIQK",
]
# Neighbouring pairs joined by one missed cleavage (LRGG is too short).
UBIQUITIN_ONE_MISSED = [
    "AKIQDK",
    "EGIPPDQQRLIFAGK",
    "ESTLHLVLRLR",
    "IQDKEGIPPDQQR",
    "LIFAGKQLEDGR",
    "MQIFVKTLTGK",
    "QLEDGRTLSDYNIQK",
    "TITLEVEPSDTIENVKAK",
    "TLTGKTITLEVEPSDTIENVK",
    "TLSDYNIQKESTLHLVLR",
]
PEPTIDES = [
    "PEPTIDEK",
    "LESLIEKPEPTIDEK",
    "GAMDCQPWLIR",
    "SAMPLERNQVDK",
    *UBIQUITIN_TRYPTIC,
]


@pytest.fixture
def cfg():
    return load_config().simulation


@pytest.fixture
def tiny_fasta(tmp_path):
    path = tmp_path / "tiny.fasta"
    path.write_text(
        f">sp|P0CG48|UBC_HUMAN Polyubiquitin-C (first repeat)\n{UBIQUITIN[:40]}\n"
        f"{UBIQUITIN[40:]}\n>made_up with X\nPEPXIDEKAAAAAAK\n"
    )
    return path


def test_digest_matches_hand_cleavage(tiny_fasta, cfg):
    peptides = digest_fasta(tiny_fasta, replace(cfg, missed_cleavages=0))
    assert peptides == sorted([*UBIQUITIN_TRYPTIC, "AAAAAAK"])  # PEPXIDEK dropped


def test_digest_with_missed_cleavage(tiny_fasta, cfg):
    peptides = digest_fasta([tiny_fasta], replace(cfg, missed_cleavages=1))
    expected = sorted([*UBIQUITIN_TRYPTIC, *UBIQUITIN_ONE_MISSED, "AAAAAAK"])
    assert peptides == expected


def test_random_peptide_modifications(cfg):
    rng = np.random.default_rng(1)
    always = replace(cfg, oxidation_rate=1.0, deamidation_rate=0.0, n_terminal_rate=0.0)
    tokens = random_peptide(["GAMDCQPWLIR"], rng, always)
    assert tokens == [
        "G",
        "A",
        "M+15.995",
        "D",
        "C+57.021",
        "Q",
        "P",
        "W",
        "L",
        "I",
        "R",
    ]
    nterm = replace(cfg, n_terminal_rate=1.0)
    labels = {random_peptide(["PEPTIDEK"], rng, nterm)[0] for _ in range(200)}
    assert labels == set(masses.N_TERMINAL_MODIFICATIONS)
    for _ in range(50):
        tokens = random_peptide(PEPTIDES, rng, cfg)
        assert masses.parse(masses.format_peptide(tokens)) == tokens


def test_long_peptides_are_never_singly_charged(cfg):
    rng = np.random.default_rng(2)
    assert charge_range(7) == (1, 2)
    assert charge_range(20) == (2, 4)
    charges = {sample_charge(20, rng, cfg) for _ in range(300)}
    assert 1 not in charges and 2 in charges and 3 in charges
    assert {sample_charge(7, rng, cfg) for _ in range(300)} == {1, 2}


def test_spectrum_record_is_well_formed(cfg):
    rng = np.random.default_rng(3)
    tokens = masses.parse("+42.011LESLIEKPEPTIDEK")
    spectrum = simulate_spectrum(tokens, 3, rng, cfg, difficulty=1.0)
    assert spectrum.peptide == "+42.011LESLIEKPEPTIDEK"
    assert spectrum.charge == 3
    assert spectrum.intensity.dtype == np.float32
    assert np.all(spectrum.intensity > 0) and spectrum.intensity.max() == 1.0
    assert np.all(np.diff(spectrum.mz) >= 0)
    assert spectrum.mz.size > 50  # noise, isotopes and losses crowd the ladder


def test_clean_peaks_are_b_y_ions_within_ppm_error(cfg):
    rng = np.random.default_rng(4)
    errors = []
    for peptide in PEPTIDES:
        tokens = masses.parse(peptide.replace("C", "C+57.021"))
        b1, y1 = masses.fragment_mz(tokens, 1)
        b2, y2 = masses.fragment_mz(tokens, 2)
        theory = np.sort(np.concatenate([b1, y1, b2, y2]))
        for _ in range(20):
            spectrum = simulate_spectrum(tokens, 2, rng, cfg, difficulty=0.0)
            nearest = theory[np.abs(spectrum.mz[:, None] - theory).argmin(axis=1)]
            errors.append((spectrum.mz - nearest) / nearest * 1e6)
    errors = np.concatenate(errors)
    assert np.abs(errors).max() < 6 * cfg.fragment_tol_ppm  # every peak is a b/y ion
    assert errors.std() == pytest.approx(cfg.fragment_tol_ppm, rel=0.1)


@pytest.mark.parametrize("isotope", [0, 1])
def test_precursor_mz_within_tolerance(cfg, isotope):
    cfg = replace(cfg, isotope_error_rate=float(isotope))
    rng = np.random.default_rng(5)
    for peptide, charge in [("PEPTIDEK", 2), ("LESLIEKPEPTIDEK", 3)]:
        tokens = masses.parse(peptide)
        expected = masses.precursor_mz(tokens, charge) + isotope * 1.003355 / charge
        for _ in range(20):
            spectrum = simulate_spectrum(tokens, charge, rng, cfg, difficulty=1.0)
            error = masses.ppm_error(spectrum.precursor_mz, expected)
            assert abs(error) < 6 * cfg.precursor_tol_ppm


def test_same_seed_same_spectra(cfg):
    first = simulate_batch(PEPTIDES, 20, np.random.default_rng(6), cfg, 0.7)
    second = simulate_batch(PEPTIDES, 20, np.random.default_rng(6), cfg, 0.7)
    other = simulate_batch(PEPTIDES, 20, np.random.default_rng(7), cfg, 0.7)
    for a, b in zip(first, second, strict=True):
        assert a.peptide == b.peptide and a.charge == b.charge
        assert a.precursor_mz == b.precursor_mz
        np.testing.assert_array_equal(a.mz, b.mz)
        np.testing.assert_array_equal(a.intensity, b.intensity)
    assert [s.ref.index for s in first] == list(range(20))
    assert any(a.mz.size != b.mz.size for a, b in zip(first, other, strict=True))


def test_an_unknown_intensity_model_is_refused():
    from peptrm.config import ConfigError

    with pytest.raises(ConfigError, match="intensity_model = 'prosit'"):
        load_config(overrides={"simulation": {"intensity_model": "prosit"}})


@pytest.mark.skipif(not predicted.available(), reason="ms2pip 4.1.2 is not installed")
def test_ms2pip_intensities_replace_the_built_in_ladder(cfg):
    from peptrm.simulate import ladder_intensities

    def agreement(spectra):
        """Mean correlation of observed b/y 1+ peaks with each model's ladder."""
        with_ms2pip, with_built_in = [], []
        for spectrum in spectra:
            tokens = masses.parse(spectrum.peptide)
            b_mz, y_mz = masses.fragment_mz(tokens, 1)  # b1.., y1..
            ions = np.concatenate([b_mz, y_mz])
            near = np.abs(spectrum.mz[None, :] - ions[:, None]) < 0.02
            seen = np.where(near, spectrum.intensity[None, :], 0).max(axis=1)
            b, y = predicted.predict([tokens], spectrum.charge)[0]
            ms2pip = np.concatenate([b, y[::-1]])  # y by ion number
            built_in = np.concatenate(
                ladder_intensities(masses.strip_modifications(tokens))
            )
            with_ms2pip.append(np.corrcoef(seen, ms2pip)[0, 1])
            with_built_in.append(np.corrcoef(seen, built_in)[0, 1])
        return np.mean(with_ms2pip), np.mean(with_built_in)

    ms2pip_cfg = replace(cfg, intensity_model="ms2pip")
    drawn = simulate_batch(PEPTIDES, 12, np.random.default_rng(8), ms2pip_cfg, 0.0)
    again = simulate_batch(PEPTIDES, 12, np.random.default_rng(8), ms2pip_cfg, 0.0)
    for a, b in zip(drawn, again, strict=True):  # reproducible from the seed
        assert (a.peptide, a.charge) == (b.peptide, b.charge)
        np.testing.assert_array_equal(a.intensity, b.intensity)
    built_in = simulate_batch(PEPTIDES, 12, np.random.default_rng(8), cfg, 0.0)
    follows_ms2pip, follows_built_in = agreement(drawn)
    assert follows_ms2pip > follows_built_in + 0.1
    follows_ms2pip, follows_built_in = agreement(built_in)
    assert follows_built_in > follows_ms2pip + 0.1


def test_clean_spectra_cover_more_of_the_ladder(cfg):
    clean = simulate_batch(PEPTIDES, 200, np.random.default_rng(8), cfg, 0.0)
    real = simulate_batch(PEPTIDES, 200, np.random.default_rng(8), cfg, 1.0)
    clean_stats = fragment_statistics(clean, 0.02)
    real_stats = fragment_statistics(real, 0.02)
    assert clean_stats["by1_present"] > 0.8
    assert real_stats["by1_present"] < 0.65
    assert clean_stats["by_peak_fraction"] == 1.0
    assert real_stats["by_peak_fraction"] < 0.3


def test_proline_and_y_ion_effects(cfg):
    with_proline = ["LESLIEKPEPTIDEK", "EGIPPDQQR", "GAMDCQPWLIR", "AVPGLSTDEPSNK"]
    spectra = simulate_batch(with_proline, 400, np.random.default_rng(9), cfg, 1.0)
    stats = fragment_statistics(spectra, 0.02)
    assert stats["proline_effect"] > 2.0  # y ion N-terminal to P is much stronger
    assert stats["y_share"] > 0.6  # y ions dominate HCD spectra of tryptic peptides


def test_ladder_intensities_of_several_peptides_by_cleavage():
    from peptrm.simulate import ladder_intensities, ladder_intensities_by_cleavage

    # by hand, PEK: cleavage 1 (P|E) is Px (x 0.35), cleavage 2 (E|K) is E-x
    # (x 1.05); b = 0.4 x site x (1 - exp(-(3 - k) / 3)), b1 x 0.01, b2 x 2.5;
    # y by cleavage = 1.0 x site x (1 - exp(-k / 3)), y1 (K, cleavage 2) x 2
    b, y = ladder_intensities("PEK")
    assert b == pytest.approx(
        [0.4 * 0.35 * 0.486583 * 0.01, 0.4 * 1.05 * 0.283469 * 2.5], rel=1e-5
    )
    assert y == pytest.approx([1.05 * 0.486583 * 2.0, 0.35 * 0.283469], rel=1e-5)
    # rows of any length read as each peptide alone, y by cleavage, 0 past the end
    peptides = ["PEK", "LESLIEKPEPTIDEK", "AP", "EGIPPDQQR"]
    many_b, many_y = ladder_intensities_by_cleavage(peptides)
    assert many_b.shape == many_y.shape == (4, 14)
    for row, peptide in enumerate(peptides):
        b, y = ladder_intensities(peptide)
        n = len(peptide) - 1
        assert np.array_equal(many_b[row, :n], b)
        assert np.array_equal(many_y[row, :n], y[::-1])
        assert not many_b[row, n:].any() and not many_y[row, n:].any()


def test_fragment_statistics_of_hand_made_spectrum():
    b, y = masses.fragment_mz("PEPTIDE", 1)
    assert b[1] == pytest.approx(227.10263, abs=1e-5)
    mz = np.sort(np.concatenate([b, y, [500.0]]))
    intensity = np.where(mz == 500.0, 2.0, 1.0).astype(np.float32)
    spectrum = Spectrum(SpectrumRef("x.mgf", 0), mz, intensity, 400.68726, 1, "PEPTIDE")
    stats = fragment_statistics([spectrum], 0.02)
    assert stats["by1_present"] == 1.0
    assert stats["by_peak_fraction"] == pytest.approx(12 / 13)
    assert stats["by_intensity_fraction"] == pytest.approx(12 / 14)
    assert stats["y_share"] == pytest.approx(0.5)


def _real_spectra(name: str, limit: int | None = None) -> list[Spectrum]:
    """The first `limit` (all) labelled spectra of a shared training MGF."""
    path = DATA / "train" / name
    with mgf.read(str(path), use_index=False) as reader:
        return [
            Spectrum(
                SpectrumRef(str(path), index),
                entry["m/z array"],
                entry["intensity array"].astype(np.float32),
                float(entry["params"]["pepmass"][0]),
                int(entry["params"]["charge"][0]),
                entry["params"]["seq"],
            )
            for index, entry in enumerate(islice(reader, limit))
        ]


@pytest.mark.skipif(not (DATA / "train").is_dir(), reason="shared data absent")
def test_real_spectra_statistics_resemble_simulation(cfg):
    real = _real_spectra("pepnet_nist_synthetic_example.mgf", limit=200)
    rng = np.random.default_rng(10)
    simulated = [
        simulate_spectrum(masses.parse(s.peptide), s.charge, rng, cfg, 1.0)
        for s in real
    ]
    real_stats = fragment_statistics(real, 0.02)
    simulated_stats = fragment_statistics(simulated, 0.02)
    for key, tol in [("by_peak_fraction", 0.06), ("by_intensity_fraction", 0.1)]:
        assert simulated_stats[key] == pytest.approx(real_stats[key], abs=tol)
    assert real_stats["y_share"] > 0.6 and simulated_stats["y_share"] > 0.6
    assert real_stats["proline_effect"] > 2 and simulated_stats["proline_effect"] > 2


FADE = [0.5, 0.7]  # simulation.high_charge_fade of argmax_nsup8_fade.yaml


def test_high_charge_fade_moves_long_fragments_from_1_to_2_plus(cfg):
    tokens = masses.parse("TITLEVEPSDTIENVKAK")  # 18 residues
    n = len(tokens)
    b1, y1 = masses.fragment_mz(tokens, 1)  # b1.., y1..
    b2, y2 = masses.fragment_mz(tokens, 2)
    share = np.concatenate([np.arange(1, n), np.arange(1, n)]) / n
    single, double = np.concatenate([b1, y1]), np.concatenate([b2, y2])

    def seen(spectra, ions):  # (spectra, ions): a peak within 0.005 Th
        return np.array(
            [
                (np.abs(s.mz[None, :] - ions[:, None]) < 0.005).any(axis=1)
                for s in spectra
            ]
        )

    faded = replace(cfg, high_charge_fade=FADE)
    draws = {}
    for name, settings in (("off", cfg), ("fade", faded)):
        rng = np.random.default_rng(11)
        draws[name] = [
            simulate_spectrum(tokens, 3, rng, settings, 0.0) for _ in range(60)
        ]
    long, short = share >= FADE[1], share <= FADE[0]
    assert seen(draws["off"], single[long]).mean() > 0.3  # kept 1+ before
    assert not seen(draws["fade"], single[long]).any()  # wholly 2+ now
    doubly = [seen(draws[name], double[long]).mean() for name in ("off", "fade")]
    assert doubly[1] > doubly[0] + 0.1  # 0.31 -> 0.45: the 2+ ions gain what 1+ lost
    assert seen(draws["fade"], single[short]).mean() > 0.8  # short ones stay 1+
    rng_off, rng_fade = np.random.default_rng(12), np.random.default_rng(12)
    for _ in range(5):  # below charge 3 nothing moves, to the bit
        a = simulate_spectrum(tokens, 2, rng_off, cfg, 1.0)
        b = simulate_spectrum(tokens, 2, rng_fade, faded, 1.0)
        np.testing.assert_array_equal(a.mz, b.mz)
        np.testing.assert_array_equal(a.intensity, b.intensity)


@pytest.mark.parametrize("fade", [[0.7, 0.5], [0.5], [0.5, 1.5]])
def test_a_high_charge_fade_out_of_order_or_range_is_refused(fade):
    from peptrm.config import ConfigError

    with pytest.raises(ConfigError, match="high_charge_fade"):
        load_config(overrides={"simulation": {"high_charge_fade": fade}})


@pytest.mark.skipif(not (DATA / "train").is_dir(), reason="shared data absent")
def test_the_fade_brings_charge_3_long_fragments_near_real_ones(cfg):
    """Real charge-3 spectra (ProteomeTools) show few long 1+ fragments, as the fade."""
    real = [
        s for s in _real_spectra("proteometools_kuester_cluster.mgf") if s.charge == 3
    ]

    def long_present(settings):
        rng = np.random.default_rng(13)
        spectra = [
            simulate_spectrum(masses.parse(s.peptide), 3, rng, settings, 1.0)
            for s in real
        ]
        return fragment_statistics(spectra, 0.02)["long_present"]

    observed = fragment_statistics(real, 0.02)["long_present"]
    assert len(real) > 50 and observed < 0.2
    off, faded = long_present(cfg), long_present(replace(cfg, high_charge_fade=FADE))
    assert abs(faded - observed) < 0.1 < abs(off - observed)


def _tokens(peptide):
    return masses.encode(peptide, 32)


def _mass(tokens):
    return float(masses.VOCAB_MASSES[tokens].sum())


def test_draft_errors_without_errors_is_the_peptide():
    rng = np.random.default_rng(0)
    tokens = _tokens("LVNELTEFAK")
    assert np.array_equal(draft_errors(tokens, rng, 0.0), tokens)


def test_draft_errors_make_each_kind_of_search_mistake():
    """Near-mass residues and swaps keep the mass within 1.1 Da, N <-> GG
    exchanges change the length but not the mass, random substitutions change
    the mass; an N-terminal mod is never touched."""
    rng = np.random.default_rng(1)
    tokens = _tokens("+42.011NGGAKQWEPFK")
    mass = _mass(tokens)
    kinds = {"same": 0, "near": 0, "far": 0, "length": 0}
    for _ in range(400):
        draft = draft_errors(tokens, rng, 1.0)
        assert draft[0] == tokens[0] and draft.shape == tokens.shape
        n_draft = int((draft != 0).sum())
        if np.array_equal(draft, tokens):
            kinds["same"] += 1
        elif n_draft != int((tokens != 0).sum()):
            # N = GG, Q = GA, W = SV, ... (unless another error joined it)
            kinds["length"] += abs(_mass(draft) - mass) < 0.05
        elif abs(_mass(draft) - mass) < 1.1:
            kinds["near"] += 1
        else:
            kinds["far"] += 1
    # Poisson(1): ~37 % right drafts; every kind of mistake is made
    assert 100 < kinds["same"] < 200 and min(kinds.values()) > 20, kinds


def test_infill_mask_blanks_one_stretch_between_known_ends_or_to_the_end():
    """Every mask leaves exactly one blank run inside the peptide; in about half
    the length (the STOP padding) stays given, in the rest it is blank too."""
    rng = np.random.default_rng(3)
    tokens = _tokens("LVNELTEFAK")  # 10 residues, padded with STOP
    n = int((tokens != masses.STOP_INDEX).sum())
    to_end = 0
    sizes = set()
    for _ in range(400):
        given = infill_mask(tokens, rng)
        assert given.shape == tokens.shape and given.dtype == bool
        blank = np.flatnonzero(~given)
        assert blank.size and np.all(np.diff(blank) == 1)  # one contiguous run
        assert blank[0] < n  # it starts inside the peptide
        if blank[-1] == len(tokens) - 1:
            to_end += 1
        else:
            assert given[n:].all()  # between known ends: the length is given
            sizes.add(blank.size)
    assert 150 < to_end < 250
    assert sizes == set(range(1, n + 1))


def test_near_mass_and_pair_tables_hold_the_usual_confusions():
    index = masses.TOKEN_INDEX
    assert index["Q"] in NEAR_MASS[index["K"]]
    assert index["M+15.995"] in NEAR_MASS[index["F"]]
    assert (index["G"], index["G"]) in PAIR_SWAPS[index["N"]]
    assert PAIR_OF[(index["G"], index["G"])] == index["N"]
