import numpy as np
import pytest

from peptrm import masses
from peptrm.evidence import FragmentEvidence

PEPTIDE = ["P", "E", "P", "T", "L", "D", "E", "K"]


def ladder_evidence(charge: int = 2, tol: float = 0.02) -> FragmentEvidence:
    """Peaks at b3 (intensity 1.0) and y5 (0.25) of PEPTLDEK, plus one noise peak."""
    b, y = masses.fragment_mz(PEPTIDE, 1)
    mz = np.array([b[2], y[4], 433.7])
    return FragmentEvidence(
        mz, np.array([4.0, 1.0, 2.0]), masses.peptide_mass(PEPTIDE), charge, tol
    )


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
