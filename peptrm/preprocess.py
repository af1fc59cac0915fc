"""Peak filtering and intensity scaling, one small pure function per step.

Each step takes a `Spectrum` and returns a new one (the input is never changed).
`pipeline` composes them in the order Casanovo and depthcharge use: m/z window,
precursor-peak removal, intensity floor, top-k peaks, then intensity scaling.
`collate` turns preprocessed spectra into padded tensors for the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from peptrm import masses
from peptrm.config import PreprocessConfig
from peptrm.io import Skipped, Spectrum

INTENSITY_SCALINGS = ("sqrt", "log", "none")


def _keep(spectrum: Spectrum, mask: np.ndarray) -> Spectrum:
    """Return a copy of `spectrum` holding only the peaks where `mask` is true."""
    return dataclasses.replace(
        spectrum, mz=spectrum.mz[mask], intensity=spectrum.intensity[mask]
    )


def set_mz_range(spectrum: Spectrum, min_mz: float, max_mz: float) -> Spectrum:
    """Keep peaks with `min_mz` <= m/z <= `max_mz` (Th).

    The model is trained on one m/z window; peaks outside it (reporter ions,
    the low-mass cut-off region of ion traps) would be inputs it never saw.
    """
    return _keep(spectrum, (spectrum.mz >= min_mz) & (spectrum.mz <= max_mz))


def remove_precursor_peaks(spectrum: Spectrum, tol_da: float) -> Spectrum:
    """Drop peaks within `tol_da` of the precursor m/z, at every charge up to its own.

    The intact precursor is often the tallest peak: it would dominate intensity
    scaling while saying nothing about the sequence. Charge-reduced precursors
    (a 3+ precursor seen at 2+ and 1+) are just as uninformative.
    """
    neutral_mass = masses.mz_to_mass(spectrum.precursor_mz, spectrum.charge)
    charges = np.arange(1, spectrum.charge + 1)
    precursor_mzs = (neutral_mass + charges * masses.PROTON) / charges  # (charge,)
    near = np.abs(spectrum.mz[:, None] - precursor_mzs[None, :]) <= tol_da
    return _keep(spectrum, ~near.any(axis=1))


def filter_intensity(spectrum: Spectrum, min_intensity: float) -> Spectrum:
    """Drop peaks below `min_intensity` times the base peak, and zero peaks.

    A zero-intensity peak carries no evidence, so it goes even when
    `min_intensity` is 0.
    """
    if len(spectrum.intensity) == 0:
        return spectrum
    floor = min_intensity * float(spectrum.intensity.max())
    return _keep(spectrum, (spectrum.intensity >= floor) & (spectrum.intensity > 0))


def top_k_peaks(spectrum: Spectrum, k: int) -> Spectrum:
    """Keep the `k` most intense peaks, still in m/z order.

    Ties go to the lower m/z peak, so the result does not depend on sort details.
    """
    if len(spectrum.mz) <= k:
        return spectrum
    order = np.argsort(-spectrum.intensity, kind="stable")[:k]
    return _keep(spectrum, np.sort(order))


def scale_intensity(spectrum: Spectrum, method: str) -> Spectrum:
    """Transform intensities (``sqrt``, ``log`` = log1p, ``none``), scale to max 1.

    Square root or log compresses the range, so fragment ions of moderate
    intensity are not drowned out by a few tall peaks (as in Casanovo).

    Raises
    ------
    ValueError
        For a method other than those in `INTENSITY_SCALINGS`.
    """
    intensity = spectrum.intensity.astype(np.float32)
    if method == "sqrt":
        intensity = np.sqrt(intensity)
    elif method == "log":
        intensity = np.log1p(intensity)
    elif method != "none":
        allowed = ", ".join(INTENSITY_SCALINGS)
        raise ValueError(f"intensity_scaling {method!r} is not one of {allowed}")
    if len(intensity) and intensity.max() > 0:
        intensity = intensity / intensity.max()
    return dataclasses.replace(spectrum, intensity=intensity.astype(np.float32))


def pipeline(
    cfg: PreprocessConfig,
) -> Callable[[Spectrum | Skipped], Spectrum | Skipped]:
    """Compose the steps configured in `cfg` into one function.

    The function returns a `Skipped` (naming the spectrum) when fewer than
    `cfg.min_peaks` peaks survive; a `Skipped` passed in comes back unchanged, so
    it can be mapped over everything a reader yields.
    """
    if cfg.intensity_scaling not in INTENSITY_SCALINGS:
        raise ValueError(
            f"intensity_scaling {cfg.intensity_scaling!r} is not one of "
            f"{', '.join(INTENSITY_SCALINGS)}"
        )

    def preprocess(spectrum: Spectrum | Skipped) -> Spectrum | Skipped:
        if isinstance(spectrum, Skipped):
            return spectrum
        spectrum = set_mz_range(spectrum, cfg.min_mz, cfg.max_mz)
        spectrum = remove_precursor_peaks(spectrum, cfg.remove_precursor_tol_da)
        spectrum = filter_intensity(spectrum, cfg.min_intensity)
        spectrum = top_k_peaks(spectrum, cfg.n_peaks)
        if len(spectrum.mz) < cfg.min_peaks:
            return Skipped(
                spectrum.ref,
                f"{spectrum.ref}: {len(spectrum.mz)} peaks after filtering, "
                f"fewer than min_peaks={cfg.min_peaks}",
                spectrum.precursor_mz,
                spectrum.charge,
                spectrum.peptide,
            )
        return scale_intensity(spectrum, cfg.intensity_scaling)

    return preprocess


def collate(
    spectra: Sequence[Spectrum], n_peaks: int, max_length: int | None = None
) -> dict[str, Tensor]:
    """Stack spectra into padded tensors of one fixed shape.

    Returns ``mz`` and ``intensity`` (B, P) float32, zero-padded past each
    spectrum's last peak (P = `n_peaks`; a spectrum with more peaks keeps its
    `n_peaks` most intense); ``precursor_mz`` and ``precursor_mass`` (B,) float64,
    the latter neutral (Da); ``charge`` (B,) int64; and with `max_length`,
    ``tokens`` (B, L) int64, each peptide encoded and padded with STOP.

    Raises
    ------
    ValueError
        With `max_length`, for a spectrum without a usable peptide or with one
        longer than `max_length` tokens; the message names the spectrum.
    """
    batch = len(spectra)
    mz = torch.zeros(batch, n_peaks, dtype=torch.float32)  # (B, P)
    intensity = torch.zeros(batch, n_peaks, dtype=torch.float32)  # (B, P)
    for row, spectrum in enumerate(spectra):
        spectrum = top_k_peaks(spectrum, n_peaks)
        n = len(spectrum.mz)
        mz[row, :n] = torch.from_numpy(spectrum.mz.astype(np.float32))
        intensity[row, :n] = torch.from_numpy(spectrum.intensity.astype(np.float32))
    charge = torch.tensor([s.charge for s in spectra], dtype=torch.int64)  # (B,)
    precursor_mz = torch.tensor([s.precursor_mz for s in spectra], dtype=torch.float64)
    precursor_mass = torch.tensor(
        [masses.mz_to_mass(s.precursor_mz, s.charge) for s in spectra],
        dtype=torch.float64,
    )  # (B,)
    out = {
        "mz": mz,
        "intensity": intensity,
        "precursor_mz": precursor_mz,
        "precursor_mass": precursor_mass,
        "charge": charge,
    }
    if max_length is not None:
        tokens = [_encode(s, max_length) for s in spectra]
        out["tokens"] = torch.from_numpy(
            np.stack(tokens) if tokens else np.zeros((0, max_length), np.int64)
        )  # (B, L)
    return out


def _encode(spectrum: Spectrum, max_length: int) -> np.ndarray:
    """Encode a spectrum's peptide, naming the spectrum when that is impossible."""
    if spectrum.label_problem:
        raise ValueError(spectrum.label_problem)
    if spectrum.peptide is None:
        raise ValueError(f"{spectrum.ref}: no SEQ= annotation to train or score on")
    try:
        return masses.encode(spectrum.peptide, max_length)
    except ValueError as error:
        raise ValueError(f"{spectrum.ref}: {error}") from error
