import dataclasses

import numpy as np
import pytest
import torch
from pyteomics import mass

from peptrm import io, masses, preprocess
from peptrm.config import load_config
from peptrm.io import Spectrum, SpectrumRef

REF = SpectrumRef("hand.mgf", 0, "hand")


def spectrum(mz, intensity, precursor_mz=401.267087, charge=2, peptide=None):
    return Spectrum(
        REF,
        np.array(mz, dtype=np.float64),
        np.array(intensity, dtype=np.float32),
        precursor_mz,
        charge,
        peptide,
    )


def test_set_mz_range_is_inclusive():
    s = spectrum([49.9, 50.0, 1000.0, 2500.0, 2500.1], [1, 2, 3, 4, 5])
    out = preprocess.set_mz_range(s, 50.0, 2500.0)
    np.testing.assert_array_equal(out.mz, [50.0, 1000.0, 2500.0])
    np.testing.assert_array_equal(out.intensity, [2, 3, 4])
    assert len(s.mz) == 5  # the input is not changed


def test_remove_precursor_peaks_at_every_charge_up_to_its_own():
    # 2+ precursor at 401.267087: neutral 800.519622 Da, so the 1+ form sits at
    # 801.526898 (hand arithmetic with the proton 1.007276).
    s = spectrum([399.0, 400.0, 403.5, 798.0, 801.0, 803.0], [1, 2, 3, 4, 5, 6])
    out = preprocess.remove_precursor_peaks(s, tol_da=2.0)
    # 400.0 is 1.27 from 2+, 801.0 is 0.53 from 1+; 399.0 is 2.27 and 803.0 is 1.47
    np.testing.assert_array_equal(out.mz, [399.0, 403.5, 798.0])


def test_remove_precursor_peaks_does_not_touch_higher_charges():
    # A 1+ precursor at 801.526898 has no 2+ form to remove at 401.27.
    s = spectrum([401.0, 801.0], [1, 1], precursor_mz=801.526898, charge=1)
    out = preprocess.remove_precursor_peaks(s, tol_da=2.0)
    np.testing.assert_array_equal(out.mz, [401.0])


def test_filter_intensity_drops_below_fraction_and_zeros():
    s = spectrum([100, 200, 300, 400], [100, 0.5, 2, 0])
    out = preprocess.filter_intensity(s, 0.01)  # floor = 1.0
    np.testing.assert_array_equal(out.mz, [100, 300])
    out = preprocess.filter_intensity(s, 0.0)
    np.testing.assert_array_equal(out.mz, [100, 200, 300])


def test_top_k_peaks_keeps_most_intense_in_mz_order():
    s = spectrum([100, 200, 300, 400], [5, 9, 1, 9])
    np.testing.assert_array_equal(preprocess.top_k_peaks(s, 2).mz, [200, 400])
    np.testing.assert_array_equal(preprocess.top_k_peaks(s, 3).mz, [100, 200, 400])
    assert preprocess.top_k_peaks(s, 10) is s


@pytest.mark.parametrize(
    ("method", "intensity", "expected"),
    [
        ("sqrt", [4, 16, 64], [0.25, 0.5, 1.0]),  # sqrt: 2, 4, 8
        ("log", [0, np.e - 1, np.e**2 - 1], [0.0, 0.5, 1.0]),  # log1p: 0, 1, 2
        ("none", [1, 2, 4], [0.25, 0.5, 1.0]),
    ],
)
def test_scale_intensity(method, intensity, expected):
    out = preprocess.scale_intensity(spectrum([1, 2, 3], intensity), method)
    np.testing.assert_allclose(out.intensity, expected, rtol=1e-6)
    assert out.intensity.dtype == np.float32


def test_scale_intensity_rejects_unknown_method():
    with pytest.raises(ValueError, match="'cube' is not one of sqrt, log, none"):
        preprocess.scale_intensity(spectrum([1], [1]), "cube")


def test_pipeline_on_real_spectra(small_mgf):
    cfg = load_config().preprocess
    run = preprocess.pipeline(cfg)
    for raw in io.read_spectra(small_mgf):
        out = run(raw)
        assert isinstance(out, Spectrum)
        assert cfg.min_peaks <= len(out.mz) <= min(cfg.n_peaks, len(raw.mz))
        assert np.all(np.diff(out.mz) > 0)
        assert out.intensity.max() == pytest.approx(1.0)
        assert out.mz.min() >= cfg.min_mz and out.mz.max() <= cfg.max_mz
        neutral = masses.mz_to_mass(out.precursor_mz, out.charge)
        for z in range(1, out.charge + 1):
            precursor = masses.mass_to_mz(neutral, z)
            assert np.all(np.abs(out.mz - precursor) > cfg.remove_precursor_tol_da)
        assert out.peptide == raw.peptide


def test_pipeline_skips_too_few_peaks_and_passes_skipped_through(broken_mgf):
    cfg = load_config().preprocess
    run = preprocess.pipeline(cfg)
    out = {r.ref.title: run(r) for r in io.read_spectra(broken_mgf)}
    assert len(out) == 10
    assert out["one_peak"].reason == (
        "broken.mgf, spectrum 4 (TITLE=one_peak): 1 peaks after filtering, "
        "fewer than min_peaks=5"
    )
    assert out["one_peak"].precursor_mz == 401.267087
    assert out["no_charge"].reason.endswith(
        "no CHARGE line; pass --default-charge or fix the file"
    )
    assert isinstance(out["good"], Spectrum)


def test_pipeline_rejects_unknown_scaling():
    cfg = dataclasses.replace(load_config().preprocess, intensity_scaling="cube")
    with pytest.raises(ValueError, match="intensity_scaling 'cube'"):
        preprocess.pipeline(cfg)


def test_collate_pads_and_converts(small_mgf):
    spectra = list(io.read_spectra(small_mgf))[1:3]  # 109 and 38 peaks
    batch = preprocess.collate(spectra, n_peaks=100, max_length=20)
    assert batch["mz"].shape == (2, 100) and batch["mz"].dtype == torch.float32
    assert batch["intensity"].shape == (2, 100)
    assert batch["charge"].tolist() == [2, 2]
    assert batch["precursor_mz"].dtype == torch.float64
    assert batch["precursor_mz"].tolist() == [651.83, 401.267087]
    # 38 peaks, then zero padding
    torch.testing.assert_close(
        batch["mz"][1, :38], torch.from_numpy(spectra[1].mz.astype(np.float32))
    )
    assert torch.all(batch["mz"][1, 38:] == 0)
    assert torch.all(batch["intensity"][1, 38:] == 0)
    # 109 peaks cut to the 100 most intense
    kept = np.sort(np.argsort(-spectra[0].intensity, kind="stable")[:100])
    torch.testing.assert_close(
        batch["mz"][0], torch.from_numpy(spectra[0].mz[kept].astype(np.float32))
    )
    # the neutral mass agrees with pyteomics' mass of the annotation (20 ppm check)
    expected = mass.calculate_mass(sequence="LLPAFLK")
    assert batch["precursor_mass"][1].item() == pytest.approx(expected, rel=20e-6)
    tokens = batch["tokens"]
    assert tokens.shape == (2, 20) and tokens.dtype == torch.int64
    assert tokens[1, :7].tolist() == [masses.TOKEN_INDEX[aa] for aa in "LLPAFLK"]
    assert torch.all(tokens[1, 7:] == masses.STOP_INDEX)


def test_collate_names_the_spectrum_with_an_unusable_label(broken_mgf):
    out = {r.ref.title: r for r in io.read_spectra(broken_mgf)}
    with pytest.raises(ValueError, match=r"spectrum 7 \(TITLE=unknown_residue\)"):
        preprocess.collate([out["good"], out["unknown_residue"]], 10, max_length=20)
    with pytest.raises(ValueError, match=r"spectrum 6 \(TITLE=nan\): no SEQ="):
        preprocess.collate([out["nan"]], 10, max_length=20)
    with pytest.raises(ValueError, match=r"spectrum 0 \(TITLE=good\): .* more than 3"):
        preprocess.collate([out["good"]], 10, max_length=3)


def test_collate_without_labels_has_no_tokens(broken_mgf):
    out = [r for r in io.read_spectra(broken_mgf) if isinstance(r, Spectrum)]
    batch = preprocess.collate(out, n_peaks=8)
    assert "tokens" not in batch
    assert [s.ref.title for s in out] == ["good", "one_peak", "nan", "unknown_residue"]
    assert batch["mz"].shape == (4, 8)
    assert batch["mz"][1, 0].item() == pytest.approx(120.08122)  # its only peak
    assert torch.all(batch["mz"][1, 1:] == 0)
