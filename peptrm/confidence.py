"""Confidence: calibrated chances that a peptide, and each of its residues, is right.

The search ranks peptides by log-probability plus fragment evidence, and neither
is the chance of being correct: a weak model spreads its probability thin even
over right answers, and a well-explained spectrum is worth more than any one
position's softmax. A small logistic model per level maps features of a decoded
candidate to a probability:

    peptide: mean token log-prob, mean cleavage evidence, share of cleavages with
             a b or y ion, constrained (1) or the unconstrained fallback (0)
    residue: the token's log-prob, the weaker and the stronger evidence of the
             cleavages on its two sides (a peptide end counts as the other
             side), constrained

Cleavage evidence is `peptrm.evidence`'s score (-1: neither ion, up to +3). The
coefficients are fitted by `peptrm calibrate` on labelled spectra the model was
not trained on and saved beside the weights as `calibration.yaml`; a model
without one keeps its raw scores (geometric-mean and per-token probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from peptrm import masses, metrics
from peptrm.decoding import Candidate
from peptrm.evidence import FragmentEvidence

CALIBRATION_NAME = "calibration.yaml"
PEPTIDE_FEATURES = ("mean_log_prob", "mean_evidence", "explained", "constrained")
RESIDUE_FEATURES = ("log_prob", "weaker_side", "stronger_side", "constrained")
L2 = 1e-3  # ridge penalty of the fit, on coefficients but not the intercept


def cleavage_evidence(
    candidate: Candidate, evidence: FragmentEvidence | None
) -> np.ndarray:
    """Evidence of each residue boundary of the peptide, N- to C-terminal.

    Entry j is the boundary after token j (n-1 entries); the one after a lone
    N-terminal modification is no boundary and is nan. Without peaks all are 0.
    """
    indices = np.asarray(candidate.indices, dtype=np.int64)
    if len(indices) < 2:
        return np.zeros(0)
    prefix = np.cumsum(masses.VOCAB_MASSES[indices])[:-1]
    out = evidence.score(prefix) if evidence is not None else np.zeros(len(prefix))
    if indices[0] in masses.N_TERMINAL_INDICES:
        out = out.astype(np.float64)
        out[0] = np.nan
    return out


def peptide_features(candidate: Candidate, cleavages: np.ndarray) -> np.ndarray:
    """(4,) features of `PEPTIDE_FEATURES`."""
    scores = np.asarray(candidate.aa_scores, dtype=np.float64)
    log_prob = np.log(np.clip(scores, 1e-12, 1.0)).mean() if len(scores) else -30.0
    real = cleavages[np.isfinite(cleavages)]
    mean_evidence = real.mean() if len(real) else -1.0
    explained = (real > -1).mean() if len(real) else 0.0
    return np.array([log_prob, mean_evidence, explained, float(candidate.constrained)])


def residue_features(candidate: Candidate, cleavages: np.ndarray) -> np.ndarray:
    """(n, 4) features of `RESIDUE_FEATURES`, one row per token."""
    n = len(candidate.tokens)
    scores = np.log(np.clip(np.asarray(candidate.aa_scores, np.float64), 1e-12, 1))
    left = np.concatenate([[np.nan], cleavages])[:n]  # boundary before token j
    right = np.concatenate([cleavages, [np.nan]])[:n]  # boundary after token j
    left = np.where(np.isfinite(left), left, right)  # an end: the other side
    right = np.where(np.isfinite(right), right, left)
    both = np.nan_to_num(np.stack([left, right]), nan=-1.0)  # a lone token
    return np.stack(
        [
            scores,
            both.min(axis=0),
            both.max(axis=0),
            np.full(n, float(candidate.constrained)),
        ],
        axis=1,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


@dataclass
class Calibration:
    """Logistic coefficients (intercept last) for peptide and residue scores."""

    peptide: np.ndarray  # (len(PEPTIDE_FEATURES) + 1,)
    residue: np.ndarray  # (len(RESIDUE_FEATURES) + 1,)
    fitted_on: str = ""  # what the coefficients were fitted on

    def apply(
        self, candidate: Candidate, evidence: FragmentEvidence | None
    ) -> tuple[float, list[float]]:
        """Calibrated peptide score and per-residue scores of one candidate."""
        if not candidate.tokens:
            return float("nan"), []
        cleavages = cleavage_evidence(candidate, evidence)
        peptide = _sigmoid(
            peptide_features(candidate, cleavages) @ self.peptide[:-1]
            + self.peptide[-1]
        )
        residues = _sigmoid(
            residue_features(candidate, cleavages) @ self.residue[:-1]
            + self.residue[-1]
        )
        return float(peptide), [float(p) for p in residues]

    def save(self, folder: str | Path) -> Path:
        """Write `calibration.yaml` into a model folder."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / CALIBRATION_NAME
        peptide_keys = (*PEPTIDE_FEATURES, "intercept")
        residue_keys = (*RESIDUE_FEATURES, "intercept")
        values = {
            "fitted_on": self.fitted_on,
            "peptide": dict(zip(peptide_keys, self.peptide.tolist(), strict=True)),
            "residue": dict(zip(residue_keys, self.residue.tolist(), strict=True)),
        }
        with open(path, "w") as handle:
            yaml.safe_dump(values, handle, sort_keys=False)
        return path


def load_calibration(folder: str | Path) -> Calibration | None:
    """A model folder's calibration, or None when it has none."""
    path = Path(folder) / CALIBRATION_NAME
    if not path.exists():
        return None
    with open(path) as handle:
        values = yaml.safe_load(handle)
    try:
        peptide = [values["peptide"][k] for k in (*PEPTIDE_FEATURES, "intercept")]
        residue = [values["residue"][k] for k in (*RESIDUE_FEATURES, "intercept")]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a PepTRM calibration ({error})") from error
    return Calibration(
        np.array(peptide, np.float64),
        np.array(residue, np.float64),
        str(values.get("fitted_on", "")),
    )


def logistic_fit(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Coefficients (intercept last) minimising cross-entropy + L2, by L-BFGS."""
    x = torch.as_tensor(features, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        logits = x @ w[:-1] + w[-1]
        value = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        value = value + L2 * (w[:-1] ** 2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    return w.detach().numpy().copy()


def fit(
    candidates: Sequence[Candidate],
    evidences: Sequence[FragmentEvidence | None],
    labels: Sequence[str],
    fitted_on: str = "",
) -> Calibration:
    """Fit both levels on decoded candidates and their true peptides.

    A peptide counts as correct when every residue matches (`metrics.aa_match`,
    I = L); a residue when it matches its aligned true residue.
    """
    peptide_x, peptide_y, residue_x, residue_y = [], [], [], []
    for candidate, evidence, label in zip(candidates, evidences, labels, strict=True):
        if not candidate.tokens:
            continue
        matched, correct = metrics.aa_match(candidate.tokens, masses.parse(label))
        cleavages = cleavage_evidence(candidate, evidence)
        peptide_x.append(peptide_features(candidate, cleavages))
        peptide_y.append(float(correct))
        residue_x.append(residue_features(candidate, cleavages))
        residue_y.append(np.asarray(matched, dtype=np.float64))
    if not peptide_x:
        raise ValueError("no decoded peptides to calibrate on")
    return Calibration(
        logistic_fit(np.array(peptide_x), np.array(peptide_y)),
        logistic_fit(np.concatenate(residue_x), np.concatenate(residue_y)),
        fitted_on,
    )


def q_values(probabilities: np.ndarray) -> np.ndarray:
    """Estimated q-value of each peptide from calibrated probabilities of being right.

    Accepting every peptide scoring at least t has an expected false discovery
    rate FDR(t) = mean(1 - p) over those peptides (the probabilities are
    calibrated, so 1 - p is each one's chance of being wrong). A peptide's
    q-value is the lowest FDR(t) of any threshold that accepts it. No decoys
    are needed, so the estimate is only as honest as the calibration (checked
    on dev by `benchmarks/bench_rerank.py`). nan scores get nan.
    """
    p = np.asarray(probabilities, np.float64)
    out = np.full(p.shape, np.nan)
    known = np.flatnonzero(np.isfinite(p))
    if not len(known):
        return out
    order = known[np.argsort(-p[known], kind="stable")]
    ranked = p[order]
    fdr = np.cumsum(1 - ranked) / np.arange(1, len(order) + 1)
    # A threshold accepts every peptide of a tie at once: use the FDR at its end.
    tie_end = np.searchsorted(-ranked, -ranked, side="right") - 1
    out[order] = np.minimum.accumulate(fdr[tie_end][::-1])[::-1]
    return out
