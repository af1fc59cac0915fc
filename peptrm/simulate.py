"""Synthetic spectra from digested FASTA peptides, with a built-in HCD intensity model.

Real HCD spectra are mostly peaks that are not b/y ions, and about half of the b/y
ladder is missing (see the measured facts in ``shared/data/README.md``). The
simulator therefore draws, besides the b/y ladder, the peaks that crowd a real
spectrum: isotopes, neutral losses, a-ions, immonium ions, internal fragments,
precursor remnants and noise. `difficulty` moves a spectrum from clean (0: the b/y
ladder with light dropout) to realistic (1: everything at the configured rates);
the label is always the true peptide.

Everything random comes from the `numpy.random.Generator` passed in, so a seed
reproduces every spectrum. `fragment_statistics` measures the same figures on real
and simulated spectra, so the model below can be checked against data
(``benchmarks/bench_simulate.py`` prints them side by side).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pyteomics import fasta, parser

from peptrm import masses
from peptrm.config import SimulationConfig
from peptrm.io import Spectrum, SpectrumRef

log = logging.getLogger(__name__)

# Neutral losses and the a-ion offset. They belong in masses.py (one constant, one
# place); they live here until that module grows them.

# ---------------------------------------------------------------------------
# Intensity model. Each number is a relative intensity (the strongest y ion of an
# average site is 1) chosen to match the real train spectra; see the benchmark.
# ---------------------------------------------------------------------------
Y_BASE = 1.0  # HCD of tryptic peptides: the basic C-terminal K/R keeps y ions strong
B_BASE = 0.4  # b ions are weaker and also fragment further into a-ions
PROLINE_N_TERM = 3.0  # cleavage N-terminal to P (xP) is strongly enhanced
PROLINE_C_TERM = 0.35  # cleavage C-terminal to P (Px) is suppressed
ASPARTATE = {"D": 1.25, "E": 1.05}  # C-terminal to D/E; weak at mobile-proton charges
B1 = 0.01  # b1 ions are rarely seen (they lose CO at once)
B2 = 2.5  # b2 is seen in ~95% of real HCD spectra (stable oxazolone)
Y1 = 2.0  # y1 of the C-terminal K/R is seen in ~99%
LENGTH_SCALE = 3.0  # fragments within ~3 residues of the full peptide are weaker
LOGNORMAL_SIGMA = 0.6  # random spread of every peak (natural log units)
DOUBLY_CHARGED = {2: 0.15, 3: 0.4}  # 2+ vs 1+ intensity, by precursor charge (3 = 3+)
DOUBLY_KEEP = {2: 0.25, 3: 0.4}  # 2+ ions seen, relative to the 1+ share kept
ISOTOPE_PER_DA = 1 / 1800  # M+1/M ratio per dalton for averagine peptides
ISOTOPE_KEEP = 0.85  # isotope peaks that survive centroiding (real: 0.8-0.9)
NEUTRAL_LOSS = 0.3  # H2O/NH3 losses from b/y, relative to their parent
A_ION = 0.2  # a-ions relative to their b ion (a2 is stronger, see A2)
A2 = 0.6
IMMONIUM = {"H": 0.3, "F": 0.25, "Y": 0.3, "W": 0.2, "L": 0.15, "I": 0.15}
IMMONIUM_OTHER = 0.04  # immonium ion of any other residue
INTERNAL = 0.15  # internal b-type fragments of 2-5 residues, about one per residue
PRECURSOR = 0.2  # unfragmented precursor (and its water loss)
NOISE_MEDIAN = 0.012  # median noise peak, relative to the base peak
NOISE_SIGMA = 1.5  # noise peaks: many small, a few large
CLEAN_DROPOUT = 0.1  # b/y dropout at difficulty 0
MIN_MZ = 50.0  # nothing below this is simulated (Th)
DETECTION = 0.005  # non-b/y ions weaker than this share of the strongest b/y are unseen

# Relative frequency of the N-terminal modifications (acetylation of protein N-termini
# is the commonest; carbamylation is a urea artefact; pyro-glu forms from N-term Q).
N_TERMINAL_WEIGHTS = {
    "+42.011": 0.4,
    "+43.006": 0.3,
    "-17.027": 0.2,
    "+43.006-17.027": 0.1,
}
STANDARD_RESIDUES = frozenset(masses.AMINO_ACIDS)


# ---------------------------------------------------------------------------
# Peptides
# ---------------------------------------------------------------------------
def digest_fasta(
    paths: str | Path | Iterable[str | Path], cfg: SimulationConfig
) -> list[str]:
    """Tryptic peptides of every protein in the FASTA files, sorted and unique.

    Cleaves with the ExPASy trypsin rule (after K/R, not before P) allowing
    `cfg.missed_cleavages`, keeps lengths `cfg.min_length`..`cfg.max_length`, and
    drops peptides with a non-standard letter (X, U, B, Z, O), which have no
    single mass. Peptides are bare letters; `random_peptide` makes tokens.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    peptides: set[str] = set()
    for path in paths:
        with fasta.read(str(path)) as proteins:
            for _, sequence in proteins:
                peptides.update(
                    parser.cleave(
                        sequence.upper(),
                        parser.expasy_rules["trypsin"],
                        missed_cleavages=cfg.missed_cleavages,
                        min_length=cfg.min_length,
                        max_length=cfg.max_length,
                    )
                )
    return sorted(p for p in peptides if STANDARD_RESIDUES.issuperset(p))


def random_peptide(
    peptides: Sequence[str], rng: np.random.Generator, cfg: SimulationConfig
) -> list[str]:
    """Pick a peptide and decorate it with variable modifications, as tokens.

    C is always ``C+57.021`` (fixed carbamidomethylation); each M is oxidised with
    `cfg.oxidation_rate`, each N/Q deamidated with `cfg.deamidation_rate`, and the
    N-terminus modified with `cfg.n_terminal_rate` (kinds in `N_TERMINAL_WEIGHTS`).
    I stays I (it weighs what L weighs).
    """
    peptide = peptides[rng.integers(len(peptides))]
    draws = rng.random(len(peptide) + 2)
    tokens = []
    for residue, draw in zip(peptide, draws, strict=False):
        if residue == "C":
            tokens.append("C+57.021")
        elif residue == "M" and draw < cfg.oxidation_rate:
            tokens.append("M+15.995")
        elif residue in "NQ" and draw < cfg.deamidation_rate:
            tokens.append(f"{residue}+0.984")
        else:
            tokens.append(residue)
    if draws[-2] < cfg.n_terminal_rate:
        labels = list(N_TERMINAL_WEIGHTS)
        weights = np.array(list(N_TERMINAL_WEIGHTS.values()))
        cumulative = np.cumsum(weights) / weights.sum()
        tokens.insert(0, labels[int(np.searchsorted(cumulative, draws[-1]))])
    return tokens


def charge_range(length: int) -> tuple[int, int]:
    """Lowest and highest plausible precursor charge of a peptide of `length` residues.

    Tryptic peptides carry about one proton per 8 residues plus the C-terminal
    K/R: charge 1 only up to 10 residues, charge 3 from 8, charge 4 from 16, and
    at least 2 above 10 and 3 above 24 residues.
    """
    lowest = 1 if length <= 10 else 2 if length <= 24 else 3
    highest = 2 + length // 8
    return lowest, max(lowest, highest)


def sample_charge(length: int, rng: np.random.Generator, cfg: SimulationConfig) -> int:
    """Draw a precursor charge from `cfg.charge_weights`, within `charge_range`."""
    weights = np.asarray(cfg.charge_weights, dtype=float)
    charges = np.arange(1, len(weights) + 1)
    lowest, highest = charge_range(length)
    weights = np.where((charges >= lowest) & (charges <= highest), weights, 0.0)
    if (
        weights.sum() == 0
    ):  # the configured charges are all implausible: take the nearest
        return int(np.clip(lowest, 1, len(charges)))
    return int(rng.choice(charges, p=weights / weights.sum()))


# ---------------------------------------------------------------------------
# Spectra
# ---------------------------------------------------------------------------
def ladder_intensities(residues: str) -> tuple[np.ndarray, np.ndarray]:
    """Compute the expected b and y 1+ intensities (no random spread), by ion number.

    Returns ``(b, y)`` ordered like `masses.fragment_mz` (b1.., y1..). Each
    cleavage site k (between residues k and k+1) gets one factor shared by b_k and
    y_(n-k): xP enhanced, Px suppressed, D/E-x enhanced. Fragments within about
    `LENGTH_SCALE` residues of the whole peptide are weaker, b1 is rare, and b2
    and y1 are strong: the real train spectra show them in almost every spectrum,
    so short fragments are otherwise not penalised.
    """
    b, y = ladder_intensities_by_cleavage([residues])
    return b[0], y[0][::-1]  # y by cleavage -> y1, y2, ...


def ladder_intensities_by_cleavage(
    peptides: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """`ladder_intensities` of several peptides at once, both by cleavage, (K, C).

    Row k's first len(peptides[k]) - 1 entries are the b and y intensities of
    its cleavages from the N-terminus (b_i and its complement y_(n-i)); the
    rest of the row is 0.
    """
    n = np.array([len(residues) for residues in peptides], np.int64)
    width = max(int(n.max()) if len(n) else 0, 1)
    codes = np.frombuffer(
        b"".join(residues.encode().ljust(width, b"\0") for residues in peptides),
        np.uint8,
    ).reshape(len(peptides), width)
    left, right = codes[:, :-1], codes[:, 1:]
    site = np.ones(left.shape)
    site[right == ord("P")] *= PROLINE_N_TERM
    site[left == ord("P")] *= PROLINE_C_TERM
    for residue, factor in ASPARTATE.items():
        site[left == ord(residue)] *= factor
    k = np.arange(1, width)  # b-ion length at each site; the y ion has n - k residues
    b = B_BASE * site * (1 - np.exp(-(n[:, None] - k) / LENGTH_SCALE))
    b[:, :1] *= B1
    b[:, 1:2] *= B2
    y = Y_BASE * site * (1 - np.exp(-k / LENGTH_SCALE))
    last = n >= 2  # y1 pairs with the last cleavage
    y[last, n[last] - 2] *= Y1
    inside = k[None, :] < n[:, None]
    return np.where(inside, b, 0.0), np.where(inside, y, 0.0)


def _rank_dropout(
    intensity: np.ndarray, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Keep-mask that drops a `rate` share of ions on average, the weakest first.

    The i-th strongest of m ions is dropped with probability r**(1/rate - 1), with
    r = (i + 0.5) / m: the mean is `rate`, strong ions survive and weak ones go, so
    dropout follows the intensity model's position and residue effects.
    """
    if intensity.size == 0:
        return np.zeros(0, dtype=bool)
    rate = float(np.clip(rate, 0.01, 0.99))
    rank = np.empty(intensity.size)
    rank[np.argsort(-intensity, kind="stable")] = np.arange(intensity.size)
    drop = ((rank + 0.5) / intensity.size) ** (1 / rate - 1)
    return rng.random(intensity.size) >= drop


def _lognormal(size: int, rng: np.random.Generator) -> np.ndarray:
    return np.exp(rng.normal(0.0, LOGNORMAL_SIGMA, size))


def _b_y_ions(
    tokens: list[str],
    residues: str,
    charge: int,
    dropout: float,
    rng: np.random.Generator,
    expected: tuple[np.ndarray, np.ndarray] | None = None,
    fade: Sequence[float] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw the b/y peaks that survive dropout: 1+ always, 2+ from charge 2 up.

    `expected`: the b and y 1+ intensities to spread (by ion number, as
    `ladder_intensities` gives them); the built-in model's when None.

    Returns their m/z, intensity and charge, and every b 1+ intensity before
    dropout, after any fade (a-ions derive from b ions whether or not the b ion
    is seen). 2+ ions
    take a share of their 1+ ion that grows with the fragment's length, and only
    `DOUBLY_KEEP` of the 1+ survival rate of them is seen. With `fade` (start,
    end; `cfg.high_charge_fade`) at precursor charge 3+, a fragment's 1+ ion
    also hands its intensity to its 2+ ion, none of it at `start` of the
    peptide's length and all of it from `end` on (`faded_share`).
    """
    n = len(residues)
    b_mz, y_mz = masses.fragment_mz(tokens, charge=1)
    b_expected, y_expected = expected or ladder_intensities(residues)
    ladder_mz = np.concatenate([b_mz, y_mz])
    ladder = np.concatenate([b_expected, y_expected]) * _lognormal(2 * (n - 1), rng)
    length = np.concatenate([np.arange(1, n), np.arange(1, n)]) / n  # of the peptide
    moved = faded_share(length, charge, fade)
    single = ladder if moved is None else ladder * (1 - moved)
    keep = _rank_dropout(single, dropout, rng)
    if moved is not None:
        keep &= single > 0  # wholly 2+
    mz, intensity = [ladder_mz[keep]], [single[keep]]
    ion_charge = [np.ones(keep.sum())]
    if charge >= 2:
        ratio = DOUBLY_CHARGED[min(charge, 3)]
        spread = _lognormal(ladder.size, rng)
        doubly = ladder * ratio * length * spread
        if moved is not None:
            doubly = doubly + ladder * moved * spread
        seen = DOUBLY_KEEP[min(charge, 3)] * (1 - dropout)
        keep2 = _rank_dropout(doubly, 1 - seen, rng)
        mz.append((ladder_mz[keep2] + masses.PROTON) / 2)
        intensity.append(doubly[keep2])
        ion_charge.append(np.full(keep2.sum(), 2.0))
    return (
        np.concatenate(mz),
        np.concatenate(intensity),
        np.concatenate(ion_charge),
        single[: n - 1],
    )


def faded_share(
    length: np.ndarray, charge: int, fade: Sequence[float]
) -> np.ndarray | None:
    """Share of each fragment's 1+ intensity that goes to its 2+ ion, or None.

    `length`: each fragment's share of the peptide's residues. At precursor
    charge 3+ with `fade` = (start, end), the share rises linearly from 0 at
    `start` to 1 at `end`: the extra protons sit on the longer fragments, as
    the training files' real charge-3 spectra show (few long 1+ fragments).
    None (nothing moves) below charge 3 or without `fade`.
    """
    if charge < 3 or not fade:
        return None
    start, end = fade
    return np.clip((length - start) / (end - start), 0.0, 1.0)


def _noise(
    count: int, neutral_mass: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `count` noise peaks: m/z uniform up to the peptide mass, many small.

    Intensities are lognormal around `NOISE_MEDIAN` of the base peak, capped at 1.
    """
    mz = rng.uniform(MIN_MZ, max(neutral_mass, MIN_MZ + 100), count)
    intensity = NOISE_MEDIAN * np.exp(rng.normal(0.0, NOISE_SIGMA, count))
    return mz, np.minimum(intensity, 1.0)


def simulate_spectrum(
    tokens: Sequence[str],
    charge: int,
    rng: np.random.Generator,
    cfg: SimulationConfig,
    difficulty: float,
    ref: SpectrumRef | None = None,
    expected: tuple[np.ndarray, np.ndarray] | None = None,
) -> Spectrum:
    """Simulate the HCD MS/MS spectrum of a peptide at a precursor charge.

    `expected` replaces the built-in b/y intensity model (`ladder_intensities`)
    with other expected intensities, e.g. ms2pip's (`predicted_ladders`).

    `difficulty` in [0, 1] scales what makes a spectrum hard: b/y dropout goes from
    `CLEAN_DROPOUT` to `cfg.dropout`; noise peaks from none to a Poisson mean of
    `cfg.noise_peaks`; each non-b/y ion (isotope, loss, a, immonium, internal,
    precursor) is kept with probability `difficulty`; and the precursor is the +1
    13C peak with probability `difficulty * cfg.isotope_error_rate`. Mass errors
    (`cfg.fragment_tol_ppm`, `cfg.precursor_tol_ppm`, Gaussian sd) apply at every
    difficulty. Intensities are scaled to a base peak of 1.
    """
    difficulty = float(np.clip(difficulty, 0.0, 1.0))
    tokens = list(tokens)
    residues = masses.strip_modifications(tokens)
    neutral_mass = masses.peptide_mass(tokens)
    b_mz, _ = masses.fragment_mz(tokens, charge=1)
    dropout = CLEAN_DROPOUT + (cfg.dropout - CLEAN_DROPOUT) * difficulty
    by_mz, by_intensity, by_charge, b_intensity = _b_y_ions(
        tokens, residues, charge, dropout, rng, expected, cfg.high_charge_fade
    )
    mz_parts, intensity_parts = [by_mz], [by_intensity]
    if difficulty > 0 and by_mz.size:
        floor = DETECTION * max(by_intensity.max(), b_intensity.max())
        extras = _extra_ions(
            tokens, residues, charge, neutral_mass, b_mz, by_mz, by_intensity,
            by_charge, b_intensity, rng,
        )  # fmt: skip
        for extra_mz, extra_intensity in extras:
            chosen = rng.random(extra_mz.size) < difficulty
            chosen &= extra_intensity >= floor
            mz_parts.append(extra_mz[chosen])
            intensity_parts.append(extra_intensity[chosen])
    mz = np.concatenate(mz_parts)
    mz = mz * (1 + rng.normal(0.0, cfg.fragment_tol_ppm * 1e-6, mz.size))
    intensity = np.concatenate(intensity_parts)
    intensity = intensity / intensity.max() if intensity.size else intensity

    noise_mz, noise = _noise(
        rng.poisson(difficulty * cfg.noise_peaks), neutral_mass, rng
    )
    mz = np.concatenate([mz, noise_mz])
    intensity = np.concatenate([intensity, noise])
    inside = mz >= MIN_MZ
    mz, intensity = mz[inside], intensity[inside]
    order = np.argsort(mz, kind="stable")
    intensity = intensity[order]
    if intensity.size:
        intensity = intensity / intensity.max()

    isotope = int(rng.random() < difficulty * cfg.isotope_error_rate)
    precursor = (
        masses.precursor_mz(tokens, charge) + isotope * masses.C13_SPACING / charge
    )
    precursor *= 1 + rng.normal(0.0, cfg.precursor_tol_ppm * 1e-6)
    peptide = masses.format_peptide(tokens)
    return Spectrum(
        ref=ref or SpectrumRef("synthetic", 0, peptide),
        mz=mz[order].astype(np.float64),
        intensity=np.maximum(intensity, np.finfo(np.float32).tiny).astype(np.float32),
        precursor_mz=float(precursor),
        charge=int(charge),
        peptide=peptide,
    )


def _extra_ions(
    tokens: list[str],
    residues: str,
    charge: int,
    neutral_mass: float,
    b_mz: np.ndarray,
    by_mz: np.ndarray,
    by_intensity: np.ndarray,
    by_charge: np.ndarray,
    b_intensity: np.ndarray,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Draw the non-b/y peaks of a realistic spectrum, as (m/z, intensity) groups.

    Intensities are on the same scale as the b/y ladder: isotopes of every b/y
    peak (averagine ratio), H2O/NH3 losses, a-ions, immonium ions, internal
    fragments and the precursor remnants.
    """
    groups = []
    # Isotopes: M+1 and M+2 of each observed b/y peak, Poisson in the fragment mass.
    lam = (by_mz * by_charge - by_charge * masses.PROTON) * ISOTOPE_PER_DA
    for k, factor in ((1, lam), (2, lam**2 / 2)):
        seen = rng.random(by_mz.size) < ISOTOPE_KEEP
        groups.append(
            (
                (by_mz + k * masses.C13_SPACING / by_charge)[seen],
                (by_intensity * factor)[seen],
            )
        )
    # Neutral losses (singly charged ions only) and a-ions.
    singly = by_charge == 1
    for loss in (masses.H2O, masses.NH3):
        groups.append(
            (
                by_mz[singly] - loss,
                by_intensity[singly] * NEUTRAL_LOSS * _lognormal(singly.sum(), rng),
            )
        )
    a_scale = np.full(b_mz.size, A_ION)
    a_scale[1:2] = A2 / B_BASE  # a2 rivals b2 (b2 -> a2 + CO is fast)
    groups.append(
        (b_mz - masses.CO, b_intensity * a_scale * _lognormal(b_mz.size, rng))
    )
    # Immonium ions: residue - CO + proton, one per distinct residue.
    present = sorted({t for t in tokens if t not in masses.N_TERMINAL_MODIFICATIONS})
    groups.append(
        (
            np.array(
                [masses.token_mass(t) - masses.CO + masses.PROTON for t in present]
            ),
            np.array([IMMONIUM.get(t[0], IMMONIUM_OTHER) for t in present])
            * _lognormal(len(present), rng),
        )
    )
    # Internal b-type fragments: residues i..j-1 with 2 <= j - i <= 5, none terminal.
    n = len(residues)
    if n >= 4:
        offset = 1 if tokens[0] in masses.N_TERMINAL_MODIFICATIONS else 0
        residue_masses = np.array([masses.token_mass(t) for t in tokens[offset:]])
        cumulative = np.concatenate([[0.0], np.cumsum(residue_masses)])
        count = n
        start = rng.integers(1, n - 2, count)
        stop = np.minimum(start + rng.integers(2, 6, count), n - 1)
        good = stop - start >= 2
        internal = cumulative[stop[good]] - cumulative[start[good]] + masses.PROTON
        groups.append((internal, INTERNAL * _lognormal(internal.size, rng)))
    # Precursor remnants: the intact precursor and its water loss, at its own charge.
    remnant = np.array([neutral_mass, neutral_mass - masses.H2O])
    groups.append(
        (
            (remnant + charge * masses.PROTON) / charge,
            PRECURSOR * _lognormal(2, rng),
        )
    )
    return groups


def simulate_batch(
    peptides: Sequence[str],
    n: int,
    rng: np.random.Generator,
    cfg: SimulationConfig,
    difficulty: float,
) -> list[Spectrum]:
    """Simulate `n` spectra of random modified peptides at plausible charges.

    Each spectrum's ref is ``SpectrumRef("synthetic", i, peptide)``. With
    `cfg.intensity_model` "ms2pip" the b/y intensities are ms2pip's
    (`predicted_ladders`), predicted for the whole batch at once, so its
    peptides are drawn first: the same seed gives other spectra than the
    built-in model's (whose stream is unchanged), from the same distribution.
    """
    if cfg.intensity_model != "ms2pip":
        spectra = []
        for i in range(n):
            tokens = random_peptide(peptides, rng, cfg)
            charge = sample_charge(len(masses.strip_modifications(tokens)), rng, cfg)
            ref = SpectrumRef("synthetic", i, masses.format_peptide(tokens))
            spectra.append(simulate_spectrum(tokens, charge, rng, cfg, difficulty, ref))
        return spectra
    drawn = []
    for _ in range(n):
        tokens = random_peptide(peptides, rng, cfg)
        drawn.append(
            (tokens, sample_charge(len(masses.strip_modifications(tokens)), rng, cfg))
        )
    return [
        simulate_spectrum(
            tokens,
            charge,
            rng,
            cfg,
            difficulty,
            SpectrumRef("synthetic", i, masses.format_peptide(tokens)),
            ladder,
        )
        for i, ((tokens, charge), ladder) in enumerate(
            zip(drawn, predicted_ladders(drawn), strict=True)
        )
    ]


def predicted_ladders(
    drawn: Sequence[tuple[list[str], int]],
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """ms2pip's b and y 1+ intensities of (tokens, charge) pairs, by ion number.

    Scaled to the built-in model's tallest ion, so noise and the other ion
    types keep their levels; None (built-in model) where ms2pip cannot predict.
    """
    from peptrm import predicted  # ms2pip is optional

    found = predicted.predict_by_charge(
        [tokens for tokens, _ in drawn], [charge for _, charge in drawn]
    )
    out: list = [None] * len(drawn)
    for i, ((tokens, _), intensities) in enumerate(zip(drawn, found, strict=True)):
        if intensities is None:
            continue
        b, y = intensities  # by cleavage: y[k] is the y ion of cleavage k
        b_ref, y_ref = ladder_intensities(masses.strip_modifications(tokens))
        top = max(b.max(), y.max())
        if top <= 0:
            continue
        scale = max(b_ref.max(), y_ref.max()) / top
        out[i] = (b * scale, y[::-1] * scale)  # y by ion number, as y1..
    return out


def augment(
    spectrum: Spectrum,
    rng: np.random.Generator,
    dropout: float,
    noise_peaks: float,
    intensity_sd: float,
    shift_ppm: float,
) -> Spectrum:
    """A perturbed copy of a real labelled spectrum, drawn anew at every use.

    About 1,800 real training spectra are memorised within a few thousand
    batches; perturbing them each time they are drawn keeps the peaks a model
    can rely on (the ladder's pattern) and blurs the ones it could memorise. A
    `dropout` share of peaks goes (the weakest more often, as in
    `_rank_dropout`), a Poisson(`noise_peaks`) number of noise peaks comes,
    every intensity is multiplied by a lognormal of sd `intensity_sd`, and each
    m/z moves by a Gaussian of sd `shift_ppm` ppm. The label is unchanged.
    """
    mz, intensity = (
        spectrum.mz.astype(np.float64),
        spectrum.intensity.astype(np.float64),
    )
    if intensity.size and dropout > 0:
        keep = _rank_dropout(intensity, dropout, rng)
        mz, intensity = mz[keep], intensity[keep]
    intensity = intensity * np.exp(rng.normal(0.0, intensity_sd, intensity.size))
    mz = mz * (1 + rng.normal(0.0, shift_ppm * 1e-6, mz.size))
    top = float(intensity.max()) if intensity.size else 1.0
    neutral = masses.mz_to_mass(spectrum.precursor_mz, spectrum.charge)
    noise_mz, noise = _noise(int(rng.poisson(noise_peaks)), neutral, rng)
    mz = np.concatenate([mz, noise_mz])
    intensity = np.concatenate([intensity, noise * top])
    order = np.argsort(mz, kind="stable")
    intensity = intensity[order]
    if intensity.size:
        intensity = intensity / intensity.max()
    return Spectrum(
        ref=spectrum.ref,
        mz=mz[order],
        intensity=np.maximum(intensity, np.finfo(np.float32).tiny).astype(np.float32),
        precursor_mz=spectrum.precursor_mz,
        charge=spectrum.charge,
        peptide=spectrum.peptide,
        label_problem=spectrum.label_problem,
    )


# ---------------------------------------------------------------------------
# Wrong drafts: what a search hands back to the recursion
# ---------------------------------------------------------------------------
# Residue tokens a draft may hold at any position (no STOP, no N-terminal mod).
_RESIDUE_TOKENS = np.array(
    [i for i in range(1, len(masses.VOCAB)) if i not in masses.N_TERMINAL_INDICES]
)
NEAR_MASS_DA = 1.1  # tokens this close in mass are the search's usual confusions
PAIR_MASS_DA = 0.05  # a residue pair this close to one residue (GG ~ N) is a swap


def _near_mass_tokens() -> dict[int, np.ndarray]:
    """For each residue token, the others within `NEAR_MASS_DA` (K/Q, N/D+...)."""
    weights = masses.VOCAB_MASSES[_RESIDUE_TOKENS]
    near = {}
    for token, mass in zip(_RESIDUE_TOKENS, weights, strict=True):
        close = _RESIDUE_TOKENS[
            (np.abs(weights - mass) < NEAR_MASS_DA) & (_RESIDUE_TOKENS != token)
        ]
        if close.size:
            near[int(token)] = close
    return near


def _pair_swaps() -> dict[int, list[tuple[int, int]]]:
    """For each residue token, the residue pairs of (almost) its mass (N ~ GG)."""
    weights = masses.VOCAB_MASSES
    swaps: dict[int, list[tuple[int, int]]] = {}
    for single in _RESIDUE_TOKENS:
        for a in _RESIDUE_TOKENS:
            for b in _RESIDUE_TOKENS:
                if abs(weights[a] + weights[b] - weights[single]) < PAIR_MASS_DA:
                    swaps.setdefault(int(single), []).append((int(a), int(b)))
    return swaps


NEAR_MASS = _near_mass_tokens()
PAIR_SWAPS = _pair_swaps()
PAIR_OF = {pair: single for single, pairs in PAIR_SWAPS.items() for pair in pairs}
DRAFT_ERROR_KINDS = ("substitute", "near_mass", "swap", "pair")


def draft_errors(
    tokens: np.ndarray, rng: np.random.Generator, mean_errors: float
) -> np.ndarray:
    """A wrong draft of a peptide, like the ones the search feeds back.

    `tokens` are a peptide's token indices padded with STOP (L,). A Poisson
    (`mean_errors`) number of errors (none is allowed: the draft may be right)
    are made, each one of `DRAFT_ERROR_KINDS`: a random residue, a residue of
    nearly the same mass (K/Q, M+15.995/F), two neighbours swapped (right
    mass, wrong order), or a residue and the pair of its mass exchanged (N and
    GG, Q and GA), which shifts every later position. An N-terminal
    modification stays. Returns the draft, padded to L.
    """
    length = len(tokens)
    draft = [int(t) for t in tokens if t != masses.STOP_INDEX]
    first = 1 if draft and draft[0] in masses.N_TERMINAL_INDICES else 0
    for _ in range(int(rng.poisson(mean_errors))):
        n = len(draft) - first
        if n < 2:
            break
        i = first + int(rng.integers(n))
        kind = DRAFT_ERROR_KINDS[int(rng.integers(len(DRAFT_ERROR_KINDS)))]
        if kind == "near_mass" and draft[i] in NEAR_MASS:
            draft[i] = int(rng.choice(NEAR_MASS[draft[i]]))
        elif kind == "swap" and i + 1 < len(draft) and draft[i] != draft[i + 1]:
            draft[i], draft[i + 1] = draft[i + 1], draft[i]
        elif (
            kind == "pair"
            and i + 1 < len(draft)
            and (pair := (draft[i], draft[i + 1])) in PAIR_OF
        ):
            draft[i : i + 2] = [PAIR_OF[pair]]
        elif kind == "pair" and draft[i] in PAIR_SWAPS:
            options = PAIR_SWAPS[draft[i]]
            draft[i : i + 1] = list(options[int(rng.integers(len(options)))])
        else:
            draft[i] = int(rng.choice(_RESIDUE_TOKENS))
    draft = draft[:length]
    return np.array(draft + [masses.STOP_INDEX] * (length - len(draft)), np.int64)


def infill_mask(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions (L,) of a peptide's draft given, True, around one blank stretch.

    `tokens` are a peptide's token indices padded with STOP (L,). A stretch of
    1 to n of its n tokens is left blank. Half the time the rest of the draft is
    given (the stretch lies between known ends); otherwise everything from the
    stretch on is blank too, the length included (only the start is known).
    """
    n = int(np.sum(tokens != masses.STOP_INDEX))
    given = np.ones(len(tokens), dtype=bool)
    if n == 0:
        return given
    size = int(rng.integers(1, n + 1))
    start = int(rng.integers(0, n - size + 1))
    if rng.random() < 0.5:
        given[start : start + size] = False
    else:
        given[start:] = False
    return given


# ---------------------------------------------------------------------------
# Checking the model against real spectra
# ---------------------------------------------------------------------------
def _match_intensity(
    mz: np.ndarray, intensity: np.ndarray, targets: np.ndarray, tol_da: float
) -> np.ndarray:
    """Most intense peak within `tol_da` of each target m/z (0 where none)."""
    low = np.searchsorted(mz, targets - tol_da, side="left")
    high = np.searchsorted(mz, targets + tol_da, side="right")
    out = np.zeros(targets.size)
    for i in np.flatnonzero(high > low):
        out[i] = intensity[low[i] : high[i]].max()
    return out


def _explained(mz: np.ndarray, targets: np.ndarray, tol_da: float) -> np.ndarray:
    """Which peaks lie within `tol_da` of any target m/z."""
    targets = np.sort(targets)
    index = np.clip(np.searchsorted(targets, mz), 1, max(targets.size - 1, 1))
    nearest = np.minimum(
        np.abs(mz - targets[index - 1]),
        np.abs(mz - targets[np.minimum(index, targets.size - 1)]),
    )
    return nearest <= tol_da


STATISTICS = {
    "spectra": "spectra measured",
    "peaks": "peaks per spectrum (median)",
    "by_peak_fraction": "peaks explained by b/y 1+,2+ (median)",
    "by_intensity_fraction": "intensity explained by b/y 1+,2+ (median)",
    "by1_present": "b/y 1+ ions present (median)",
    "b1_present": "b 1+ ions present (mean)",
    "y1_present": "y 1+ ions present (mean)",
    "y_share": "y share of b/y 1+ intensity (median)",
    "b1_ion_present": "b1 present",
    "b2_ion_present": "b2 present",
    "y1_ion_present": "y1 present",
    "short_present": "b/y 1+ present, fragment < 1/3 of peptide",
    "middle_present": "b/y 1+ present, fragment 1/3-2/3 of peptide",
    "long_present": "b/y 1+ present, fragment > 2/3 of peptide",
    "doubly_present": "b/y 2+ present (charge >= 2)",
    "proline_effect": "y at xP site vs other sites (mean intensity ratio)",
    "aspartate_effect": "y at D/E-x site vs other sites (mean intensity ratio)",
    "isotope_present": "strongest b/y 1+ ions with a +1 isotope peak",
    "unexplained_median": "unexplained peak / base peak (median)",
}


def fragment_statistics(spectra: Iterable[Spectrum], tol_da: float) -> dict[str, float]:
    """Measure how b/y ions show up in annotated spectra (real or simulated).

    Peaks are matched to b/y ions within `tol_da` (the most intense peak in the
    window counts). Per-spectrum fractions are summarised by their median; ion
    presence by its mean over all ions. The proline (xP) and aspartate (D/E-x)
    effects compare a y ion's intensity, relative to the mean y intensity of its
    spectrum (0 when absent), at those sites against all other sites. Spectra
    without a parsable peptide are skipped. Keys and meanings are in `STATISTICS`.
    """
    per_spectrum: dict[str, list[float]] = {
        k: [] for k in ("peaks", "by_peak", "by_intensity", "by1", "y_share", "unexpl")
    }
    pooled: dict[str, list[np.ndarray]] = {
        k: [] for k in ("b", "y", "b1", "b2", "y1", "short", "middle", "long", "doubly")
    }
    pooled.update({k: [] for k in ("pro", "pro_other", "asp", "asp_other", "isotope")})
    for spectrum in spectra:
        try:
            tokens = masses.parse(spectrum.peptide or "")
        except masses.UnknownResidueError:
            continue
        residues = masses.strip_modifications(tokens)
        n = len(residues)
        if n < 3 or spectrum.mz.size == 0:
            continue
        order = np.argsort(spectrum.mz)
        mz = np.asarray(spectrum.mz, dtype=float)[order]
        intensity = np.asarray(spectrum.intensity, dtype=float)[order]
        b_mz, y_mz = masses.fragment_mz(tokens, 1)
        b = _match_intensity(mz, intensity, b_mz, tol_da)
        y = _match_intensity(mz, intensity, y_mz, tol_da)
        targets = np.concatenate([b_mz, y_mz])
        if spectrum.charge >= 2:
            doubly_mz = (targets + masses.PROTON) / 2
            doubly = _match_intensity(mz, intensity, doubly_mz, tol_da)
            pooled["doubly"].append(doubly > 0)
            targets = np.concatenate([targets, doubly_mz])
        explained = _explained(mz, targets, tol_da)
        per_spectrum["peaks"].append(mz.size)
        per_spectrum["by_peak"].append(explained.mean())
        per_spectrum["by_intensity"].append(
            intensity[explained].sum() / intensity.sum()
        )
        per_spectrum["by1"].append(np.mean(np.concatenate([b, y]) > 0))
        if b.sum() + y.sum() > 0:
            per_spectrum["y_share"].append(y.sum() / (b.sum() + y.sum()))
        if (~explained).any():
            per_spectrum["unexpl"].append(
                np.median(intensity[~explained]) / intensity.max()
            )
        pooled["b"].append(b > 0)
        pooled["y"].append(y > 0)
        pooled["b1"].append(b[:1] > 0)
        pooled["b2"].append(b[1:2] > 0)
        pooled["y1"].append(y[:1] > 0)
        length = np.concatenate([np.arange(1, n), np.arange(1, n)]) / n
        present = np.concatenate([b, y]) > 0
        pooled["short"].append(present[length < 1 / 3])
        pooled["middle"].append(present[(length >= 1 / 3) & (length <= 2 / 3)])
        pooled["long"].append(present[length > 2 / 3])
        if y.sum() > 0:
            relative = (y / y.mean())[::-1]  # by site k = 1..n-1 (site k holds y_(n-k))
            proline = np.array([residues[k] == "P" for k in range(1, n)])
            acidic = np.array([residues[k - 1] in "DE" for k in range(1, n)])
            pooled["pro"].append(relative[proline])
            pooled["pro_other"].append(relative[~proline])
            pooled["asp"].append(relative[acidic])
            pooled["asp_other"].append(relative[~acidic])
        ions = np.concatenate([b_mz, y_mz])
        strong = np.concatenate([b, y])
        top = np.argsort(-strong)[: max(1, int((strong > 0).sum() // 2))]
        top = top[strong[top] > 0]
        isotope = _match_intensity(
            mz, intensity, ions[top] + masses.C13_SPACING, tol_da
        )
        pooled["isotope"].append(isotope > 0)

    def mean(key: str) -> float:
        values = np.concatenate(pooled[key]) if pooled[key] else np.zeros(0)
        return float(values.mean()) if values.size else float("nan")

    def median(key: str) -> float:
        values = per_spectrum[key]
        return float(np.median(values)) if values else float("nan")

    return {
        "spectra": float(len(per_spectrum["peaks"])),
        "peaks": median("peaks"),
        "by_peak_fraction": median("by_peak"),
        "by_intensity_fraction": median("by_intensity"),
        "by1_present": median("by1"),
        "b1_present": mean("b"),
        "y1_present": mean("y"),
        "y_share": median("y_share"),
        "b1_ion_present": mean("b1"),
        "b2_ion_present": mean("b2"),
        "y1_ion_present": mean("y1"),
        "short_present": mean("short"),
        "middle_present": mean("middle"),
        "long_present": mean("long"),
        "doubly_present": mean("doubly"),
        "proline_effect": mean("pro") / mean("pro_other"),
        "aspartate_effect": mean("asp") / mean("asp_other"),
        "isotope_present": mean("isotope"),
        "unexplained_median": median("unexpl"),
    }
