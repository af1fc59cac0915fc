"""Predicted fragment intensities (ms2pip) and how well a spectrum follows them.

ms2pip predicts the relative intensity of every b and y ion of a peptide at a
precursor charge. Its HCD2019 model is C code compiled into the ms2pip 4.1.2
wheel, so predicting needs no download; the default "HCD" model (HCD2021,
XGBoost) and every ms2pip >= 4.2 fetch model files at run time, so both the
model and the version are pinned. ms2pip is optional: install it with

    pip install -e '.[ms2pip]' && pip install --no-deps ms2pip==4.1.2

(`--no-deps`: ms2pip asks for `xgboost`, whose Linux wheel pulls CUDA
libraries; the `ms2pip` extra brings its real dependencies with `xgboost-cpu`
in its place). `available()` says whether it is there.

Modifications reach ms2pip as mass deltas (`masses.to_mass_proforma`): a named
modification would make pyteomics look it up in Unimod online.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from importlib import metadata

import numpy as np

from peptrm import masses

log = logging.getLogger(__name__)

VERSION = "4.1.2"  # the last ms2pip that predicts without downloading models
INSTALL = "pip install 'peptrm[ms2pip]' && pip install --no-deps ms2pip==4.1.2"
MODEL = "HCD2019"  # compiled into the wheel; b and y ions, singly charged
MIN_LENGTH = 4  # ms2pip refuses shorter peptides
TOP_IONS = 6  # "the most intense predicted ions": about what a good spectrum shows
FEATURES = (
    "ms2pip_pearson",
    "ms2pip_spearman",
    "ms2pip_cosine",
    "ms2pip_top_found",
    "ms2pip_found_share",
    "ms2pip_max_missing",
    "ms2pip_cosine_gap",
)
# One peptide's predicted b and y intensities by cleavage (`predict`), or None
# where ms2pip cannot predict it.
Intensities = tuple[np.ndarray, np.ndarray] | None


@functools.cache  # asked once a spectrum; installing mid-run is not a case
def available() -> bool:
    """Whether ms2pip 4.1.2 is installed (another version is not used)."""
    try:
        return metadata.version("ms2pip") == VERSION
    except metadata.PackageNotFoundError:
        return False


def predict(peptides: Sequence[str | Sequence[str]], charge: int) -> list[Intensities]:
    """Intensities of the b and y ions of each peptide at one charge, by cleavage.

    Entry i of both arrays belongs to the cleavage after residue i + 1 (b_{i+1}
    and its complement y_{n-i-1}), as the reranker reads the spectrum. The
    intensities are linear and sum to 1 over b and y together. Peptides ms2pip
    cannot predict (shorter than `MIN_LENGTH`) get None.
    """
    from ms2pip.core import predict_batch
    from psm_utils import PSM, PSMList

    logging.getLogger("ms2pip").setLevel(logging.WARNING)  # one INFO line a call
    keep = [
        i
        for i, peptide in enumerate(peptides)
        if len(masses.strip_modifications(peptide)) >= MIN_LENGTH
    ]
    out: list[Intensities] = [None] * len(peptides)
    if not keep:
        return out
    psms = [
        PSM(peptidoform=peptidoform(peptides[i], charge), spectrum_id=str(i))
        for i in keep
    ]
    results = predict_batch(PSMList(psm_list=psms), model=MODEL, processes=1)
    for i, result in zip(keep, results, strict=True):
        if result.predicted_intensity is None:
            continue
        out[i] = _by_cleavage(result.predicted_intensity)
    return out


def peptidoform(peptide: str | Sequence[str], charge: int):
    """psm_utils' Peptidoform of a peptide at a charge, from tokens parsed once.

    What parsing its ProForma text (`masses.to_mass_proforma`, then `/charge`)
    gives, but each vocabulary token is parsed by pyteomics once
    (`_parsed_token`) and the peptide assembled from the pieces: parsing the
    whole text cost ~0.25 ms a peptide, about what ms2pip's prediction costs.
    """
    from psm_utils import Peptidoform
    from pyteomics import proforma

    sequence, n_term = [], None
    for token in masses.as_tokens(peptide):
        residue, terminal = _parsed_token(token)
        if terminal is not None:
            n_term = list(terminal)
        else:  # fresh lists: nothing is shared between peptidoforms but the tags
            sequence.append((residue[0], list(residue[1]) if residue[1] else None))
    properties = {
        "n_term": n_term,
        "c_term": None,
        "unlocalized_modifications": [],
        "labile_modifications": [],
        "fixed_modifications": [],
        "intervals": [],
        "isotopes": [],
        "group_ids": [],
        "charge_state": proforma.ChargeState(charge, []),
    }
    return Peptidoform(proforma.ProForma(sequence, properties))


@functools.cache
def _parsed_token(token: str) -> tuple[tuple | None, list | None]:
    """One token as pyteomics parses it: (residue, None) or (None, N-terminus).

    The residue is pyteomics' (letter, modifications) pair; an N-terminal
    token gives the N-terminal modifications instead.
    """
    from pyteomics import proforma

    if token in masses.N_TERMINAL_MODIFICATIONS:
        _, properties = proforma.parse(masses.to_mass_proforma([token, "G"]))
        return None, properties["n_term"]
    (residue,), _ = proforma.parse(masses.to_mass_proforma([token]))
    return residue, None


def predict_by_charge(
    peptides: Sequence[str | Sequence[str]], charges: Sequence[int]
) -> list[Intensities]:
    """`predict` for peptides of mixed precursor charges, one ms2pip call per charge.

    A call costs ~9 ms before its first peptide and ~0.35 ms a peptide after
    it, so peptides predicted together cost far less than one call each.
    """
    out: list[Intensities] = [None] * len(peptides)
    for charge in sorted(set(charges)):
        rows = [i for i, c in enumerate(charges) if c == charge]
        found = predict([peptides[i] for i in rows], charge)
        for i, intensities in zip(rows, found, strict=True):
            out[i] = intensities
    return out


def _by_cleavage(log2_intensity: dict) -> tuple[np.ndarray, np.ndarray]:
    """ms2pip's log2(intensity + 0.001) per ion number as linear, by cleavage."""
    b = np.maximum(2.0 ** np.asarray(log2_intensity["b"], np.float64) - 0.001, 0)
    y = np.maximum(2.0 ** np.asarray(log2_intensity["y"], np.float64) - 0.001, 0)
    y = y[::-1]  # y1, y2, ... -> the y ion of each cleavage from the N-terminus
    total = b.sum() + y.sum()
    return (b / total, y / total) if total > 0 else (b, y)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant."""
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt((a @ a) * (b @ b))
    return float(a @ b / norm) if norm > 0 else float("nan")


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties given their mean rank (as `rankdata`).

    Rows padded at the end with +inf rank their own entries as they would
    alone. Written out in NumPy: the reranker ranks two short vectors per
    candidate, all of a spectrum's candidates at once.
    """
    values = np.asarray(values, np.float64)
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    size = values.shape[-1]
    at = np.broadcast_to(np.arange(size), values.shape)
    new = np.ones(values.shape, bool)  # the first of each run of ties
    new[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    last = np.ones(values.shape, bool)  # the last of each run of ties
    last[..., :-1] = new[..., 1:]
    first_at = np.maximum.accumulate(np.where(new, at, 0), axis=-1)
    last_at = np.flip(
        np.minimum.accumulate(np.flip(np.where(last, at, size), -1), axis=-1), -1
    )
    ranks = np.empty(values.shape)
    np.put_along_axis(ranks, order, (first_at + last_at) / 2.0 + 1.0, axis=-1)
    return ranks


def agreement(
    intensities: Sequence[Intensities],
    observed: Sequence[tuple[np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """How well each candidate's observed b/y peaks follow its predicted intensities.

    `intensities`: `predict`'s linear b and y intensities of each of a
    spectrum's K candidates (None: not predicted); `observed`: the weights of
    the peaks matched at each of its cleavages, b then y (the spectrum's scaled
    square-root intensity; 0: no peak). Both are compared on the square-root
    scale the peaks are kept on. (K,) arrays of all `FEATURES` but
    `ms2pip_cosine_gap`, which needs the other candidates (the reranker adds
    it); nan where a candidate was not predicted or has no cleavage.
    """
    out = {name: np.full(len(observed), np.nan) for name in FEATURES[:-1]}
    usable = [
        k
        for k, (found, (b, _)) in enumerate(zip(intensities, observed, strict=True))
        if found is not None and len(found[0]) == len(b) and len(b)
    ]
    if not usable:
        return out
    rows = [np.sqrt(np.concatenate(intensities[k])) for k in usable]
    seen = [np.concatenate(observed[k]).astype(np.float64) for k in usable]
    width = max(len(row) for row in rows)
    ranked = [_ranks(_padded(rows, width)), _ranks(_padded(seen, width))]
    for j, (k, predicted, weights) in enumerate(zip(usable, rows, seen, strict=True)):
        m = len(predicted)
        found = weights > 0
        norm = np.linalg.norm(predicted) * np.linalg.norm(weights)
        top = np.argsort(-predicted, kind="stable")[:TOP_IONS]
        linear = predicted**2
        tallest = predicted.max()
        missing = predicted[~found]
        out["ms2pip_pearson"][k] = _pearson(predicted, weights)
        out["ms2pip_spearman"][k] = _pearson(ranked[0][j, :m], ranked[1][j, :m])
        out["ms2pip_cosine"][k] = float(predicted @ weights / norm) if norm > 0 else 0.0
        out["ms2pip_top_found"][k] = float(found[top].mean())
        out["ms2pip_found_share"][k] = (
            float(linear[found].sum() / linear.sum()) if linear.sum() > 0 else 0.0
        )
        out["ms2pip_max_missing"][k] = (
            float(missing.max() / tallest) if len(missing) and tallest > 0 else 0.0
        )
    return out


def _padded(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Rows of different lengths as one (K, width) array, padded with +inf."""
    out = np.full((len(rows), width), np.inf)
    for k, row in enumerate(rows):
        out[k, : len(row)] = row
    return out
