"""Rebuild the files in tests/data from ../shared/data (see README.md).

Run from the repository root: ``python tests/data/make_test_files.py``.
"""

import base64
import struct
from pathlib import Path

HERE = Path(__file__).parent
SHARED = HERE.parents[2] / "shared" / "data"


def blocks(path: Path) -> list[list[str]]:
    """Split an MGF file into its BEGIN IONS ... END IONS blocks (lines kept)."""
    out, block = [], []
    for line in path.read_text().splitlines():
        block.append(line)
        if line == "END IONS":
            out.append(block)
            block = []
    return out


def small_mgf() -> list[list[str]]:
    """Write the first 10 spectra of massivekb_dev.mgf to small.mgf."""
    first = blocks(SHARED / "dev" / "massivekb_dev.mgf")[:10]
    (HERE / "small.mgf").write_text("".join("\n".join(b) + "\n" for b in first))
    return first


def broken_mgf(source: list[list[str]]) -> None:
    """Write broken.mgf: one spectrum per kind of bad input, real peaks throughout."""
    peaks = [[line for line in b if line[:1].isdigit()] for b in source]
    lld = peaks[2][:20]  # LLPAFLK, 2+

    def block(title: str, params: list[str], peak_lines: list[str], end: bool = True):
        lines = ["BEGIN IONS", f"TITLE={title}", *params, *peak_lines]
        return lines + (["END IONS"] if end else [])

    spectra = [
        block("good", ["PEPMASS=401.267087", "CHARGE=2+", "SEQ=LLPAFLK"], lld),
        block("no_charge", ["PEPMASS=401.267087", "SEQ=LLPAFLK"], lld),
        block("zero_pepmass", ["PEPMASS=0", "CHARGE=2+"], lld),
        block("empty", ["PEPMASS=401.267087", "CHARGE=2+"], []),
        block("one_peak", ["PEPMASS=401.267087", "CHARGE=2+"], lld[:1]),
        block(
            "letter",
            ["PEPMASS=401.267087", "CHARGE=2+"],
            [*lld[:3], "129.10527 12O5", *lld[3:]],
        ),
        block(
            "nan",
            ["PEPMASS=401.267087", "CHARGE=2+"],
            [*lld[:3], "130.08926 nan", *lld[3:]],
        ),
        block(
            "unknown_residue", ["PEPMASS=401.267087", "CHARGE=2+", "SEQ=PEPTIDEX"], lld
        ),
        block("absurd_charge", ["PEPMASS=401.267087", "CHARGE=50+"], lld),
        block("truncated", ["PEPMASS=401.267087", "CHARGE=2+"], lld[:5], end=False),
    ]
    (HERE / "broken.mgf").write_text("\n".join("\n".join(b) for b in spectra) + "\n")


def small_mzml() -> Path:
    """Cut the first 5 spectra (1 MS1, 4 MS2) of SmallCalibratibleYeast.mzml."""
    lines = (SHARED / "raw" / "SmallCalibratibleYeast.mzml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "<spectrumList" in line)
    end = next(i for i, line in enumerate(lines) if 'index="5"' in line)
    body = [
        lines[0],
        *[line for line in lines[1:start] if "indexedmzML" not in line],
        '      <spectrumList count="5" '
        'defaultDataProcessingRef="pwiz_Reader_conversion">',
        *lines[start + 1 : end],
        "      </spectrumList>",
        "    </run>",
        "  </mzML>",
    ]
    path = HERE / "small.mzML"
    path.write_text("\n".join(body) + "\n")
    # The same file cut off in the middle of its last spectrum's peaks.
    cut = next(i for i, line in enumerate(body) if 'index="4"' in line) + 30
    (HERE / "truncated.mzML").write_text("\n".join(body[:cut]) + "\n")
    return path


def small_mzxml(mzml_path: Path) -> None:
    """Write small.mzXML, the spectra of small.mzML in mzXML 3.2 (peaks as 32-bit)."""
    from pyteomics import mzml

    scans = []
    for spectrum in mzml.MzML(str(mzml_path)):
        pairs = [
            v
            for pair in zip(
                spectrum["m/z array"], spectrum["intensity array"], strict=True
            )
            for v in pair
        ]
        data = base64.b64encode(struct.pack(f">{len(pairs)}f", *pairs)).decode()
        level = spectrum["ms level"]
        num = spectrum["index"] + 1
        precursor = ""
        if level == 2:
            ion = spectrum["precursorList"]["precursor"][0]["selectedIonList"][
                "selectedIon"
            ][0]
            precursor = (
                f'      <precursorMz precursorCharge="{ion["charge state"]}">'
                f"{ion['selected ion m/z']}</precursorMz>\n"
            )
        scans.append(
            f'    <scan num="{num}" msLevel="{level}" peaksCount="{len(pairs) // 2}" '
            'polarity="+">\n'
            f"{precursor}"
            '      <peaks precision="32" byteOrder="network" contentType="m/z-int" '
            f'compressionType="none" compressedLen="0">{data}</peaks>\n'
            "    </scan>\n"
        )
    text = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        '<mzXML xmlns="http://sashimi.sourceforge.net/schema_revision/mzXML_3.2">\n'
        f'  <msRun scanCount="{len(scans)}">\n'
        + "".join(scans)
        + "  </msRun>\n</mzXML>\n"
    )
    (HERE / "small.mzXML").write_text(text)


def bom_mgf() -> None:
    """Write bom.mgf: 3 spectra of mzlib_yeast_mzid.mgf (with RTINSECONDS) after a BOM.

    Windows tools often start UTF-8 text with a byte-order mark; the first
    BEGIN IONS must still be found.
    """
    first = blocks(SHARED / "train" / "mzlib_yeast_mzid.mgf")[:3]
    text = "".join("\n".join(b) + "\n" for b in first)
    (HERE / "bom.mgf").write_bytes(b"\xef\xbb\xbf" + text.encode())


def odd_mzml(mzml_path: Path) -> None:
    """Write ms1_only.mzML (spectrum 0 of small.mzML) and cut_early.mzML (no spectrum).

    Both are valid starts of an mzML run that hold no MS2 spectrum to sequence.
    """
    lines = mzml_path.read_text().splitlines()
    second = next(i for i, line in enumerate(lines) if 'index="1"' in line)
    first = next(i for i, line in enumerate(lines) if 'index="0"' in line)
    tail = ["      </spectrumList>", "    </run>", "  </mzML>"]
    ms1 = [line.replace('count="5"', 'count="1"') for line in lines[:second]]
    (HERE / "ms1_only.mzML").write_text("\n".join(ms1 + tail) + "\n")
    (HERE / "cut_early.mzML").write_text("\n".join(lines[:first]) + "\n")


if __name__ == "__main__":
    broken_mgf(small_mgf())
    small_mzxml(small_mzml())
    bom_mgf()
    odd_mzml(HERE / "small.mzML")
