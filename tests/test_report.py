"""The HTML report and the spectrum plot, on real spectra with known labels."""

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from peptrm import cli, io, masses, report
from peptrm.io import Prediction

pytest.importorskip("spectrum_utils")

DATA = Path(__file__).parent / "data"


def _predictions(path: Path) -> list[Prediction]:
    """Rank-1 rows for small.mgf: even spectra right, odd ones wrong, one skipped."""
    out = []
    for spectrum in io.read_spectra(path):
        tokens = masses.parse(spectrum.peptide)
        if spectrum.ref.index % 2:  # a wrong peptide: the last two residues swapped
            tokens = [*tokens[:-2], tokens[-1], tokens[-2]]
        peptide = masses.format_peptide(tokens)
        score = 0.9 - spectrum.ref.index / 20
        out.append(
            Prediction(
                spectrum.ref,
                peptide,
                score,
                [score] * len(tokens),
                spectrum.charge,
                spectrum.precursor_mz,
                masses.precursor_mz(tokens, spectrum.charge),
                mass_error_ppm=1.5,
            )
        )
    out[-1] = Prediction(
        out[-1].ref,
        "",
        float("nan"),
        status=f"skipped: {out[-1].ref}: no CHARGE line; pass --default-charge",
    )
    return out


@pytest.fixture
def results(tmp_path, small_mgf) -> Path:
    path = tmp_path / "out.mztab"
    io.write_mztab(path, _predictions(small_mgf), [str(small_mgf)], "0.1.0")
    return path


def _images(text: str) -> list[bytes]:
    found = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    return [base64.b64decode(data) for data in found]


def test_report_is_one_file_with_every_image_embedded(tmp_path, results, small_mgf):
    out = report.write_report(results, [small_mgf], tmp_path / "report.html", 2)
    text = out.read_text()
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    images = _images(text)
    # score and ppm histograms, the precision-coverage curve, 2 best + 2 worst, and
    # the refinement curve of the best spectrum
    assert len(images) == 3 + 2 + 2 + 1
    for png in images:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "no CHARGE line; pass --default-charge" in text  # skip reasons, counted
    assert "<td>skipped</td><td>1</td>" in text
    table = text.split("<pre>", 1)[1].split("</pre>", 1)[0]
    # 9 scored: spectra 0, 2, 4, 6, 8 right; spectrum 9 skipped counts as missed
    assert "small.mgf       10           0.500" in table
    # best is spectrum 0 (score 0.9), worst scored spectrum 8 (0.5)
    captions = re.findall(r"<figcaption>([^<]+)</figcaption>", text)
    assert captions[0].startswith("small.mgf, spectrum 0 ")
    assert captions[-1].startswith("small.mgf, spectrum 7 ")


def test_plot_draws_a_mirror_when_the_prediction_is_wrong(tmp_path, results, small_mgf):
    from matplotlib.image import imread

    out = tmp_path / "spectrum.png"
    assert (
        cli.main(["plot", str(results), str(small_mgf), "--index", "1", "-o", str(out)])
        == 0
    )
    image = imread(out)
    assert image.shape[0] > 400 and image.shape[1] > 800
    assert np.std(image) > 0.01  # something is drawn
    with pytest.raises(report.ReportError, match="no spectrum with index 42"):
        report.write_plot(results, [small_mgf], 42, tmp_path / "x.png")


def test_the_wrong_spectrum_files_are_an_error(tmp_path, results, broken_mgf):
    with pytest.raises(report.ReportError, match="no prediction joins any"):
        report.write_report(results, [broken_mgf], tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def test_skip_reasons_lose_their_spectrum_prefix():
    rows = [
        Prediction(io.SpectrumRef("a.mgf", i), "", float("nan"), status=status)
        for i, status in enumerate(
            [
                "skipped: a.mgf, spectrum 0 (TITLE=x): no peaks",
                "skipped: a.mgf, spectrum 1: no peaks",
                "skipped: b.txt: unknown extension '.txt'",
            ]
        )
    ]
    counts = report.summary(rows)
    assert counts["skip_reasons"] == [
        ("no peaks", 2),
        ("b.txt: unknown extension '.txt'", 1),
    ]


def test_mass_delta_proforma_annotates_the_ions_we_compute(small_mgf):
    spectrum = next(iter(io.read_spectra(small_mgf)))  # +42.011FMKVDGAKELPDVLERVK 4+
    annotated = report._annotated(spectrum, spectrum.peptide)
    found = {
        (f.ion_type, f.charge): mz
        for mz, peak in zip(annotated.mz, annotated.annotation, strict=True)
        for f in peak.fragment_annotations
    }
    b, y = masses.fragment_mz(spectrum.peptide, charge=1)
    y2 = masses.fragment_mz(spectrum.peptide, charge=2)[1]
    # spectrum_utils' ion m/z agree with ours, N-terminal acetyl included
    for (ion, charge), mz in found.items():
        ladder = {("b", 1): b, ("y", 1): y, ("y", 2): y2}.get((ion[0], charge))
        if ladder is not None:
            assert mz == pytest.approx(
                ladder[int(ion[1:]) - 1], abs=report.FRAGMENT_TOL_DA
            )
    assert ("y1", 1) in found and ("y7", 1) in found


def test_report_renders_in_headless_chromium(tmp_path, results, small_mgf):
    import shutil
    import subprocess

    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        pytest.skip("no headless Chromium (apt-get install chromium-headless-shell)")
    text = report.write_report(results, [small_mgf], tmp_path / "r.html", 1).read_text()
    probe = (  # counts the images the browser decoded, into the dumped DOM
        "<script>window.addEventListener('load',()=>{const ok=[...document.images]"
        ".filter(i=>i.complete&&i.naturalWidth>0).length;document.body.setAttribute("
        "'data-images',ok+'/'+document.images.length);});</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(text.replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [browser, "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert (
        'data-images="6/6"' in dom
    )  # 2 histograms, the curve, best, worst, refinement


def test_report_shows_the_draft_after_every_supervision_step(
    tmp_path, results, small_mgf
):
    from peptrm.weights import load_model

    _, cfg = load_model()
    out = report.write_report(results, [small_mgf], tmp_path / "r.html", 1, [4])
    section = out.read_text().split("The refinement, step by step", 1)[1]
    assert "small.mgf, spectrum 4 " in section  # the chosen spectrum, with its truth
    steps = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td>", section)
    assert [int(step) for step, _ in steps] == list(
        range(1, cfg.recursion.n_supervision + 1)
    )
