import numpy as np
import pytest

from peptrm import masses
from peptrm.evidence import (
    BIAS,
    GRID_DA,
    N_STATES,
    SCALE,
    TABLE_IONS,
    CleavageTable,
    FragmentEvidence,
    fit_table,
    label_cleavages,
    load_table,
    measured_coarser,
)

PEPTIDE = ["P", "E", "P", "T", "L", "D", "E", "K"]


def ladder_evidence(
    charge: int = 2, tol: float = 0.02, table: CleavageTable | None = None
) -> FragmentEvidence:
    """Peaks at b3 (intensity 1.0) and y5 (0.25) of PEPTLDEK, plus one noise peak."""
    b, y = masses.fragment_mz(PEPTIDE, 1)
    mz = np.array([b[2], y[4], 433.7])
    mass = masses.peptide_mass(PEPTIDE)
    return FragmentEvidence(mz, np.array([4.0, 1.0, 2.0]), mass, charge, tol, table)


def test_a_cleavage_with_both_ions_scores_both_intensities():
    evidence = ladder_evidence()
    prefix = sum(float(masses.VOCAB_MASSES[masses.TOKEN_INDEX[t]]) for t in PEPTIDE[:3])
    # b3 at the base peak (1 + 1.0) plus y5 at a quarter of it (1 + 0.25), less 1
    assert evidence.score(np.array([prefix]))[0] == pytest.approx(2.25)
    # 0.015 Da off is within the 0.02 Da tolerance; 0.03 Da off is not
    assert evidence.score(np.array([prefix + 0.015]))[0] == pytest.approx(2.25)
    assert evidence.score(np.array([prefix + 0.03]))[0] == pytest.approx(-1.0)
    # one residue further: neither ion of PEPT|LDEK is in the spectrum
    prefix4 = prefix + float(masses.VOCAB_MASSES[masses.TOKEN_INDEX["T"]])
    assert evidence.score(np.array([prefix4]))[0] == pytest.approx(-1.0)


def test_doubly_charged_ions_count_only_from_charge_three():
    b, _ = masses.fragment_mz(PEPTIDE, 2)
    mz = np.array([b[3]])  # b4++ only
    prefix = sum(float(masses.VOCAB_MASSES[masses.TOKEN_INDEX[t]]) for t in PEPTIDE[:4])
    mass = masses.peptide_mass(PEPTIDE)
    two = FragmentEvidence(mz, np.array([1.0]), mass, 2, 0.02)
    three = FragmentEvidence(mz, np.array([1.0]), mass, 3, 0.02)
    assert two.score(np.array([prefix]))[0] == pytest.approx(-1.0)
    assert three.score(np.array([prefix]))[0] == pytest.approx(1.0)


def test_window_bounds_never_fall_below_the_exact_score():
    rng = np.random.default_rng(0)
    mz = np.sort(rng.uniform(100, 1500, size=80))
    evidence = FragmentEvidence(mz, rng.uniform(0, 1, 80), 1800.0, 3, 0.05)
    lo = rng.uniform(-5, 1800, size=500)
    width = rng.uniform(0.0, 2.5, size=500)  # windows of different widths
    bound = evidence.window_bounds(lo, lo + width)
    inside = lo[:, None] + width[:, None] * np.linspace(0, 1, 400)[None, :]
    exact = evidence.score(inside.ravel()).reshape(inside.shape).max(axis=1)
    assert np.all(bound >= exact - 1e-12)
    assert (exact > -1).mean() > 0.05  # the test covers windows with peaks in them


def test_spectrum_without_peaks_scores_every_cleavage_minus_one():
    evidence = FragmentEvidence(np.zeros(5), np.zeros(5), 900.0, 2, 0.05)
    assert np.all(evidence.score(np.array([100.0, 350.2])) == -1.0)


def _table(present: float = 4.0, absent: float = -1.0) -> CleavageTable:
    """Every ion type: `absent` with no peak, `present` + bin for rank bin 1..4."""
    log_odds = np.zeros((2, len(TABLE_IONS), N_STATES))
    log_odds[:, :, 0] = absent
    log_odds[:, :, 1:] = present + np.arange(N_STATES - 1)[::-1]  # top ranks best
    return CleavageTable(log_odds, 0.02, "hand-made", scale=0.5, bias=-0.25)


def test_learned_score_sums_each_ion_types_log_odds():
    evidence = ladder_evidence(table=_table())  # b3 is the base peak, y5 ranks third
    prefix = sum(float(masses.VOCAB_MASSES[masses.TOKEN_INDEX[t]]) for t in PEPTIDE[:3])
    # b3 (rank 0, bin 1: 4 + 3 = 7) and y5 (rank 2, bin 1: 7); b++ and y++ absent
    # (-1 each): 0.5 * (7 + 7 - 1 - 1) - 0.25 = 5.75
    assert evidence.score(np.array([prefix]))[0] == pytest.approx(5.75)
    # no ion at all: 0.5 * 4 * (-1) - 0.25
    assert evidence.score(np.array([prefix + 1.5]))[0] == pytest.approx(-2.25)


def test_learned_window_bounds_never_fall_below_the_exact_score():
    rng = np.random.default_rng(1)
    mz = np.sort(rng.uniform(100, 1500, size=80))
    table = _table()
    table.log_odds[1, :, 2] = -3.0  # a state scoring below "absent" must not leak
    evidence = FragmentEvidence(mz, rng.uniform(0, 1, 80), 1800.0, 3, 0.05, table)
    lo = rng.uniform(-5, 1800, size=500)
    width = rng.uniform(0.0, 2.5, size=500)
    bound = evidence.window_bounds(lo, lo + width)
    inside = lo[:, None] + width[:, None] * np.linspace(0, 1, 400)[None, :]
    exact = evidence.score(inside.ravel()).reshape(inside.shape).max(axis=1)
    assert np.all(bound >= exact - 1e-12)
    assert (exact > -2.25).mean() > 0.05


def _learned_grid_by_numpy(evidence: FragmentEvidence, n_cells: int) -> np.ndarray:
    """The learned grid the plain way: per ion type, its no-peak log-odds raised
    over every cell a peak's match touches (`_raise_cells`), summed in order."""
    total = np.zeros(n_cells)
    for i, ion in enumerate(TABLE_IONS):
        best = np.full(n_cells, evidence.log_odds[i, 0])
        evidence._raise_cells(best, ion, evidence.log_odds[i, evidence.state[:, i]])
        total += best
    return evidence.scale * total + evidence.bias


def test_compiled_learned_grid_equals_the_plain_sum_to_the_bit(small_mgf):
    from peptrm.io import Spectrum, read_spectra

    def neutral(spectrum: Spectrum) -> float:
        return masses.mz_to_mass(spectrum.precursor_mz, spectrum.charge)

    table = _table()
    table.log_odds[1, :, 2] = -3.0  # a state below "absent": the max must keep absent
    rng = np.random.default_rng(2)
    cases = [
        FragmentEvidence(s.mz, s.intensity, neutral(s), s.charge, 0.02, table)
        for s in read_spectra(small_mgf)
        if isinstance(s, Spectrum)
    ]
    # peaks whose matches reach below 0 Da and past the precursor: clipped cells
    mz = np.sort(np.concatenate([rng.uniform(0.5, 30, 5), rng.uniform(100, 1900, 40)]))
    cases.append(FragmentEvidence(mz, rng.uniform(0, 1, 45), 1200.0, 3, 0.05, table))
    for evidence in cases:
        n_cells = int(np.ceil(evidence.precursor_mass / GRID_DA)) + 2
        grid = evidence.grid(n_cells)
        assert np.array_equal(grid, _learned_grid_by_numpy(evidence, n_cells))
        assert (grid > grid.min()).sum() > 100  # peaks raised some cells


def test_fitted_table_favours_matched_b_and_y_and_round_trips(tmp_path, small_mgf):
    from peptrm import preprocess
    from peptrm.config import load_config
    from peptrm.io import Spectrum, read_spectra

    prepare = preprocess.pipeline(load_config().preprocess)
    spectra = [prepare(s) for s in read_spectra(small_mgf) if isinstance(s, Spectrum)]
    table = fit_table(spectra, 0.02, fitted_on="small.mgf")
    b, y = TABLE_IONS.index(("b", "b", 1, 0.0)), TABLE_IONS.index(("y", "y", 1, 0.0))
    for ion in (b, y):  # charge <= 2 and >= 3 both occur in small.mgf
        for charge_class in (0, 1):
            odds = table.log_odds[charge_class, ion]
            assert odds[0] < 0 < odds[1]  # no peak counts against; a top peak for
    # every charge is counted together: both classes hold the same log-odds
    np.testing.assert_array_equal(table.log_odds[0], table.log_odds[1])
    table.save(tmp_path)
    loaded = load_table(tmp_path)
    np.testing.assert_allclose(loaded.log_odds, table.log_odds, atol=1e-5)
    assert (loaded.scale, loaded.bias, loaded.fitted_on) == (SCALE, BIAS, "small.mgf")
    assert load_table(tmp_path / "nowhere") is None


def test_a_spectrum_measured_coarser_than_the_tolerance_is_told_apart(small_mgf):
    """PEPTLDEK's ladder at Orbitrap accuracy (a few mDa off) is fine at 0.01 Da;
    the same ladder at ion-trap accuracy (0.1-0.3 Da off) is coarser; too few
    ions near any peak give no verdict. small.mgf's HCD spectra are all fine."""
    from peptrm.io import Spectrum, read_spectra

    mass = masses.peptide_mass(PEPTIDE)
    prefix = label_cleavages(PEPTIDE)
    b, y = masses.fragment_mz(PEPTIDE, 1)
    ladder = np.concatenate([b, y])
    rng = np.random.default_rng(0)
    orbitrap = ladder + rng.uniform(-0.004, 0.004, len(ladder))
    ion_trap = ladder + rng.choice([-1, 1], len(ladder)) * rng.uniform(
        0.1, 0.3, len(ladder)
    )
    assert not measured_coarser(orbitrap, prefix, mass, 0.01)
    assert measured_coarser(ion_trap, prefix, mass, 0.01)
    assert not measured_coarser(ion_trap, prefix, mass, 0.5)  # fine at its own
    assert not measured_coarser(ion_trap[:2], prefix, mass, 0.01)  # 2 ions: no verdict
    assert not measured_coarser(np.zeros(0), prefix, mass, 0.01)
    spectra = [s for s in read_spectra(small_mgf) if isinstance(s, Spectrum)]
    for s in spectra:
        precursor = masses.mz_to_mass(s.precursor_mz, s.charge)
        assert not measured_coarser(s.mz, label_cleavages(s.peptide), precursor, 0.01)


def test_the_table_does_not_learn_from_spectra_measured_coarser(small_mgf):
    """Copies of small.mgf's spectra with every peak moved 0.2 Da change nothing:
    the table fitted with them is the table fitted without."""
    import dataclasses

    from peptrm import preprocess
    from peptrm.config import load_config
    from peptrm.io import Spectrum, read_spectra

    prepare = preprocess.pipeline(load_config().preprocess)
    spectra = [prepare(s) for s in read_spectra(small_mgf) if isinstance(s, Spectrum)]
    coarse = [dataclasses.replace(s, mz=s.mz + 0.2) for s in spectra]
    alone = fit_table(spectra, 0.01)
    np.testing.assert_array_equal(
        fit_table(spectra + coarse, 0.01).log_odds, alone.log_odds
    )
    with pytest.raises(ValueError, match="decoding.fragment_tol_da to ~0.5"):
        fit_table(coarse, 0.01)  # nothing left to fit on: say why
    # at a tolerance that takes them in they count: the table changes
    wide = fit_table(spectra + coarse, 0.3)
    assert not np.array_equal(wide.log_odds, fit_table(spectra, 0.3).log_odds)


@pytest.mark.parametrize("learned", [False, True])
def test_score_read_from_its_steps_equals_the_exact_score(small_mgf, learned):
    """On the test spectra, at random masses and on and beside every step edge."""
    from peptrm import preprocess
    from peptrm.config import load_config
    from peptrm.io import Spectrum, read_spectra
    from peptrm.weights import BUNDLED

    prepare = preprocess.pipeline(load_config().preprocess)
    table = load_table(BUNDLED) if learned else None
    rng = np.random.default_rng(2)
    for spectrum in read_spectra(small_mgf):
        if not isinstance(spectrum, Spectrum):
            continue
        spectrum = prepare(spectrum)
        mass = masses.mz_to_mass(spectrum.precursor_mz, spectrum.charge)
        # the bundled table reads a peak annotator's chances: random ones here
        chances = rng.uniform(0, 1, (len(spectrum.mz), len(TABLE_IONS)))
        peaks = FragmentEvidence(
            spectrum.mz, spectrum.intensity, mass, spectrum.charge, 0.01, table,
            chances,
        )  # fmt: skip
        edges = peaks._step_function()[0][1:-1]
        assert len(edges) > 4 * len(peaks.mz)  # 3 per peak and ion, some shared
        prefix = np.concatenate(
            [
                rng.uniform(-5, mass + 5, 5000),
                edges,
                np.nextafter(edges, np.inf),
                np.nextafter(edges, -np.inf),
                edges + 2e-9,
            ]
        )
        assert np.array_equal(peaks.score(prefix), peaks.exact_score(prefix))


def test_annotated_peaks_take_their_state_per_ion_type_from_the_annotator():
    from peptrm.evidence import CHANCE_EDGES

    b, y = masses.fragment_mz(PEPTIDE, 1)
    mz = np.array([y[4], b[2], 433.7])  # unsorted: chances follow the peaks
    chances = np.array(
        [[0.05, 0.9, 0.0, 0.2], [0.7, 0.01, 0.35, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    mass = masses.peptide_mass(PEPTIDE)
    peaks = FragmentEvidence(mz, np.ones(3), mass, 2, 0.02, ion_chances=chances)
    expected = 1 + np.searchsorted(CHANCE_EDGES, chances[[1, 2, 0]], side="right")
    np.testing.assert_array_equal(peaks.state, expected)  # sorted by m/z: b3, noise, y5
    prefix = sum(float(masses.VOCAB_MASSES[masses.TOKEN_INDEX[t]]) for t in PEPTIDE[:3])
    # after PEP: b3 matches as a b (chance 0.7: state 4), y5 as a y (0.9: state 4)
    assert peaks.states(np.array([prefix]))[:, 0].tolist() == [4, 4, 0, 0]
    annotation_table = CleavageTable(
        np.zeros((2, len(TABLE_IONS), N_STATES)), 0.02, peak_states="annotation"
    )
    with pytest.raises(ValueError, match="annotator"):
        FragmentEvidence(mz, np.ones(3), mass, 2, 0.02, annotation_table)


def test_a_table_fitted_on_annotated_peaks_says_so_and_needs_them(tmp_path, small_mgf):
    from peptrm import preprocess
    from peptrm.config import load_config
    from peptrm.io import Spectrum, read_spectra

    prepare = preprocess.pipeline(load_config().preprocess)
    spectra = [prepare(s) for s in read_spectra(small_mgf) if isinstance(s, Spectrum)]
    # an "annotator" that calls every peak above a fifth of the base peak a b ion
    peaks = []
    for s in spectra:
        mass = masses.mz_to_mass(s.precursor_mz, s.charge)
        chance = np.zeros((len(s.mz), len(TABLE_IONS)))
        chance[:, 0] = s.intensity / s.intensity.max() > 0.2
        peaks.append(
            FragmentEvidence(s.mz, s.intensity, mass, s.charge, 0.02, None, chance)
        )
    table = fit_table(spectra, 0.02, peaks=peaks)
    assert table.peak_states == "annotation"
    b = TABLE_IONS.index(("b", "b", 1, 0.0))
    odds = table.log_odds[0, b]
    assert odds[4] > odds[1]  # a peak called a b ion counts more than one called none
    table.save(tmp_path)
    assert load_table(tmp_path).peak_states == "annotation"
    with pytest.raises(ValueError, match="annotator"):
        FragmentEvidence(spectra[0].mz, spectra[0].intensity, 1000.0, 2, 0.02, table)
