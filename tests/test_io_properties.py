"""Property tests of the readers: random and mutated MGF, mzML and mzXML text.

Whatever the bytes, a reader either raises `InputError` naming the file, or
yields records whose indices count up and whose skip reasons start with their
spectrum's ref; for MGF, every BEGIN IONS line gets exactly one record.
"""

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peptrm import io
from peptrm.io import InputError, Skipped, Spectrum

DATA = Path(__file__).parent / "data"
SETTINGS = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same inputs every run: a failure reproduces
)

MGF_LINES = st.sampled_from(
    [
        "BEGIN IONS",
        "END IONS",
        "TITLE=scan=1",
        "PEPMASS=401.267087",
        "PEPMASS=0",
        "PEPMASS=abc",
        "CHARGE=2+",
        "CHARGE=0",
        "CHARGE=2+ and 3+",
        "CHARGE=50+",
        "SEQ=PEPTIDEK",
        "SEQ=PEPTIDEX",
        "SEQ=+42.011M+15.995K",
        "RTINSECONDS=12.5",
        "RTINSECONDS=1-2",
        "101.07 200",
        "129.10527 12O5",
        "130.08926 nan",
        "-5 10",
        "1e3 1e9",
        "",
        "# comment",
        "MASS=Monoisotopic",
    ]
)
TEXT_LINES = st.one_of(
    MGF_LINES, st.text(max_size=30).map(lambda t: t.replace("\x00", ""))
)


def _check_records(path: Path, records: list) -> None:
    """What every readable file promises, whatever it held."""
    for record in records:
        assert isinstance(record, Spectrum | Skipped)
        assert record.ref.path == str(path)
        if isinstance(record, Skipped):
            assert record.reason.startswith(str(record.ref)), record.reason
        else:
            assert len(record.mz) == len(record.intensity) > 0
            assert (record.mz > 0).all() and (record.intensity >= 0).all()
            assert 1 <= record.charge <= 10 and record.precursor_mz > 0


def _read(path: Path) -> list | None:
    """The records of `path`, or None when it raised an InputError naming it."""
    try:
        return list(io.read_spectra(path))
    except InputError as error:
        assert str(error).startswith(str(path)), str(error)
        return None


@SETTINGS
@given(
    lines=st.lists(TEXT_LINES, max_size=60),
    bom=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_any_mgf_text_gives_one_record_per_begin_ions(lines, bom, newline):
    text = newline.join(lines)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.mgf"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
        records = _read(path)
        begins = sum(line.strip() == "BEGIN IONS" for line in text.splitlines())
        if records is None:
            assert begins == 0  # only a file without any spectrum is refused
            return
        _check_records(path, records)
        assert [r.ref.index for r in records] == list(range(begins))


def _mutate(data: bytes, cuts: list[tuple[int, int, bytes]]) -> bytes:
    """Replace byte ranges of `data` (positions as fractions of its length)."""
    for start, length, insert in cuts:
        at = start % (len(data) + 1)
        data = data[:at] + insert + data[at + length :]
    return data


MUTATIONS = st.lists(
    st.tuples(
        st.integers(0, 10**6),
        st.integers(0, 400),
        st.binary(max_size=20) | st.sampled_from([b"<", b">", b'"', b"</spectrum>"]),
    ),
    min_size=1,
    max_size=4,
)


@pytest.mark.parametrize("name", ["small.mzML", "small.mzXML", "small.mgf"])
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(cuts=MUTATIONS, truncate=st.floats(0.0, 1.0))
def test_mutated_files_never_crash_the_reader(name, cuts, truncate):
    data = (DATA / name).read_bytes()
    data = _mutate(data, cuts)[: max(1, int(len(data) * truncate))]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        records = _read(path)
        if records is not None:
            _check_records(path, records)
            indices = [r.ref.index for r in records]
            assert indices == sorted(set(indices))  # file order, no repeats
