"""PepTRM: de novo peptide sequencing with a Tiny Recursive Model."""

import os

__version__ = "0.1.0"
# How the CLI and its decoding workers log.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _numba_cache_outside_the_package() -> None:
    """Point numba's cache of the compiled search at the user's cache folder.

    By default numba writes it beside the source, into the installed package,
    where `pip uninstall` leaves it (pip removes only the files it installed):
    after `pip install .`, a run, and then `pip install -e .` in the same
    environment (the README's two lines in one clone), that leftover folder
    without an `__init__.py` shadowed the editable package as an empty namespace
    package. Set before numba loads (the search imports it); a NUMBA_CACHE_DIR
    the user set stands, and where the folder cannot be written numba keeps its
    own choice.
    """
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    folder = os.path.join(base, "peptrm", "numba")
    if not os.path.isabs(folder):  # no home to expand "~" to: leave it to numba
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    if os.access(folder, os.W_OK):
        os.environ["NUMBA_CACHE_DIR"] = folder


_numba_cache_outside_the_package()
