import dataclasses
import math

import numpy as np
import pytest

from peptrm import masses, predicted, preprocess, rerank
from peptrm.decoding import Candidate
from peptrm.evidence import FragmentEvidence


def candidate(peptide: str, search_score: float, isotope: int = 0) -> Candidate:
    tokens = masses.parse(peptide)
    return Candidate(
        tokens=tokens,
        indices=[masses.TOKEN_INDEX[t] for t in tokens],
        log_score=-float(len(tokens)),
        score=0.5,
        aa_scores=[0.5] * len(tokens),
        mass=masses.peptide_mass(tokens),
        isotope=isotope,
        mass_error_ppm=1.5,
        constrained=True,
        search_score=search_score,
    )


def spectrum_of(peptide: str, isotope: int = 0) -> FragmentEvidence:
    """Every b and y 1+ ion of the peptide (b at intensity 0.5, y at 1), no noise."""
    b, y = masses.fragment_mz(masses.parse(peptide), 1)  # b1..b(n-1), y1..y(n-1)
    mz = np.concatenate([b, y])
    intensity = np.concatenate([np.full(len(b), 0.5), np.ones(len(y))])
    precursor = masses.peptide_mass(peptide) + isotope * masses.C13_SPACING
    return FragmentEvidence(mz, intensity, precursor, 2, 0.01)


def test_features_of_the_true_peptide_show_its_whole_ladder():
    peaks = spectrum_of("PEPTLDEK")
    right, wrong = candidate("PEPTLDEK", -5.0), candidate("EPPTLDEK", -6.0)
    x = rerank.candidate_features([right, wrong], peaks, 2)
    f = dict(zip(rerank.FEATURES, x[0], strict=True))
    assert f["b_share"] == 1 and f["y_share"] == 1 and f["b_and_y_share"] == 1
    assert f["longest_run"] == 7 and f["longest_run_share"] == 1
    assert f["explained_intensity"] == pytest.approx(1.0)
    assert f["search_rank"] == 0 and f["margin_next"] == pytest.approx(1.0)
    assert f["tryptic"] == 1 and f["missed_cleavages"] == 0 and f["length"] == 8
    g = dict(zip(rerank.FEATURES, x[1], strict=True))
    # EPPTLDEK vs PEPTLDEK: only the first cleavage moves (b1 E 130.05 vs P
    # 98.06; y7 PPTLDEK vs EPTLDEK), so 6 of 7 b and 6 of 7 y ions still match
    assert g["b_share"] == pytest.approx(6 / 7) and g["y_share"] == pytest.approx(6 / 7)
    assert g["gap_best"] == pytest.approx(1.0) and g["search_rank"] == 1


def test_annotated_share_is_the_annotators_ion_chance_a_candidate_explains():
    # PEPTLDEK's 14 b/y peaks, each annotated 0.9 likely a ladder ion (as b for
    # the b peaks, as y for the y), plus two noise peaks annotated 0.1 and 0.3
    b, y = masses.fragment_mz(masses.parse("PEPTLDEK"), 1)
    mz = np.concatenate([b, y, [333.3, 444.4]])
    intensity = np.ones(len(mz))
    chances = np.zeros((len(mz), len(masses.LADDER_IONS)))
    chances[: len(b), 0] = 0.9  # b
    chances[len(b) : len(b) + len(y), 1] = 0.9  # y
    chances[-2:, 2] = [0.1, 0.3]  # noise peaks: small chances as b++
    peaks = FragmentEvidence(
        mz, intensity, masses.peptide_mass("PEPTLDEK"), 2, 0.01, ion_chances=chances
    )
    right, wrong = candidate("PEPTLDEK", -5.0), candidate("EPPTLDEK", -6.0)
    x = rerank.candidate_features([right, wrong], peaks, 2)
    f, g = (dict(zip(rerank.FEATURES, row, strict=True)) for row in x)
    total = 14 * 0.9 + 0.1 + 0.3
    assert f["annotated_explained"] == pytest.approx(14 * 0.9 / total)
    assert f["annotated_missed"] == pytest.approx(0.4)
    # EPPTLDEK misses b1 and y7 (see above): two sure peaks left over
    assert g["annotated_explained"] == pytest.approx(12 * 0.9 / total)
    assert g["annotated_missed"] == pytest.approx(0.4 + 2 * 0.9)
    assert g["annotated_explained_gap"] == pytest.approx(2 * 0.9 / total)
    # without an annotator the features are unknown, not zero
    plain = rerank.candidate_features([right], spectrum_of("PEPTLDEK"), 2)
    h = dict(zip(rerank.FEATURES, plain[0], strict=True))
    assert math.isnan(h["annotated_explained"]) and math.isnan(h["annotated_missed"])


def test_residues_no_ion_orders_are_counted_as_unordered():
    # PEPTLDEK without the ions of cleavage 1 (b1, y7) and cleavage 4 (b4, y4):
    # P/E and T/L could each be swapped, so 4 of its 8 residues are unordered
    b, y = masses.fragment_mz(masses.parse("PEPTLDEK"), 1)
    keep = [1, 2, 4, 5, 6]  # cleavages 2, 3, 5, 6, 7 (0-based b index)
    mz = np.sort(np.concatenate([b[keep], y[[6 - i for i in keep]]]))
    peaks = FragmentEvidence(
        mz, np.ones(len(mz)), masses.peptide_mass("PEPTLDEK"), 2, 0.01
    )
    x = rerank.candidate_features([candidate("PEPTLDEK", 0.0)], peaks, 2)
    f = dict(zip(rerank.FEATURES, x[0], strict=True))
    assert f["first_cleavage_seen"] == 0 and f["last_cleavage_seen"] == 1
    assert f["longest_gap"] == 1 and f["unordered_share"] == pytest.approx(4 / 8)
    full = rerank.candidate_features(
        [candidate("PEPTLDEK", 0.0)], spectrum_of("PEPTLDEK"), 2
    )
    g = dict(zip(rerank.FEATURES, full[0], strict=True))
    assert g["first_cleavage_seen"] == 1 and g["longest_gap"] == 0
    assert g["unordered_share"] == 0


def test_y_ions_are_placed_from_the_precursor_less_the_isotope_error():
    peaks = spectrum_of("PEPTLDEK", isotope=1)  # precursor picked at its 13C peak
    as_if_monoisotopic = rerank.candidate_features(
        [candidate("PEPTLDEK", 0.0, isotope=0)], peaks, 2
    )
    with_isotope = rerank.candidate_features(
        [candidate("PEPTLDEK", 0.0, isotope=1)], peaks, 2
    )
    y = rerank.FEATURES.index("y_share")
    assert as_if_monoisotopic[0, y] == 0 and with_isotope[0, y] == 1


def test_cosine_gap_is_to_the_best_candidate_and_nan_stays_nan():
    gaps = rerank._gap(np.array([0.5, 0.9, np.nan]))
    assert gaps[0] == pytest.approx(0.4) and gaps[1] == 0 and math.isnan(gaps[2])
    assert np.isnan(rerank._gap(np.array([np.nan, np.nan]))).all()


def test_fitted_reranker_puts_the_supported_peptide_first_and_keeps_the_tail(tmp_path):
    rng = np.random.default_rng(0)
    peptides = ["PEPTLDEK", "LGEYGFQNALLVR", "AEFVEVTK", "YLYELAR", "HLVDEPQNLLK"]
    groups, peaks, labels = [], [], []
    for i in range(60):
        truth = peptides[i % len(peptides)]
        shuffled = truth[0] + "".join(rng.permutation(list(truth[1:-1]))) + truth[-1]
        decoys = [shuffled, truth[1:-1] + truth[0] + truth[-1]]
        order = decoys + [truth] if i % 2 else [decoys[0], truth, decoys[1]]
        options = [candidate(p, -float(k)) for k, p in enumerate(order)]
        groups.append(options)
        peaks.append(spectrum_of(truth))
        labels.append(truth)
    fitted, report = rerank.fit(groups, peaks, [2] * 60, labels, k=3, fitted_on="t")
    assert report["search_rank1_recall"] == 0  # the truth was never first
    assert report["reranked_rank1_recall_out_of_fold"] > 0.9
    # the chosen candidates' residues: the truths' all match, a decoy's a few
    aa = report["reranked_aa_precision_out_of_fold"]
    assert report["reranked_rank1_recall_out_of_fold"] <= aa <= 1.0
    fitted.save(tmp_path)
    loaded = rerank.load_reranker(tmp_path)
    assert loaded.k == 3 and loaded.fitted_on == "t"
    ranked = ["EPPTLDEK", "PETPLDEK", "PEPTLDEK"]
    options = [candidate(p, -float(k)) for k, p in enumerate(ranked)]
    tail = candidate("PEPTLEDK", -9.0)
    reranked = loaded.rerank(options + [tail], spectrum_of("PEPTLDEK"), 2)
    assert masses.format_peptide(reranked[0].tokens) == "PEPTLDEK"
    assert 0.5 < reranked[0].score <= 1 and reranked[1].score < reranked[0].score
    assert reranked[3] is tail  # past k the search's order stands


def test_platt_map_refitted_on_other_spectra_matches_how_often_they_are_right():
    peptides = ["PEPTLDEK", "LGEYGFQNALLVR", "AEFVEVTK", "YLYELAR", "HLVDEPQNLLK"]
    rng = np.random.default_rng(3)

    def spectra(n, truth_listed):
        groups, peaks, labels = [], [], []
        for i in range(n):
            truth = peptides[i % len(peptides)]
            decoy = masses.format_peptide(shuffled(masses.parse(truth), rng))
            # where the truth is not listed, a second shuffle stands in for it
            other = masses.format_peptide(shuffled(masses.parse(truth), rng))
            order = [truth if truth_listed(i) else other, decoy]
            groups.append([candidate(p, -float(k)) for k, p in enumerate(order)])
            peaks.append(spectrum_of(truth))
            labels.append(truth)
        return groups, peaks, [2] * n, labels

    fitted, _ = rerank.fit(*spectra(60, lambda i: True), k=2)

    def first(reranker, groups, peaks):
        return [
            reranker.rerank(options, spectrum, 2)[0]
            for options, spectrum in zip(groups, peaks, strict=True)
        ]

    groups, peaks, charges, labels = spectra(60, lambda i: i % 2 == 0)  # half right
    before = np.mean([c.score for c in first(fitted, groups, peaks)])
    refitted = rerank.refit_platt(fitted, groups, peaks, charges, labels, "other")
    after = np.mean([c.score for c in first(refitted, groups, peaks)])
    assert before > 0.8 and after == pytest.approx(0.5, abs=0.03)
    assert refitted.booster is fitted.booster and refitted.fitted_on.endswith("other")


def test_no_reranker_in_a_folder_without_one(tmp_path):
    assert rerank.load_reranker(tmp_path) is None


needs_ms2pip = pytest.mark.skipif(
    not predicted.available(), reason=f"ms2pip {predicted.VERSION} is not installed"
)


def real_spectra(path) -> list:
    from peptrm.config import load_config
    from peptrm.io import Spectrum, read_spectra

    prepare = preprocess.pipeline(load_config().preprocess)
    return [prepare(s) for s in read_spectra(path) if isinstance(s, Spectrum)]


def real_cases(path) -> list:
    """(spectrum, its label's tokens with I as L, its peaks) of a labelled file."""
    return [
        (
            spectrum,
            [t.replace("I", "L") for t in masses.parse(spectrum.peptide)],
            FragmentEvidence(
                spectrum.mz,
                spectrum.intensity,
                masses.mz_to_mass(spectrum.precursor_mz, spectrum.charge),
                spectrum.charge,
                0.01,
            ),
        )
        for spectrum in real_spectra(path)
    ]


def shuffled(tokens: list[str], rng) -> list[str]:
    """The same residues, first and last kept, the middle permuted (same mass)."""
    head = [t for t in tokens if t in masses.N_TERMINAL_MODIFICATIONS]
    body = [t for t in tokens if t not in masses.N_TERMINAL_MODIFICATIONS]
    return head + [body[0], *rng.permutation(body[1:-1]).tolist(), body[-1]]


def decoy_jobs(path, decoys: int, seed: int) -> tuple[list, list[str]]:
    """Per real spectrum (charges 2-4): its label among `decoys` shuffles of it,
    in turn at every place, as (candidates, peaks, charge); and the labels."""
    rng = np.random.default_rng(seed)
    jobs, labels = [], []
    for spectrum, tokens, peaks in real_cases(path):
        order = [masses.format_peptide(shuffled(tokens, rng)) for _ in range(decoys)]
        order.append(masses.format_peptide(tokens))
        turn = len(jobs) % (decoys + 1)
        order = order[turn:] + order[:turn]  # truth anywhere
        options = [candidate(p, -float(k)) for k, p in enumerate(order)]
        jobs.append((options, peaks, spectrum.charge))
        labels.append(masses.format_peptide(tokens))
    return jobs, labels


@needs_ms2pip
def test_ms2pip_agreement_of_the_true_peptide_beats_a_shuffled_one(small_mgf):
    rng = np.random.default_rng(0)
    names = rerank.PREDICTED_FEATURES
    cosine, pearson = names.index("ms2pip_cosine"), names.index("ms2pip_pearson")
    for spectrum, tokens, peaks in real_cases(small_mgf):  # MassIVE-KB, charge 2-4
        right = candidate(masses.format_peptide(tokens), 0.0)
        wrong = candidate(masses.format_peptide(shuffled(tokens, rng)), 0.0)
        x = rerank.candidate_features([right, wrong], peaks, spectrum.charge, names)
        assert x[0, cosine] > x[1, cosine], spectrum.peptide
        assert x[0, pearson] > x[1, pearson], spectrum.peptide
        assert x[0, names.index("ms2pip_cosine_gap")] == 0


@needs_ms2pip
def test_an_ms2pip_reranker_ships_with_a_plain_fallback(tmp_path, monkeypatch, caplog):
    peptides = ["PEPTLDEK", "LGEYGFQNALLVR", "AEFVEVTK", "YLYELAR", "HLVDEPQNLLK"]
    rng = np.random.default_rng(1)
    groups, peaks, labels = [], [], []
    for i in range(40):
        truth = peptides[i % len(peptides)]
        decoy = masses.format_peptide(shuffled(masses.parse(truth), rng))
        order = [decoy, truth] if i % 2 else [truth, decoy]
        groups.append([candidate(p, -float(k)) for k, p in enumerate(order)])
        peaks.append(spectrum_of(truth))
        labels.append(truth)
    fitted, report = rerank.fit(
        groups, peaks, [2] * 40, labels, k=2, features=rerank.PREDICTED_FEATURES
    )
    assert "reranked_rank1_recall_out_of_fold_without_ms2pip" in report
    fitted.save(tmp_path)
    settings = (tmp_path / rerank.PREDICTED_SETTINGS_NAME).read_text()
    assert "ms2pip_cosine" in settings and "4.1.2, model HCD2019" in settings
    assert "ms2pip" not in (tmp_path / rerank.SETTINGS_NAME).read_text()
    loaded = rerank.load_reranker(tmp_path)
    assert loaded.features == rerank.PREDICTED_FEATURES and loaded.k == 2
    assert loaded.shortlist == rerank.SHORTLIST
    assert loaded.fallback.features == rerank.FEATURES
    # the fallback is the plain fit of the same candidates: the same scores
    plain = rerank.fit(groups, peaks, [2] * 40, labels, k=2)[0]
    probability = plain.probabilities(groups[0], peaks[0], 2)
    fallback = loaded.fallback.probabilities(groups[0], peaks[0], 2)
    assert fallback == pytest.approx(probability)
    with caplog.at_level("INFO"):
        monkeypatch.setattr(predicted, "available", lambda: False)
        without = rerank.load_reranker(tmp_path)
    assert without.features == rerank.FEATURES and "without predicted" in caplog.text
    (tmp_path / rerank.MODEL_NAME).unlink()  # an ms2pip reranker alone needs ms2pip
    with pytest.raises(ValueError, match="rerank_ms2pip.yaml: this reranker reads"):
        rerank.load_reranker(tmp_path)
    with pytest.raises(ValueError, match="need ms2pip"):
        rerank.fit(
            groups, peaks, [2] * 40, labels, 2, features=rerank.PREDICTED_FEATURES
        )


@needs_ms2pip
def test_reranking_many_spectra_at_once_equals_one_at_a_time(small_mgf, tmp_path):
    # ms2pip is called once per charge for all spectra together and the booster
    # once; every spectrum must get the order and scores it gets alone.
    jobs, labels = decoy_jobs(small_mgf, decoys=2, seed=2)
    assert len({charge for _, _, charge in jobs}) > 1
    fitted, _ = rerank.fit(
        [j[0] for j in jobs] * 4,
        [j[1] for j in jobs] * 4,
        [j[2] for j in jobs] * 4,
        labels * 4,
        k=3,
        features=rerank.PREDICTED_FEATURES,
    )
    copy = lambda options: [dataclasses.replace(c) for c in options]  # noqa: E731
    alone = [fitted.rerank(copy(o), peaks, z) for o, peaks, z in jobs]
    together = fitted.rerank_many([(copy(o), peaks, z) for o, peaks, z in jobs])
    for one, many in zip(alone, together, strict=True):
        assert [c.tokens for c in one] == [c.tokens for c in many]
        assert [c.score for c in one] == pytest.approx([c.score for c in many])
    scores = [c.score for options in together for c in options]
    assert len({round(score, 6) for score in scores}) > 1  # real, varied scores
    # and what it learned: the labelled peptide goes first (it was fitted on these)
    firsts = [options[0].tokens for options in together]
    assert firsts == [masses.parse(label) for label in labels]


@needs_ms2pip
def test_the_ms2pip_reranker_reads_the_plain_rerankers_shortlist(
    small_mgf, monkeypatch
):
    # ms2pip predicts only the plain reranker's best 2 of each spectrum's 4,
    # which the ms2pip reranker scores; the other 2 keep the plain one's
    # probabilities, and all go by probability. Fitting builds the rows it
    # learns from as sequencing reads them.
    jobs, labels = decoy_jobs(small_mgf, decoys=3, seed=3)
    groups, peaks, charges = ([job[i] for job in jobs] * 4 for i in range(3))
    fitted, report = rerank.fit(
        groups, peaks, charges, labels * 4, k=4,
        features=rerank.PREDICTED_FEATURES, shortlist=2,
    )  # fmt: skip
    assert fitted.shortlist == 2 and 0 < report["recall_at_shortlist_2"] <= 1
    asked = []
    real = predicted.predict_by_charge

    def counted(peptides, charges):
        asked.append(len(peptides))
        return real(peptides, charges)

    monkeypatch.setattr(predicted, "predict_by_charge", counted)
    copy = lambda options: [dataclasses.replace(c) for c in options]  # noqa: E731
    ranked = fitted.rerank_many([(copy(o), p, z) for o, p, z in jobs])
    assert asked == [2 * len(jobs)]  # one call, 2 candidates a spectrum
    plain = fitted.fallback.probabilities_many(jobs)
    for (options, _, _), out, first in zip(jobs, ranked, plain, strict=True):
        scores = [c.score for c in out]
        assert scores == sorted(scores, reverse=True)
        rest = np.argsort(-first, kind="stable")[2:]  # not shortlisted
        of = {tuple(c.tokens): c.score for c in out}
        assert [of[tuple(options[i].tokens)] for i in rest] == pytest.approx(
            first[rest]
        )
    # the rows it was fitted on are the ones it reads, built the same way
    x, _, group = rerank.training_table(groups, peaks, charges, labels * 4, 4)
    raw = fitted.fallback.booster.predict(x, raw_score=True)
    rows = rerank.shortlisted(raw, group, 2)
    table = rerank.with_predicted(x, group, rows, groups, peaks, charges, 4)
    a, b = fitted.platt
    raw_read = fitted.booster.predict(table, raw_score=True)
    expected = 1 / (1 + np.exp(-(a * raw_read + b)))
    read = fitted.probabilities_many(jobs)
    got = [
        p[rerank._shortlist(r, 2)]
        for p, r in zip(read, raw.reshape(-1, 4)[: len(jobs)], strict=True)
    ]
    assert np.concatenate(got) == pytest.approx(expected[: 2 * len(jobs)])
    # a Platt map refitted on other spectra reads them the same way
    refitted = rerank.refit_platt(fitted, groups, peaks, charges, labels * 4, "x")
    assert refitted.booster is fitted.booster and refitted.shortlist == 2
    assert refitted.fallback.booster is fitted.fallback.booster
    before = fitted.rerank_many([(copy(o), p, z) for o, p, z in jobs])
    after = refitted.rerank_many([(copy(o), p, z) for o, p, z in jobs])
    assert [[c.tokens for c in o] for o in after] == [
        [c.tokens for c in o] for o in before
    ]  # a new map of the same raw scores: the same order
    # a shortlist as long as the head reads what a reranker without one does
    everyone = [
        rerank.fit(
            groups, peaks, charges, labels * 4, k=4,
            features=rerank.PREDICTED_FEATURES, shortlist=m,
        )[0].probabilities_many(jobs)
        for m in (0, 4)
    ]  # fmt: skip
    assert np.concatenate(everyone[0]) == pytest.approx(np.concatenate(everyone[1]))


def test_the_reranker_learns_the_exact_peptide_not_its_isobaric_deamidated_twin():
    """E weighs what Q+0.984 weighs (D what N+0.984 does): both match the label
    residue by residue in mass, but only the exact peptide is a positive."""
    label = "PEPTLDEK"
    twins = ["PQ+0.984PTLDEK", "PEPTLN+0.984EK"]
    for twin in twins:
        assert abs(masses.peptide_mass(twin) - masses.peptide_mass(label)) < 1e-5
        assert rerank.is_correct(candidate(twin, 0.0), label)
        assert not rerank.is_exact(candidate(twin, 0.0), label)
    assert rerank.is_exact(candidate(label, 0.0), "PEPTIDEK")  # I = L
    options = [
        candidate(twins[0], 0.0),
        candidate(label, -1.0),
        candidate(twins[1], -2.0),
    ]
    _, y, group = rerank.training_table(
        [options], [spectrum_of(label)], [2], [label], 3
    )
    assert y.tolist() == [0.0, 1.0, 0.0] and group.tolist() == [0, 0, 0]
