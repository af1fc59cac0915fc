import gzip
from importlib import resources
from xml.etree import ElementTree

import numpy as np
import pytest
from pyteomics import mass

from peptrm import masses


def test_fragment_and_precursor_mz_of_peptide():
    b, y = masses.fragment_mz("PEPTIDE", charge=1)
    assert b[1] == pytest.approx(227.10263, abs=1e-5)  # b2 = P + E + proton
    assert y[0] == pytest.approx(148.06043, abs=1e-5)  # y1 = E + H2O + proton
    assert y[5] == pytest.approx(703.31448, abs=1e-5)  # y6 = EPTIDE + H2O + proton
    assert masses.precursor_mz("PEPTIDE", 2) == pytest.approx(400.68726, abs=1e-5)


def test_constants_match_physics():
    assert masses.H2O == pytest.approx(18.010565, abs=1e-6)
    assert masses.PROTON == pytest.approx(1.007276, abs=1e-6)
    assert masses.C13_SPACING == pytest.approx(1.003355, abs=1e-6)


@pytest.mark.parametrize(
    "label",
    list(masses.SIDE_CHAIN_MODIFICATIONS) + list(masses.N_TERMINAL_MODIFICATIONS),
)
def test_modification_labels_agree_with_their_chemistry(label):
    """Each label's number is its computed delta to three decimals."""
    if label in masses.SIDE_CHAIN_MODIFICATIONS:
        residue = masses.SIDE_CHAIN_MODIFICATIONS[label][0]
        delta = masses.TOKEN_MASSES[label] - masses.RESIDUE_MASSES[residue]
        written = float(label[1:])
    else:
        delta = masses.TOKEN_MASSES[label]
        written = sum(
            float(p) for p in label.replace("-", " -").replace("+", " +").split()
        )
    assert round(delta, 3) == pytest.approx(written, abs=1e-9)


def test_peptide_mass_agrees_with_pyteomics_for_modified_peptides():
    # +42.011 acetyl, M+15.995 oxidation, C+57.021 carbamidomethyl: pyteomics formulae
    ours = masses.peptide_mass("+42.011M+15.995PEC+57.021K")
    reference = (
        mass.calculate_mass(sequence="MPECK")
        + mass.calculate_mass(formula="C2H2O")
        + mass.calculate_mass(formula="O")
        + mass.calculate_mass(formula="C2H3NO")
    )
    assert ours == pytest.approx(reference, abs=1e-6)


def test_fragment_ladder_agrees_with_pyteomics_ion_formulas():
    peptide = "LVNELTEFAK"  # a BSA tryptic peptide
    b, y = masses.fragment_mz(peptide, charge=2)
    for i in range(1, len(peptide)):
        assert b[i - 1] == pytest.approx(
            mass.fast_mass(peptide[:i], ion_type="b", charge=2), abs=1e-6
        )
        assert y[i - 1] == pytest.approx(
            mass.fast_mass(peptide[-i:], ion_type="y", charge=2), abs=1e-6
        )


def test_real_precursors_match_their_annotation(shared_data):
    """PEPMASS of real annotated spectra agrees with our precursor m/z within 20 ppm."""
    from peptrm.io import Spectrum, read_spectra

    checked = 0
    for record in read_spectra(shared_data / "dev" / "massivekb_dev.mgf"):
        if not isinstance(record, Spectrum):
            continue
        theoretical = masses.precursor_mz(record.peptide, record.charge)
        errors = [
            abs(
                masses.ppm_error(
                    record.precursor_mz - k * masses.C13_SPACING / record.charge,
                    theoretical,
                )
            )
            for k in (0, 1)
        ]
        assert min(errors) < 20, (str(record.ref), record.peptide)
        checked += 1
    assert checked > 400


def test_parse_casanovo_notation_and_back():
    text = "+43.006-17.027Q+0.984TC+57.021IN+0.984M+15.995K"
    tokens = masses.parse(text)
    assert tokens == [
        "+43.006-17.027",
        "Q+0.984",
        "T",
        "C+57.021",
        "I",
        "N+0.984",
        "M+15.995",
        "K",
    ]
    assert masses.format_peptide(tokens) == text
    assert masses.strip_modifications(tokens) == "QTCINMK"


@pytest.mark.parametrize(
    "bad, residue",
    [("PEPTIDEX", "X"), ("PEPCK", "C"), ("PEPS+79.966K", "S+79.966"), ("", "(empty)")],
)
def test_unknown_residues_are_named(bad, residue):
    with pytest.raises(masses.UnknownResidueError) as error:
        masses.parse(bad)
    assert repr(residue) in str(error.value)


def test_proforma_and_mztab_modifications():
    assert masses.to_proforma("+42.011M+15.995C+57.021K") == (
        "[Acetyl]-M[Oxidation]C[Carbamidomethyl]K"
    )
    assert masses.mztab_modifications("+42.011M+15.995C+57.021K") == (
        "0-UNIMOD:1,1-UNIMOD:35,2-UNIMOD:4"
    )
    assert masses.mztab_modifications("PEPTIDE") == "null"
    assert masses.to_proforma("+43.006-17.027PEPK") == "[Carbamyl][Ammonia-loss]-PEPK"
    assert masses.mztab_modifications("+43.006-17.027PEPK") == "0-UNIMOD:5,0-UNIMOD:385"


def _unimod_table() -> dict[int, dict[str, str]]:
    """Unimod's modifications table as psims ships it (offline), by accession."""
    table = (
        resources.files("psims.controlled_vocabulary.vendor") / "unimod_tables.xml.gz"
    )
    root = ElementTree.fromstring(gzip.decompress(table.read_bytes()))
    ns = "{http://www.unimod.org/xmlns/schema/unimod_tables_1}"
    return {
        int(row.get("record_id")): row.attrib for row in root.find(ns + "modifications")
    }


def test_every_label_maps_to_unimod_entries_of_its_mass():
    unimod = _unimod_table()
    labels = {*masses.SIDE_CHAIN_MODIFICATIONS, *masses.N_TERMINAL_MODIFICATIONS}
    assert set(masses.UNIMOD) == labels
    for label, entries in masses.UNIMOD.items():
        if label in masses.SIDE_CHAIN_MODIFICATIONS:
            residue, _ = masses.SIDE_CHAIN_MODIFICATIONS[label]
            delta = masses.TOKEN_MASSES[label] - masses.RESIDUE_MASSES[residue]
        else:
            delta = masses.TOKEN_MASSES[label]
        unimod_delta = sum(float(unimod[a]["mono_mass"]) for a, _ in entries)
        assert unimod_delta == pytest.approx(delta, abs=1e-5), label
        for accession, name in entries:
            assert unimod[accession]["ex_code_name"] == name, (label, accession)
    # the label's own number is the sum of its parts, as written (3 decimals)
    assert sum(
        float(unimod[a]["mono_mass"]) for a, _ in masses.UNIMOD["+43.006-17.027"]
    ) == pytest.approx(43.006 - 17.027, abs=1e-3)


def test_encode_folds_isoleucine_and_pads_with_stop():
    encoded = masses.encode("PIEK", 6)
    assert masses.decode(encoded) == ["P", "L", "E", "K"]
    assert list(encoded[4:]) == [masses.STOP_INDEX] * 2
    with pytest.raises(ValueError):
        masses.encode("PEPTIDEK", 4)


def test_vocab_masses_line_up_with_tokens():
    for index, token in enumerate(masses.VOCAB[1:], start=1):
        assert masses.VOCAB_MASSES[index] == masses.TOKEN_MASSES[token]
    assert masses.VOCAB_MASSES[masses.STOP_INDEX] == 0
    assert "I" not in masses.VOCAB and np.all(np.diff(masses.N_TERMINAL_INDICES) == 1)


def test_mass_proforma_writes_deltas_from_pyteomics():
    assert masses.to_mass_proforma("+42.011M+15.995C+57.021K") == (
        "[+42.010565]-M[+15.994915]C[+57.021464]K"  # Unimod 1, 35 and 4 deltas
    )
    assert masses.to_mass_proforma("+43.006-17.027PEPK") == "[+25.979265]-PEPK"
    assert masses.to_mass_proforma("PEPTIDE") == "PEPTIDE"
