import numpy as np
import pytest

from peptrm import confidence, evaluate, masses
from peptrm.decoding import Candidate
from peptrm.evidence import FragmentEvidence


def candidate(peptide: str, p: float, constrained: bool = True) -> Candidate:
    tokens = masses.parse(peptide)
    return Candidate(
        tokens=tokens,
        indices=[masses.TOKEN_INDEX[t] for t in tokens],
        log_score=float(len(tokens) * np.log(p)),
        score=p,
        aa_scores=[p] * len(tokens),
        mass=masses.peptide_mass(tokens),
        isotope=0,
        mass_error_ppm=0.0,
        constrained=constrained,
    )


def peaks_of(peptide: str, share: float, rng) -> FragmentEvidence:
    """b/y ions of the peptide, each kept with probability `share`, plus noise."""
    tokens = masses.parse(peptide)
    b, y = masses.fragment_mz(tokens, 1)
    ions = np.concatenate([b[:-1], y[:-1]])
    kept = ions[rng.random(len(ions)) < share]
    mz = np.concatenate([kept, rng.uniform(100, 900, 20)])
    return FragmentEvidence(
        mz, rng.uniform(0.2, 1.0, len(mz)), masses.peptide_mass(tokens), 2, 0.02
    )


def test_cleavages_skip_the_boundary_after_an_n_terminal_modification():
    rng = np.random.default_rng(0)
    plain = confidence.cleavage_evidence(candidate("PEPTLDEK", 0.5), None)
    assert plain.shape == (7,) and np.all(plain == 0)
    evidence = peaks_of("+42.011PEPTLDEK", 1.0, rng)
    acetyl = confidence.cleavage_evidence(candidate("+42.011PEPTLDEK", 0.5), evidence)
    assert acetyl.shape == (8,) and np.isnan(acetyl[0])
    assert np.all(acetyl[1:] > 0)  # every residue boundary has both its ions


def test_fit_learns_that_explained_spectra_are_right_and_calibrates(tmp_path):
    """Right peptides come with their ion ladders, wrong ones with another
    peptide's; the model's own score says nothing. The fitted scores must rank
    right first and match the observed accuracy better than the raw scores."""
    rng = np.random.default_rng(1)
    pool = ["PEPTLDEK", "LVNELTEFAK", "AEFVEVTK", "YLYELAR", "GLVLLAFSQYLQK"]
    candidates, peaks, labels = [], [], []
    for i in range(300):
        truth = pool[i % len(pool)]
        right = rng.random() < 0.4
        called = truth if right else pool[(i + 1) % len(pool)]
        candidates.append(candidate(called, float(rng.uniform(0.3, 0.9))))
        peaks.append(peaks_of(truth, 0.7, rng))
        labels.append(truth)
    fitted = confidence.fit(candidates, peaks, labels, "test")
    pairs = zip(candidates, peaks, strict=True)
    scores = np.array([fitted.apply(c, p)[0] for c, p in pairs])
    raw = np.array([c.score for c in candidates])
    pairs = zip(candidates, labels, strict=True)
    correct = np.array([c.tokens == masses.parse(t) for c, t in pairs])
    assert scores[correct].min() > np.median(scores[~correct])
    ece = evaluate.expected_calibration_error
    assert ece(scores, correct) < 0.1 < ece(raw, correct)
    # the residue model gives per-token probabilities, higher on right tokens
    _, residues = fitted.apply(candidates[0], peaks[0])
    assert len(residues) == len(candidates[0].tokens)
    assert all(0 < p < 1 for p in residues)
    # and the file round-trips
    fitted.save(tmp_path)
    loaded = confidence.load_calibration(tmp_path)
    assert np.allclose(loaded.peptide, fitted.peptide)
    assert np.allclose(loaded.residue, fitted.residue)
    assert loaded.fitted_on == "test"
    assert confidence.load_calibration(tmp_path / "none") is None


def test_a_broken_calibration_file_is_named(tmp_path):
    (tmp_path / confidence.CALIBRATION_NAME).write_text("peptide: {bias: 1}\n")
    with pytest.raises(ValueError, match="not a PepTRM calibration"):
        confidence.load_calibration(tmp_path)


def test_q_values_are_the_lowest_fdr_of_any_threshold_that_accepts():
    # sorted: 0.9, 0.8, 0.8, 0.2 -> FDR 0.1, (0.1+0.2)/2 = 0.15 at the first 0.8
    # but a threshold takes both 0.8s: (0.1+0.2+0.2)/3 = 0.1667; then 2.3/4 = 0.325
    q = confidence.q_values(np.array([0.8, 0.9, np.nan, 0.2, 0.8]))
    assert q[1] == pytest.approx(0.1)
    assert q[0] == pytest.approx(0.5 / 3) and q[4] == pytest.approx(0.5 / 3)
    assert q[3] == pytest.approx(2.3 / 4) and np.isnan(q[2])
    # a weaker peptide never has a lower q-value than a stronger one
    p = np.random.default_rng(0).random(200)
    q = confidence.q_values(p)
    order = np.argsort(-p)
    assert np.all(np.diff(q[order]) >= -1e-12)
