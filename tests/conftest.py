"""Shared fixtures: tiny real spectrum files, broken ones, and the shared data set."""

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


@pytest.fixture
def small_mgf() -> Path:
    """Ten MassIVE-KB HCD spectra with SEQ= annotations."""
    return DATA / "small.mgf"


@pytest.fixture
def broken_mgf() -> Path:
    """Ten spectra, each broken in one way (see tests/data/README.md)."""
    return DATA / "broken.mgf"


@pytest.fixture
def small_mzml() -> Path:
    """Five yeast spectra (index 0 is MS1, 1-4 are MS2)."""
    return DATA / "small.mzML"


@pytest.fixture
def small_mzxml() -> Path:
    """The spectra of small.mzML written as mzXML."""
    return DATA / "small.mzXML"


@pytest.fixture
def truncated_mzml() -> Path:
    """small.mzML cut off inside its last spectrum."""
    return DATA / "truncated.mzML"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip when this checkout does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run ~30x faster on one thread than on two busy cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
