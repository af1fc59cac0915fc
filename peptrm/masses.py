"""Residues, modifications and tokens; peptide, precursor and fragment masses.

This module is the only home of every mass in PepTRM. Masses come from pyteomics'
tables; modifications are written as elemental compositions, so no mass is typed.
Peptides are written in Casanovo / nine-species notation: residues are letters,
a modified residue carries its delta (``M+15.995``), an N-terminal modification
is a prefix (``+42.011PEPTIDE``) and cysteine is always ``C+57.021``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pyteomics import mass

H2O = mass.calculate_mass(formula="H2O")  # 18.010565
PROTON = mass.nist_mass["H+"][0][0]  # 1.007276
C13_SPACING = mass.nist_mass["C"][13][0] - mass.nist_mass["C"][12][0]  # 1.003355
CO = mass.calculate_mass(formula="CO")  # 27.994915: an a ion is its b ion - CO
NH3 = mass.calculate_mass(formula="NH3")  # 17.026549: ammonia loss
MAX_CHARGE = 10  # highest precursor charge we accept; beyond is treated as absurd

# Fragment ions read off one cleavage. Each is (name, side, charge, offset in Da
# added to the singly/doubly charged m/z): b, y, b++, y++, a = b - CO, water and
# ammonia losses, the +1 13C isotope of b and y, and y computed from a precursor
# that was its own +1 13C peak (every y then sits one C13 spacing lower).
FRAGMENT_IONS: tuple[tuple[str, str, int, float], ...] = (
    ("b", "b", 1, 0.0),
    ("y", "y", 1, 0.0),
    ("b++", "b", 2, 0.0),
    ("y++", "y", 2, 0.0),
    ("a", "b", 1, -CO),
    ("b-H2O", "b", 1, -H2O),
    ("b-NH3", "b", 1, -NH3),
    ("y-H2O", "y", 1, -H2O),
    ("y-NH3", "y", 1, -NH3),
    ("b+iso", "b", 1, C13_SPACING),
    ("y+iso", "y", 1, C13_SPACING),
    ("y, precursor +1 iso", "y", 1, -C13_SPACING),
)
# The ladder ions proper (b, y, b++, y++): what the cleavage table scores and the
# peak annotator labels peaks as.
LADDER_IONS = FRAGMENT_IONS[:4]


def fragment_ion_mz(ion: tuple, b_mass, precursor_mass):
    """m/z of one `FRAGMENT_IONS` type of cleavages whose b fragments weigh `b_mass`.

    `b_mass` is the b fragment's residue sum (neutral) and `precursor_mass` the
    peptide's neutral mass, so the y fragment weighs their difference. Plain
    arithmetic: works on floats, NumPy arrays and torch tensors alike.
    """
    _, side, charge, offset = ion
    neutral = b_mass if side == "b" else precursor_mass - b_mass
    return charged_mz(neutral, charge, offset)


def charged_mz(neutral, charge, offset=0.0):
    """m/z of a fragment of `neutral` residue mass at `charge`, shifted by `offset`.

    Arrays of charges and offsets (`ion_table`) give many ion types at once.
    """
    return (neutral + charge * PROTON) / charge + offset


def ion_table(ions: Sequence[tuple] = FRAGMENT_IONS) -> tuple[list, list, list]:
    """Each ion type's (is a y ion, charge, offset) as three lists, in order."""
    return (
        [side == "y" for _, side, _, _ in ions],
        [float(charge) for _, _, charge, _ in ions],
        [offset for _, _, _, offset in ions],
    )


# The 20 residues; I and L share a composition, so they share a mass.
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
RESIDUE_MASSES: dict[str, float] = {
    aa: mass.std_aa_mass[aa] for aa in AMINO_ACIDS
}  # monoisotopic residue masses from pyteomics

# Side-chain modifications: label -> (residue, composition delta).
SIDE_CHAIN_MODIFICATIONS: dict[str, tuple[str, mass.Composition]] = {
    "C+57.021": (
        "C",
        mass.Composition({"H": 3, "C": 2, "N": 1, "O": 1}),
    ),  # carbamidomethyl
    "M+15.995": ("M", mass.Composition({"O": 1})),  # oxidation
    "N+0.984": ("N", mass.Composition({"H": -1, "N": -1, "O": 1})),  # deamidation
    "Q+0.984": ("Q", mass.Composition({"H": -1, "N": -1, "O": 1})),  # deamidation
}
# N-terminal modifications: label -> composition delta.
N_TERMINAL_MODIFICATIONS: dict[str, mass.Composition] = {
    "+42.011": mass.Composition({"C": 2, "H": 2, "O": 1}),  # acetyl
    "+43.006": mass.Composition({"C": 1, "H": 1, "N": 1, "O": 1}),  # carbamyl
    "-17.027": mass.Composition({"N": -1, "H": -3}),  # ammonia loss
    "+43.006-17.027": mass.Composition(
        {"C": 1, "H": -2, "O": 1}
    ),  # carbamyl + NH3 loss
}
# Unimod entries (accession, PSI-MS name) of each modification label, for mzTab
# and ProForma; their deltas add up to the label's composition (a test checks each
# against the Unimod table psims ships). `+43.006-17.027` is two modifications on
# one N-terminus, carbamylation then ammonia loss: Unimod has no single entry for
# H(-2) C O (25.979 Da) as a chemical modification.
UNIMOD: dict[str, tuple[tuple[int, str], ...]] = {
    "C+57.021": ((4, "Carbamidomethyl"),),
    "M+15.995": ((35, "Oxidation"),),
    "N+0.984": ((7, "Deamidated"),),
    "Q+0.984": ((7, "Deamidated"),),
    "+42.011": ((1, "Acetyl"),),
    "+43.006": ((5, "Carbamyl"),),
    "-17.027": ((385, "Ammonia-loss"),),
    "+43.006-17.027": ((5, "Carbamyl"), (385, "Ammonia-loss")),
}


def _composition_mass(composition: mass.Composition) -> float:
    return mass.calculate_mass(composition=composition)


# Every token's mass (residue tokens include their side-chain modification).
TOKEN_MASSES: dict[str, float] = {
    **{aa: m for aa, m in RESIDUE_MASSES.items() if aa != "C"},
    **{
        label: RESIDUE_MASSES[aa] + _composition_mass(delta)
        for label, (aa, delta) in SIDE_CHAIN_MODIFICATIONS.items()
    },
    **{
        label: _composition_mass(delta)
        for label, delta in N_TERMINAL_MODIFICATIONS.items()
    },
}

# Mean mass of the 20 residues: the unit in which the precursor-mass loss is measured.
MEAN_RESIDUE_MASS = float(np.mean(list(RESIDUE_MASSES.values())))

# The model's vocabulary. Index 0 is STOP: the position lies past the peptide's end
# (it doubles as padding). I is folded into L: they are indistinguishable by mass.
STOP = "$"
STOP_INDEX = 0
VOCAB: tuple[str, ...] = (
    STOP,
    *[aa for aa in AMINO_ACIDS if aa not in "CI"],
    *SIDE_CHAIN_MODIFICATIONS,
    *N_TERMINAL_MODIFICATIONS,
)
TOKEN_INDEX: dict[str, int] = {token: i for i, token in enumerate(VOCAB)}
N_TERMINAL_INDICES: tuple[int, ...] = tuple(
    TOKEN_INDEX[t] for t in N_TERMINAL_MODIFICATIONS
)
# Mass of every vocabulary token in index order (STOP weighs nothing).
VOCAB_MASSES = np.array([0.0] + [TOKEN_MASSES[t] for t in VOCAB[1:]])

_TOKEN_PATTERN = re.compile(r"([A-Z])([+-]\d+\.\d+)?")
_N_TERM_PATTERN = re.compile(r"^((?:[+-]\d+\.\d+)+)")


class UnknownResidueError(ValueError):
    """A peptide string holds a residue or modification outside the vocabulary."""

    def __init__(self, peptide: str, residue: str) -> None:
        known = " ".join(sorted(TOKEN_MASSES, key=lambda t: (len(t) > 1, t)))
        super().__init__(
            f"SEQ {peptide!r} has unknown residue {residue!r} (known: {known})"
        )
        self.peptide = peptide
        self.residue = residue


def parse(peptide: str) -> list[str]:
    """Split a Casanovo-notation peptide into tokens.

    ``+42.011M+15.995PEPC+57.021K`` becomes ``['+42.011', 'M+15.995', 'P', 'E',
    'P', 'C+57.021', 'K']``. I is kept as I here (it has a mass); `encode` folds it
    into L for the model.

    Raises
    ------
    UnknownResidueError
        For a letter or modification outside the vocabulary (such as ``X``, an
        unmodified ``C`` or ``S+79.966``).
    """
    peptide = peptide.strip()
    tokens: list[str] = []
    rest = peptide
    match = _N_TERM_PATTERN.match(rest)
    if match:
        label = match.group(1)
        if label not in N_TERMINAL_MODIFICATIONS:
            raise UnknownResidueError(peptide, label)
        tokens.append(label)
        rest = rest[match.end() :]
    position = 0
    while position < len(rest):
        match = _TOKEN_PATTERN.match(rest, position)
        if not match:
            raise UnknownResidueError(peptide, rest[position])
        token = match.group(0)
        if token != "I" and token not in TOKEN_MASSES:
            raise UnknownResidueError(peptide, token)
        tokens.append(token)
        position = match.end()
    if not tokens or tokens[-1] in N_TERMINAL_MODIFICATIONS:
        raise UnknownResidueError(peptide, peptide or "(empty)")
    return tokens


def as_tokens(peptide: str | Sequence[str]) -> list[str]:
    """A peptide as tokens: `parse` of Casanovo notation, or the tokens given."""
    return parse(peptide) if isinstance(peptide, str) else list(peptide)


def token_mass(token: str) -> float:
    """Mass of one token (I weighs what L weighs)."""
    return TOKEN_MASSES["L" if token == "I" else token]


def format_peptide(tokens: Sequence[str]) -> str:
    """Write tokens back in Casanovo notation (the inverse of `parse`)."""
    return "".join(tokens)


def strip_modifications(peptide: str | Sequence[str]) -> str:
    """The bare residue letters of a peptide (``M+15.995K`` -> ``MK``)."""
    return "".join(
        t[0] for t in as_tokens(peptide) if t not in N_TERMINAL_MODIFICATIONS
    )


def to_proforma(peptide: str | Sequence[str]) -> str:
    """Write a peptide in ProForma 2.0 with Unimod names.

    ``+42.011M+15.995K`` -> ``[Acetyl]-M[Oxidation]K``; a label made of two
    modifications writes both, as ProForma 2.0 allows on a terminus
    (``[Carbamyl][Ammonia-loss]-PEPTIDE``).
    """
    out = []
    for token in as_tokens(peptide):
        names = "".join(f"[{name}]" for _, name in UNIMOD.get(token, ()))
        if token in N_TERMINAL_MODIFICATIONS:
            out.append(f"{names}-")
        else:
            out.append(token[0] + names)
    return "".join(out)


def modification_delta(token: str) -> float:
    """Mass added by a token's modification (Da): 0 for a plain residue."""
    if token in N_TERMINAL_MODIFICATIONS:
        return TOKEN_MASSES[token]
    if token in SIDE_CHAIN_MODIFICATIONS:
        return TOKEN_MASSES[token] - RESIDUE_MASSES[token[0]]
    return 0.0


def to_mass_proforma(peptide: str | Sequence[str]) -> str:
    """Write a peptide in ProForma 2.0 with mass deltas instead of names.

    ``+42.011M+15.995K`` -> ``[+42.010565]-M[+15.994915]K``. Tools that resolve
    a named modification look it up in Unimod online (spectrum_utils does); a
    delta needs no look-up.
    """
    out = []
    for token in as_tokens(peptide):
        delta = modification_delta(token)
        if token in N_TERMINAL_MODIFICATIONS:
            out.append(f"[{delta:+.6f}]-")
        elif delta:
            out.append(f"{token[0]}[{delta:+.6f}]")
        else:
            out.append(token)
    return "".join(out)


def mztab_modifications(peptide: str | Sequence[str]) -> str:
    """The mzTab 1.0 ``modifications`` value: ``position-UNIMOD:id`` joined by commas.

    Positions count residues from 1; an N-terminal modification sits at 0. A
    label made of two Unimod entries gives two entries at its position. An
    unmodified peptide gives ``null``.
    """
    entries = []
    position = 0
    for token in as_tokens(peptide):
        if token not in N_TERMINAL_MODIFICATIONS:
            position += 1
        for accession, _ in UNIMOD.get(token, ()):
            entries.append(f"{position}-UNIMOD:{accession}")
    return ",".join(entries) if entries else "null"


def encode(peptide: str | Sequence[str], length: int) -> np.ndarray:
    """Token indices of a peptide padded with STOP to `length` (I folded into L).

    Raises
    ------
    ValueError
        If the peptide has more than `length` tokens.
    """
    tokens = as_tokens(peptide)
    if len(tokens) > length:
        raise ValueError(
            f"peptide {format_peptide(tokens)!r} has {len(tokens)} tokens, "
            f"more than {length}"
        )
    out = np.full(length, STOP_INDEX, dtype=np.int64)
    out[: len(tokens)] = [TOKEN_INDEX["L" if t == "I" else t] for t in tokens]
    return out


def decode(indices: Sequence[int]) -> list[str]:
    """Tokens of an index sequence, read up to the first STOP."""
    tokens = []
    for index in indices:
        if int(index) == STOP_INDEX:
            break
        tokens.append(VOCAB[int(index)])
    return tokens


def peptide_mass(peptide: str | Sequence[str]) -> float:
    """Neutral monoisotopic mass: the residues plus one water."""
    return sum(token_mass(t) for t in as_tokens(peptide)) + H2O


def mass_to_mz(neutral_mass: float, charge: int) -> float:
    """m/z of a neutral mass carrying `charge` protons."""
    return (neutral_mass + charge * PROTON) / charge


def mz_to_mass(mz: float, charge: int) -> float:
    """Neutral mass of an ion seen at `mz` with `charge` protons."""
    return mz * charge - charge * PROTON


def precursor_mz(peptide: str | Sequence[str], charge: int) -> float:
    """m/z of the [M + zH]z+ precursor ion."""
    return mass_to_mz(peptide_mass(peptide), charge)


def fragment_mz(
    peptide: str | Sequence[str], charge: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """B and y ion m/z at `charge`, each ordered by ion number (b1.., y1..).

    A peptide of n residues has n-1 of each; an N-terminal modification rides on
    every b ion and on no y ion.
    """
    tokens = as_tokens(peptide)
    masses = np.array([token_mass(t) for t in tokens])
    if tokens[0] in N_TERMINAL_MODIFICATIONS:
        masses = np.concatenate([[masses[0] + masses[1]], masses[2:]])
    prefix = np.cumsum(masses)[:-1]  # neutral b-ion residue sums, b1..b(n-1)
    suffix = np.cumsum(masses[::-1])[:-1] + H2O  # neutral y ions, y1..y(n-1)
    return (prefix + charge * PROTON) / charge, (suffix + charge * PROTON) / charge


def ppm_error(observed: float, theoretical: float) -> float:
    """Mass error of `observed` against `theoretical` in parts per million."""
    return (observed - theoretical) / theoretical * 1e6


def ppm_to_da(tol_ppm: float, mass_da: float) -> float:
    """Width in daltons of a ppm tolerance at `mass_da`."""
    return tol_ppm * mass_da * 1e-6


def isotope_shift(n_isotopes: int) -> float:
    """Neutral-mass offset of picking the n-th 13C isotope peak instead of the first."""
    return n_isotopes * C13_SPACING


def same_residue_mass(a: str, b: str, tol_da: float = 0.1) -> bool:
    """Whether two tokens weigh the same within `tol_da` (I vs L always do)."""
    return abs(token_mass(a) - token_mass(b)) <= tol_da
