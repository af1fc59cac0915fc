"""Fragment evidence: how well the peaks support a cleavage after a prefix.

A peptide breaks between residues i and i+1 into a b ion (the prefix) and a y ion
(the suffix). If the prefix's residues sum to m (Da) and the peptide's neutral
mass is M, the singly charged ions sit at m/z

    b = m + proton,    y = M - m + proton,

and the doubly charged ones at (m + 2 proton) / 2 and (M - m + 2 proton) / 2. So
the support for a cleavage is a function of m alone, once M is taken from the
observed precursor. The decoder adds `weight * score(m)` for every cleavage of a
candidate peptide, which lets the spectrum vote on where the residue boundaries
lie: the spectrum-graph idea of classic de novo tools, on top of the model.

score(m) = b-side + y-side - 1, where a side is 1 + w when a peak lies within
`tol_da` of one of its ions (w: the nearest such peak's intensity relative to
the base peak, in [0, 1]) and 0 otherwise. A cleavage with neither ion scores -1,
so splitting a residue in two without a peak between them costs; one with both
ions at full intensity scores +3.

The y ions use the observed precursor mass (isotope error 0): with a 13C isotope
pick they are 1 Da off and that side finds nothing.

`window_bounds` gives the decoder's admissible bound: the highest score any
cleavage mass in a window could have, for a grid of windows at once.
"""

# B batch, K peaks, C candidate prefixes, G grid cells, S mass bins

from __future__ import annotations

import numpy as np

from peptrm import masses

GRID_DA = 0.01  # resolution of the bound's grid over cleavage masses
EDGE_DA = 1e-6  # widen every match interval by this, against float rounding


class FragmentEvidence:
    """The peaks of one spectrum, ready to score cleavage masses."""

    def __init__(
        self,
        mz: np.ndarray,
        intensity: np.ndarray,
        precursor_mass: float,
        charge: int,
        tol_da: float,
    ) -> None:
        keep = (mz > 0) & np.isfinite(mz) & np.isfinite(intensity)
        order = np.argsort(mz[keep], kind="stable")
        self.mz = np.asarray(mz[keep], np.float64)[order]  # (K,) sorted
        peak = np.asarray(intensity[keep], np.float64)[order]
        self.weight = peak / peak.max() if len(peak) and peak.max() > 0 else peak
        self._padded_mz = np.concatenate([[-1e9], self.mz, [1e9]])
        self._padded_weight = np.concatenate([[0.0], self.weight, [0.0]])
        self.precursor_mass = float(precursor_mass)
        self.tol_da = float(tol_da)
        # Doubly charged fragments only when the precursor can carry two charges
        # on one fragment; singly charged precursors give none.
        self.charges = (1, 2) if charge >= 3 else (1,)

    # ---------------------------------------------------------------- exact score

    def _match(self, ion_mz: np.ndarray) -> np.ndarray:
        """1 + weight of the nearest peak within tolerance of each ion, else 0."""
        # Sentinels far outside any m/z let every ion have a left and a right peak.
        right = np.searchsorted(self._padded_mz, ion_mz)
        left = right - 1
        to_left = np.abs(self._padded_mz[left] - ion_mz)
        to_right = np.abs(self._padded_mz[right] - ion_mz)
        pick = np.where(to_left <= to_right, left, right)
        distance = np.minimum(to_left, to_right)
        return np.where(distance <= self.tol_da, 1.0 + self._padded_weight[pick], 0.0)

    def nearest_within(self, ion_mz: np.ndarray) -> np.ndarray:
        """Index into `mz` of the nearest peak within tolerance of each ion, else -1."""
        right = np.searchsorted(self._padded_mz, ion_mz)
        left = right - 1
        to_left = np.abs(self._padded_mz[left] - ion_mz)
        to_right = np.abs(self._padded_mz[right] - ion_mz)
        pick = np.where(to_left <= to_right, left, right) - 1  # unpadded index
        distance = np.minimum(to_left, to_right)
        return np.where(distance <= self.tol_da, pick, -1)

    def score(self, prefix_mass: np.ndarray) -> np.ndarray:
        """(C,) support for a cleavage after prefixes of residue sum `prefix_mass`."""
        prefix_mass = np.asarray(prefix_mass, np.float64)
        suffix_mass = self.precursor_mass - prefix_mass  # y ion's neutral mass
        charges = np.array(self.charges, np.float64)[:, None]  # (Z, 1)
        ions = np.concatenate(  # (2Z, C): b ions at each charge, then y ions
            [
                (prefix_mass[None, :] + charges * masses.PROTON) / charges,
                (suffix_mass[None, :] + charges * masses.PROTON) / charges,
            ]
        )
        matched = self._match(ions)
        n = len(self.charges)
        return matched[:n].max(axis=0) + matched[n:].max(axis=0) - 1.0

    # ---------------------------------------------------------------- the bound

    def grid(self, n_cells: int) -> np.ndarray:
        """(G,) upper bound of `score` over each cell [c, c+1) * GRID_DA of m.

        Every (peak, ion type) match is an interval of m; each side's grid holds
        the best match over the cells its intervals touch, and the bound is the
        sum of the two sides' bests (at least the best sum).
        """
        sides = []
        for side in ("b", "y"):
            best = np.zeros(n_cells)
            for z in self.charges:
                # ion m/z = (m + z p) / z for b, (M - m + z p) / z for y
                centre = self.mz * z - z * masses.PROTON
                if side == "y":
                    centre = self.precursor_mass - centre
                half = z * self.tol_da + EDGE_DA
                lo = np.floor((centre - half) / GRID_DA).astype(np.int64)
                hi = np.floor((centre + half) / GRID_DA).astype(np.int64)
                span = int((hi - lo).max(initial=0)) + 1
                cells = lo[:, None] + np.arange(span)[None, :]  # (K, span)
                valid = (cells <= hi[:, None]) & (cells >= 0) & (cells < n_cells)
                values = np.broadcast_to((1.0 + self.weight)[:, None], cells.shape)
                np.maximum.at(best, cells[valid], values[valid])
            sides.append(best)
        return sides[0] + sides[1] - 1.0

    def window_bounds(self, lo_da: np.ndarray, hi_da: np.ndarray) -> np.ndarray:
        """Upper bound of `score` over each window [lo_da, hi_da] of cleavage mass.

        Windows may differ in width; parts reaching below 0 or above the
        precursor mass are clipped off (no cleavage lies there). Two lookups in
        a sparse table of window maxima over the grid answer each window.
        """
        n_cells = int(np.ceil(self.precursor_mass / GRID_DA)) + 2
        grid = self.grid(n_cells)
        top = n_cells - 1
        lo = np.clip(np.floor(np.asarray(lo_da) / GRID_DA), 0, top).astype(np.intp)
        hi = np.clip(np.floor(np.asarray(hi_da) / GRID_DA), 0, top).astype(np.intp)
        hi = np.maximum(hi, lo)
        width = hi - lo + 1
        levels = [grid]  # levels[j][c] = max(grid[c : c + 2^j])
        while (1 << len(levels)) <= width.max(initial=1):
            span = 1 << (len(levels) - 1)
            previous = levels[-1]
            following = previous.copy()
            np.maximum(previous[:-span], previous[span:], out=following[:-span])
            levels.append(following)
        table = np.stack(levels)  # (J, G)
        level = np.frexp(width)[1] - 1  # the largest 2^j <= width
        end = hi - (1 << level) + 1
        return np.maximum(table[level, lo], table[level, end])


def from_batch(batch: dict, tol_da: float) -> list[FragmentEvidence]:
    """One `FragmentEvidence` per spectrum of a `preprocess.collate` batch."""
    mz = batch["mz"].detach().cpu().double().numpy()
    intensity = batch["intensity"].detach().cpu().double().numpy()
    precursor = batch["precursor_mass"].detach().cpu().double().numpy()
    charge = batch["charge"].detach().cpu().numpy()
    return [
        FragmentEvidence(
            mz[b], intensity[b], float(precursor[b]), int(charge[b]), tol_da
        )
        for b in range(len(mz))
    ]
