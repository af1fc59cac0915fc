"""The inference pipeline: read -> preprocess -> model -> decode -> write.

`peptrm sequence` (and any later service) calls `sequence_files`. Spectra stream
from the inputs in batches; every input spectrum, sequenced or skipped, gets its
rows in input order. On one device the network reads each batch while a thread
searches and scores the one before it in the decoding workers (two batches in
flight at most); the rows are those of one batch at a time (`predict_batch`).
With several devices (`devices` > 1), each batch goes to
one of that many processes, each holding the model on its own device (GPU i,
or a CPU share), and the rows are written in input order as the batches
return; at most two batches per device are in flight, so memory stays flat.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import multiprocessing
import pickle
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from peptrm import (
    __version__,
    confidence,
    decoding,
    evidence,
    masses,
    metrics,
    preprocess,
    rerank,
    search,
    workers,
)
from peptrm.confidence import Calibration
from peptrm.config import Config
from peptrm.evidence import CleavageTable, FragmentEvidence
from peptrm.io import (
    InputError,
    Prediction,
    Skipped,
    Spectrum,
    SpectrumRef,
    check_output_path,
    estimate_spectra,
    read_spectra,
    replace_when_done,
    spectrum_files,
    write_csv,
    write_mztab,
)
from peptrm.model import PepTRM, padded_rows
from peptrm.rerank import Reranker

log = logging.getLogger(__name__)
T = TypeVar("T")

SCORING_CHUNK = search.CHUNK  # spectra scored (calibrated, reranked) per worker task
# The networks read batches padded to a multiple of this (`model.padded_rows`): a
# matrix product over 1-2 spectra rounds apart from one over more (on a CPU).
BATCH_MULTIPLE = 8
# `network_pass` runs a batch in parts of about this many spectra of similar
# peak counts, each part's peaks cut to the widest of its spectra (`peak_parts`).
# Dev, whole process, batch 256: the batch whole and parts of 64 took 1.027x and
# 1.026x the wall-clock of parts of 128 (3 pairs each); more parts, more of the
# network's operations, each a parallel region of its 2 threads.
PART_SPECTRA = 128
# A part keeps 16k - 1 peak columns (16k with the precursor token, up to the
# batch's own): with whole 16-wide vectors a spectrum's sums then come out the
# same, to the bit, as in the full width (dev, 1,024 spectra, 1 and 2 threads).
PEAK_MULTIPLE = 16
FEEDBACK_STEPS = 2  # supervision steps run on a fed-back peptide per refine round
MAX_SKIP_MESSAGES = 50  # skipped spectra named one by one in the log; the rest counted


@dataclass
class RunSummary:
    """What a sequencing run did, for the closing log lines."""

    spectra: int = 0
    sequenced: int = 0
    skipped: int = 0
    unconstrained: int = 0
    steps: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    decode_seconds: float = 0.0
    skip_examples: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # spectrum files, folders expanded
    unreadable: dict[str, str] = field(default_factory=dict)  # file -> why

    @property
    def spectra_per_second(self) -> float:
        """Throughput over the whole run, reading and writing included."""
        return self.spectra / self.seconds if self.seconds else math.nan

    @property
    def mean_steps(self) -> float:
        """Mean supervision steps run per sequenced spectrum (adaptive halting)."""
        return self.steps / self.sequenced if self.sequenced else math.nan


@dataclass
class Scorers:
    """What a model folder carries beside its weights to score candidates.

    `cleavage`: the learned cleavage log-odds the search adds
    (`evidence.CleavageTable`; without it, the hand-made evidence); `reranker`:
    reorders the search's top K and gives the peptide score; `calibration`:
    per-residue scores (and the peptide score when there is no reranker).
    """

    calibration: Calibration | None = None
    reranker: Reranker | None = None
    cleavage: CleavageTable | None = None

    def describe(self) -> str:
        """What scores the output carries, for the log and the mzTab header."""
        if self.reranker is not None:
            return "reranked, calibrated"
        return "calibrated" if self.calibration else "model probabilities"

    def apply(
        self,
        candidates: list[decoding.Candidate],
        peaks: FragmentEvidence,
        charge: int,
    ) -> list[decoding.Candidate]:
        """One spectrum's candidates, scored and (with a reranker) reordered.

        The calibration sets each candidate's score and residue scores; the
        reranker then reorders its head and sets the peptide scores there.
        """
        return self.apply_many([(candidates, peaks, charge)])[0]

    def apply_many(
        self,
        jobs: Sequence[tuple[list[decoding.Candidate], FragmentEvidence, int]],
        keep: int | None = None,
    ) -> list[list[decoding.Candidate]]:
        """`apply` over several spectra (candidates, peaks, charge) at once.

        The reranker reads the model's own residue probabilities, as it was
        fitted on them, so the calibrated residue scores replace them only
        after it has ranked; the peptide score is the reranker's where it
        ranked and the calibration's elsewhere. With `keep`, only the first
        `keep` of each spectrum come back, and only those are calibrated.
        """
        out = [candidates for candidates, _, _ in jobs]
        ranked: set[int] = set()  # id() of candidates the reranker scored
        if self.reranker is not None:
            ranked = {id(c) for options in out for c in self.reranker.head(options)}
            out = self.reranker.rerank_many(jobs)
        out = [options[:keep] for options in out]
        if self.calibration is not None:
            for options, (_, peaks, _) in zip(out, jobs, strict=True):
                for candidate in options:
                    score, candidate.aa_scores = self.calibration.apply(
                        candidate, peaks
                    )
                    if id(candidate) not in ranked:
                        candidate.score = score
        return out

    def save(self, folder: str | Path) -> list[Path]:
        """Write each scorer that is set into a model folder."""
        parts = (self.calibration, self.reranker, self.cleavage)
        return [part.save(folder) for part in parts if part is not None]


def load_scorers(folder: str | Path) -> Scorers:
    """The scorers a model folder carries (any may be missing)."""
    return Scorers(
        confidence.load_calibration(folder),
        rerank.load_reranker(folder),
        evidence.load_table(folder),
    )


def annotate(model: PepTRM, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """`batch` with its peaks' ion-type chances (``ion_chances`` (B, P, A)).

    Only a model with a peak annotator adds them; `evidence.from_batch` then
    gives the search's cleavage table the annotator's states.
    """
    if model.cfg.peak_annotator:
        n = len(batch["mz"])
        rows = padded_rows(n, BATCH_MULTIPLE, batch["mz"].device)
        padded = {key: value[rows] for key, value in batch.items()}
        batch["ion_chances"] = model.annotate_batch(padded)[:n]
    return batch


@torch.no_grad()
def refine(
    model: PepTRM,
    batch: dict[str, Tensor],
    n_steps: int,
    halt_threshold: float,
    draft: Tensor | None = None,
    precision: str = "float32",
    halt_unchanged: int = 0,
    starts: int = 0,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Run up to `n_steps` supervision steps, freezing spectra once they halt.

    A spectrum halts when its halting probability passes `halt_threshold`, or,
    with `halt_unchanged` N > 0 (`decoding.halt_unchanged`), once its draft's
    likeliest tokens have not changed for N steps in a row (the first step's
    draft is not compared with the blank one).

    Returns the final per-position log-probabilities (B, L, V), the steps each
    spectrum used (B,), and the log-probabilities after every step (for the
    refinement curve). `draft` (B, L, V logits) replaces the blank first draft.
    `precision` "bfloat16" runs the network under autocast
    (`decoding.precision`); the log-probabilities come back in float32.
    `starts` K > 0 (`decoding.first_residue_starts`, blank drafts only) runs
    the recursion once per likeliest first residue (`_refine_from_starts`).
    """
    device = next(model.parameters()).device.type
    n = len(batch["mz"])
    rows = padded_rows(n, BATCH_MULTIPLE, batch["mz"].device)  # the same sums
    batch = {key: value[rows] for key, value in batch.items()}
    draft = None if draft is None else draft[rows]
    with torch.autocast(device, torch.bfloat16, enabled=precision == "bfloat16"):
        if starts and draft is None:
            y, steps, history = _refine_from_starts(
                model, batch, n_steps, halt_threshold, halt_unchanged, starts
            )
        else:
            y, steps, history = _refine(
                model, batch, n_steps, halt_threshold, draft, halt_unchanged
            )
    return y[:n].float(), steps[:n], [step[:n].float() for step in history]


def _refine(
    model: PepTRM,
    batch: dict[str, Tensor],
    n_steps: int,
    halt_threshold: float,
    draft: Tensor | None,
    halt_unchanged: int,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """`refine` in the caller's precision."""
    spectrum = model.remember(model.encode_batch(batch))
    y, z = model.initial_state(spectrum)
    if draft is not None:
        y = draft
    active = torch.ones(len(spectrum.x), dtype=torch.bool, device=spectrum.x.device)
    steps = torch.zeros(len(spectrum.x), dtype=torch.long, device=spectrum.x.device)
    held = torch.zeros_like(steps)  # steps in a row the likeliest tokens held
    history = []
    running = spectrum  # the spectra still refining; halted ones are not computed
    for k in range(n_steps):
        index = active.nonzero().squeeze(1)  # (A,)
        if len(index) < len(running.x):
            running = spectrum.select(index)
        new_y, new_z, halt = model(running, y[index], z[index], supervision_step=k)
        if halt_unchanged and k > 0:
            same = (new_y.argmax(-1) == y[index].argmax(-1)).all(-1)  # (A,)
            held[index] = torch.where(same, held[index] + 1, 0)
        y = y.index_copy(0, index, new_y)  # (B, L, V) halted spectra keep their draft
        z = z.index_copy(0, index, new_z)  # (B, L, D)
        steps += active.long()
        history.append(y.log_softmax(dim=-1))
        active[index] = torch.sigmoid(halt) < halt_threshold
        if halt_unchanged:
            active[index] &= held[index] < halt_unchanged
        if not active.any():
            break
    return y.log_softmax(dim=-1), steps, history


def _refine_from_starts(
    model: PepTRM,
    batch: dict[str, Tensor],
    n_steps: int,
    halt_threshold: float,
    halt_unchanged: int,
    starts: int,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """`_refine` from each of the first step's `starts` likeliest first residues.

    The argmax walk reads every position's ions after the draft's likeliest
    residues before it, so a wrong first residue puts every later lookup off
    by its mass; b1 is seldom seen, and at charge 3+ the long y ions that
    would place it are mostly 2+. After one step from the blank draft, each
    spectrum's K likeliest first residues (STOP excluded) each start a
    recursion of their own, that residue given and the rest blank, and the
    run whose draft is likeliest under its own log-probabilities (the sum of
    each position's best) is kept: the network's own reading chooses. Returns
    what `_refine` returns for the kept runs, with the steps of all K runs
    and the first.
    """
    first, _, _ = _refine(model, batch, 1, 1.1, None, 0)  # (B, L, V)
    starts = min(starts, first.shape[-1] - 1)  # at most every token but STOP
    residue = first[:, 0].clone()
    residue[:, masses.STOP_INDEX] = -math.inf
    top = residue.topk(starts, dim=-1).indices  # (B, K)
    n, length = first.shape[:2]
    runs = torch.arange(n, device=first.device).repeat(starts)  # run-major rows
    tokens = first.new_zeros(starts * n, length, dtype=torch.long)
    tokens[:, 0] = top.T.reshape(-1)
    given = torch.zeros_like(tokens, dtype=torch.bool)
    given[:, 0] = True
    many = {key: value[runs] for key, value in batch.items()}
    y, steps, history = _refine(
        model,
        many,
        n_steps,
        halt_threshold,
        model.draft_logits(tokens, given).to(first.dtype),
        halt_unchanged,
    )
    likeliest = y.max(dim=-1).values.sum(dim=-1).view(starts, n)  # (K, B)
    kept = likeliest.argmax(dim=0) * n + torch.arange(n, device=y.device)  # (B,)
    steps = steps.view(starts, n).sum(dim=0) + 1
    return y[kept], steps, [step[kept] for step in history]


@dataclass
class DraftStep:
    """The network's draft after one supervision step, for showing the recursion."""

    step: int  # 1-based supervision step
    peptide: str  # greedy reading of the draft (Casanovo notation)
    confidence: list[float]  # probability of each token at its position
    explained: float  # share of the spectrum's intensity its b/y ions (1+, 2+) explain


def refinement_trace(
    model: PepTRM, spectrum: Spectrum, cfg: Config, tol_da: float = 0.02
) -> list[DraftStep]:
    """How the recursion changed its mind on one preprocessed spectrum.

    Runs every supervision step (no halting) and reads each step's draft greedily,
    with each token's probability and the share of intensity the draft's b and y
    ions (1+ and 2+) explain within `tol_da`.
    """
    batch = preprocess.collate([spectrum], cfg.preprocess.n_peaks)
    _, _, history = refine(model, batch, cfg.recursion.n_supervision, 1.1)
    peaks = FragmentEvidence(
        spectrum.mz, spectrum.intensity, 0.0, spectrum.charge, tol_da
    )
    total = float(peaks.weight.sum()) or 1.0
    trace = []
    for k, log_probs in enumerate(history, start=1):
        (candidate,) = decoding.greedy(log_probs.float())
        explained = 0.0
        if candidate.tokens:
            ions = [
                np.concatenate(masses.fragment_mz(candidate.tokens, z)) for z in (1, 2)
            ]
            found = peaks.nearest_within(np.concatenate(ions))
            explained = float(peaks.weight[np.unique(found[found >= 0])].sum()) / total
        trace.append(
            DraftStep(
                k,
                masses.format_peptide(candidate.tokens),
                list(candidate.aa_scores),
                explained,
            )
        )
    return trace


def candidates_as_draft(
    model: PepTRM, candidates: list[list[decoding.Candidate]], length: int
) -> Tensor:
    """The draft (B, L, V) that puts each spectrum's best peptide back in the recursion.

    Spectra without a candidate get the blank draft.
    """
    tokens = torch.zeros(len(candidates), length, dtype=torch.long)
    given = torch.zeros(len(candidates), dtype=torch.bool)
    for row, options in enumerate(candidates):
        if options:
            tokens[row] = torch.as_tensor(masses.encode(options[0].tokens, length))
            given[row] = True
    return model.draft_logits(tokens, given)


def search_top(
    log_probs: Tensor,
    precursor_mass: Tensor,
    cfg: Config,
    top_k: int,
    peaks: list[FragmentEvidence],
    head_k: int,
) -> list[list[decoding.Candidate]]:
    """The candidates to rank: the search's top `head_k`, then more.

    A search that runs out of budget can return a different best peptide when
    asked for more of them, so the ranked head always comes from one search of
    a fixed size; rows past it (`top_k` larger) come from a larger search and
    are appended in its order, leaving the head untouched. A search asked for
    many peptides prunes less, runs out of budget more often and can miss the
    best one that a search for one finds: that one goes first, so reranking
    starts from at least the plain search's answer. The searches of every size
    run together, scoring each prefix once (`decoding.decode_lists`).
    """
    log_probs = log_probs.float().cpu()
    sizes = list(dict.fromkeys((head_k, 1, top_k)))  # distinct, head first
    lists = decoding.decode_lists(log_probs, precursor_mass, cfg.decoding, sizes, peaks)
    by_size = dict(zip(sizes, lists, strict=True))
    found = by_size[head_k]
    if head_k > 1:
        for options, (first, *_) in zip(found, by_size[1], strict=True):
            rest = [c for c in options if c.indices != first.indices]
            options[:] = [first, *rest][:head_k] if first.constrained else options
    if top_k > head_k:
        for options, extra in zip(found, by_size[top_k], strict=True):
            seen = {tuple(c.indices) for c in options}
            options += [c for c in extra if tuple(c.indices) not in seen]
            del options[top_k:]
    return found


class NetworkPass(NamedTuple):
    """One batch after the network: what the search and the scorers start from."""

    batch: dict[str, Tensor]  # `preprocess.collate`'s tensors, on the device
    log_probs: Tensor  # (B, L, V) after the last supervision step
    steps: Tensor  # (B,) supervision steps each spectrum ran


def network_pass(
    model: PepTRM,
    spectra: Sequence[Spectrum],
    cfg: Config,
    device: str,
    summary: RunSummary,
) -> NetworkPass:
    """Collate one batch and refine it: the network's share of `decode_batch`.

    The network reads the batch in parts of similar peak counts (`peak_parts`),
    each cut to its widest spectrum's peaks: the peaks' attention and the
    encoders' work shrink with them (dev: median 77 of 150 peaks), and every
    spectrum gets what the whole batch at full width gives it.
    """
    batch = preprocess.collate(spectra, cfg.preprocess.n_peaks)
    batch = {k: v.to(device) for k, v in batch.items()}
    started = time.perf_counter()
    n, length = len(spectra), cfg.model.max_length
    log_probs = batch["mz"].new_empty(n, length, model.vocab_size)
    steps = torch.zeros(n, dtype=torch.long, device=batch["mz"].device)
    chances = None
    for rows, width in peak_parts(batch["mz"], batch["intensity"], PART_SPECTRA):
        part = {key: value[rows] for key, value in batch.items()}
        part["mz"], part["intensity"] = (
            part[key][:, :width] for key in ("mz", "intensity")
        )
        annotate(model, part)
        log_probs[rows], steps[rows], _ = refine(
            model,
            part,
            cfg.inference_steps,
            cfg.decoding.halt_threshold,
            precision=cfg.decoding.precision,
            halt_unchanged=cfg.decoding.halt_unchanged,
            starts=cfg.decoding.first_residue_starts,
        )
        if "ion_chances" in part:  # padding columns stay 0: nothing reads them
            found = part["ion_chances"]
            if chances is None:
                chances = found.new_zeros(n, batch["mz"].shape[1], found.shape[-1])
            chances[rows, :width] = found
    if chances is not None:
        batch["ion_chances"] = chances
    summary.model_seconds += time.perf_counter() - started
    return NetworkPass(batch, log_probs, steps)


def peak_parts(mz: Tensor, intensity: Tensor, size: int) -> list[tuple[Tensor, int]]:
    """A batch's rows (B, P peaks) in parts of similar peak counts, with widths.

    Rows are sorted by how many peak columns they use (up to their last
    nonzero m/z or intensity; `preprocess.collate` pads after it) and cut into
    parts of about `size`; each part's width is the fewest columns, 1 short of a
    multiple of `PEAK_MULTIPLE` and at most P, that hold its widest spectrum.
    Past a spectrum's peaks the networks see padding, which attention masks
    and the ion lookups never find, so a part reads as the whole batch does.
    """
    n, columns = intensity.shape
    used = (mz > 0) | (intensity > 0)  # (B, P)
    column = torch.arange(1, columns + 1, device=mz.device)
    counts = (used * column).amax(dim=1)  # (B,) columns in use
    order = torch.argsort(counts, stable=True)
    parts = []
    for rows in order.tensor_split(max(1, -(-n // size))):
        if len(rows):
            aligned = -(-(int(counts[rows].max()) + 1) // PEAK_MULTIPLE)
            parts.append((rows, min(columns, aligned * PEAK_MULTIPLE - 1)))
    return parts


def search_and_score(
    model: PepTRM,
    refined: NetworkPass,
    cfg: Config,
    device: str,
    top_k: int,
    summary: RunSummary,
    scorers: Scorers | None = None,
    head_k: int | None = None,
) -> tuple[list[list[decoding.Candidate]], list[FragmentEvidence], Tensor]:
    """Search (and feed back) a refined batch, then score: candidates, peaks, steps.

    The rest of `decode_batch` after `network_pass`; the model is used again
    only with `decoding.refine_rounds` > 0.
    """
    batch, log_probs, steps = refined
    scorers = scorers or Scorers()
    reranker = scorers.reranker
    head = head_k or (reranker.k if reranker is not None else 1)
    precursor_mass = batch["precursor_mass"].cpu()
    peaks = evidence.from_batch(batch, cfg.decoding.fragment_tol_da, scorers.cleavage)
    for _ in range(cfg.decoding.refine_rounds):
        started = time.perf_counter()
        candidates = search_top(log_probs, precursor_mass, cfg, top_k, peaks, head)
        summary.decode_seconds += time.perf_counter() - started
        draft = candidates_as_draft(model, candidates, cfg.model.max_length)
        draft = draft.to(device)
        started = time.perf_counter()
        log_probs, more, _ = refine(
            model, batch, FEEDBACK_STEPS, 1.0, draft, cfg.decoding.precision
        )
        steps = steps + more
        summary.model_seconds += time.perf_counter() - started
    # The last search and the scoring run together, one worker task per chunk
    # of the search (`decoding.mass_chunks`): no wait between them, and the
    # candidates and peaks cross to a worker once.
    started = time.perf_counter()
    array = log_probs.float().cpu().numpy()
    masses_of = precursor_mass.double().numpy()
    charges = batch["charge"].tolist()
    chunks = decoding.mass_chunks(masses_of)
    tasks = [
        ChunkJob(
            array[chunk],
            masses_of[chunk],
            [peaks[i] for i in chunk.tolist()],
            [charges[i] for i in chunk.tolist()],
        )
        for chunk in chunks
    ]
    one_process = replace(cfg, decoding=replace(cfg.decoding, workers=1))
    work = functools.partial(_search_and_score, one_process, top_k, head, scorers)
    candidates: list[list[decoding.Candidate]] = [[] for _ in charges]
    results = workers.parallel_map(work, tasks, cfg.decoding.workers)
    for chunk, found in zip(chunks, results, strict=True):
        for i, options in zip(chunk.tolist(), found, strict=True):
            candidates[i] = options
    summary.decode_seconds += time.perf_counter() - started
    return candidates, peaks, steps


class ChunkJob(NamedTuple):
    """One chunk of a batch to search and score in a decoding worker."""

    log_probs: np.ndarray  # (C, L, V)
    precursor_mass: np.ndarray  # (C,) neutral (Da)
    peaks: list[FragmentEvidence]
    charges: list[int]


def _search_and_score(
    cfg: Config, top_k: int, head: int, scorers: Scorers, job: ChunkJob
) -> list[list[decoding.Candidate]]:
    """The search's candidates of one chunk, scored; the first `top_k` of each."""
    found = search_top(
        torch.from_numpy(job.log_probs), job.precursor_mass, cfg, top_k, job.peaks, head
    )
    jobs = list(zip(found, job.peaks, job.charges, strict=True))
    return scorers.apply_many(jobs, keep=top_k)


def decode_batch(
    model: PepTRM,
    spectra: Sequence[Spectrum],
    cfg: Config,
    device: str,
    top_k: int,
    summary: RunSummary,
    scorers: Scorers | None = None,
    head_k: int | None = None,
) -> tuple[list[list[decoding.Candidate]], list[FragmentEvidence], Tensor]:
    """Refine, decode (and feed back) one batch: candidates, peaks, steps run.

    The search adds the scorers' learned cleavage log-odds when they have them.
    With a `calibration` the candidates' scores (and per-residue scores) are its
    calibrated probabilities. With a `reranker`, the search's top `reranker.k`
    are reordered by the reranker's calibrated probability, which becomes the
    peptide score. The search always returns at least that many, and only the
    first `top_k` are kept after reranking, so `top_k` never changes rank 1.
    Without a reranker the search's order stands. `head_k` overrides the size
    of the search that heads the ranking (`search_top`).
    """
    refined = network_pass(model, spectra, cfg, device, summary)
    return search_and_score(
        model, refined, cfg, device, top_k, summary, scorers, head_k
    )


def predict_batch(
    model: PepTRM,
    spectra: Sequence[Spectrum],
    cfg: Config,
    device: str,
    top_k: int,
    summary: RunSummary,
    scorers: Scorers | None = None,
) -> list[list[Prediction]]:
    """Sequence one batch of preprocessed spectra; top-k predictions per spectrum."""
    refined = network_pass(model, spectra, cfg, device, summary)
    return finish_batch(model, spectra, refined, cfg, device, top_k, summary, scorers)


def finish_batch(
    model: PepTRM,
    spectra: Sequence[Spectrum],
    refined: NetworkPass,
    cfg: Config,
    device: str,
    top_k: int,
    summary: RunSummary,
    scorers: Scorers | None = None,
) -> list[list[Prediction]]:
    """`predict_batch` after the network: search, score and write the rows."""
    candidates, _, steps = search_and_score(
        model, refined, cfg, device, top_k, summary, scorers
    )
    out = []
    for spectrum, options, n in zip(spectra, candidates, steps.tolist(), strict=True):
        summary.steps += n
        rows = []
        for rank, candidate in enumerate(options, start=1):
            peptide = masses.format_peptide(candidate.tokens)
            if not candidate.constrained and rank == 1:
                summary.unconstrained += 1
            rows.append(
                Prediction(
                    ref=spectrum.ref,
                    peptide=peptide,
                    score=candidate.score,
                    aa_scores=list(candidate.aa_scores),
                    charge=spectrum.charge,
                    precursor_mz=spectrum.precursor_mz,
                    calc_mz=masses.precursor_mz(candidate.tokens, spectrum.charge)
                    if candidate.tokens
                    else None,
                    mass_error_ppm=candidate.mass_error_ppm,
                    isotope=candidate.isotope,
                    rank=rank,
                    status="ok" if candidate.constrained else "unconstrained",
                    n_steps=n,
                )
            )
        out.append(rows)
    return out


def _finish_in_turn(
    model: PepTRM,
    spectra: Sequence[Spectrum],
    refined: NetworkPass,
    cfg: Config,
    device: str,
    top_k: int,
    scorers: Scorers | None,
) -> tuple[list[list[Prediction]], RunSummary]:
    """`finish_batch` in the search thread; its share of the run's summary."""
    summary = RunSummary()
    rows = finish_batch(model, spectra, refined, cfg, device, top_k, summary, scorers)
    return rows, summary


def _skipped_row(record: Skipped) -> Prediction:
    return Prediction(
        ref=record.ref,
        peptide="",
        score=math.nan,
        charge=record.charge,
        precursor_mz=record.precursor_mz,
        status=f"skipped: {record.reason}",
    )


def _file_records(
    path: str | Path, default_charge: int | None, summary: RunSummary
) -> Iterator[Spectrum | Skipped]:
    """The records of one input; a file we cannot read becomes one Skipped row.

    Bad input never stops a run: when a file turns out unreadable (garbage, an
    unknown extension, a broken gzip stream), the spectra read so far keep their
    rows, the rest of the file gets one row saying why, and the next file is read.
    """
    n_records = 0
    try:
        for record in read_spectra(path, default_charge=default_charge):
            n_records += 1
            yield record
    except InputError as error:
        summary.unreadable[str(path)] = str(error)
        rest = "; the rest of the file is skipped" if n_records else ""
        yield Skipped(SpectrumRef(str(path), n_records), f"{error}{rest}")


def device_names(device: str, devices: int) -> list[str]:
    """The torch device of each of `devices` sequencing processes.

    "cuda" with several devices means GPUs 0..N-1; "cpu" means N processes
    sharing the CPU cores. A numbered device ("cuda:1") is one device only.
    """
    if devices < 1:
        raise ValueError(f"--devices {devices}: give at least 1")
    if devices == 1:
        return [device]
    if device == "cuda":
        available = torch.cuda.device_count()
        if devices > available:
            raise ValueError(f"--devices {devices}: only {available} GPUs visible")
        return [f"cuda:{i}" for i in range(devices)]
    if device == "cpu":
        return ["cpu"] * devices
    raise ValueError(
        f"--device {device} with --devices {devices}: give --device cuda or cpu "
        "to spread the work over several devices"
    )


_DEVICE: dict = {}  # in a sequencing process: its model, device, config, scorers


def _start_device(
    model: PepTRM, cfg: Config, scorers: Scorers | None, names, n_devices: int
) -> None:
    """Initialise one sequencing process: take a device, put the model on it."""
    device = names.get()
    if device == "cpu":  # the CPU cores and the search workers are shared out
        cores = workers.resolve_workers(0)
        torch.set_num_threads(max(1, cores // n_devices))
        share = max(1, workers.resolve_workers(cfg.decoding.workers) // n_devices)
        cfg = replace(cfg, decoding=replace(cfg.decoding, workers=share))
    _DEVICE.update(
        model=model.to(device).eval(), device=device, cfg=cfg, scorers=scorers
    )


def _predict_on_device(
    spectra: list[Spectrum], top_k: int
) -> tuple[list[list[Prediction]], RunSummary]:
    """`predict_batch` in a sequencing process; its share of the run's summary."""
    summary = RunSummary()
    rows = predict_batch(
        _DEVICE["model"],
        spectra,
        _DEVICE["cfg"],
        _DEVICE["device"],
        top_k,
        summary,
        _DEVICE["scorers"],
    )
    return rows, summary


def _device_pool(
    model: PepTRM, cfg: Config, scorers: Scorers | None, names: list[str]
) -> ProcessPoolExecutor:
    """One process per device name, each holding its own copy of the model."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    queue = context.Queue()
    for name in names:
        queue.put(name)
    return ProcessPoolExecutor(
        len(names),
        mp_context=context,
        initializer=_start_device,
        initargs=(model.cpu(), cfg, scorers, queue, len(names)),
    )


def predictions(
    inputs: Sequence[str | Path],
    model: PepTRM,
    cfg: Config,
    device: str = "cpu",
    top_k: int | None = None,
    default_charge: int | None = None,
    summary: RunSummary | None = None,
    progress: bool = True,
    scorers: Scorers | None = None,
    devices: int = 1,
) -> Iterator[Prediction]:
    """Stream prediction rows for every spectrum of `inputs`, in input order.

    `devices` > 1 sequences the batches in that many processes
    (`device_names`); the rows are the same as with one.
    """
    summary = summary if summary is not None else RunSummary()
    top_k = top_k or cfg.decoding.top_k
    prepare = preprocess.pipeline(cfg.preprocess)
    names = device_names(device, devices)
    pool = _device_pool(model, cfg, scorers, names) if devices > 1 else None
    # On one device the network reads batch k + 1 while a thread searches and
    # scores batch k in the decoding workers, so neither waits for the other;
    # feedback rounds run the network after the search, so they stay in turn.
    finisher = None
    threads = torch.get_num_threads()  # restored when the run ends
    if pool is None:
        model = model.to(device).eval()
        wanted = workers.network_threads(
            cfg.decoding.network_threads, cfg.decoding.workers
        )
        if device == "cpu" and wanted:
            torch.set_num_threads(wanted)
        if cfg.decoding.refine_rounds == 0:
            finisher = ThreadPoolExecutor(1, thread_name_prefix="peptrm-search")
    pending: list[Spectrum | Skipped] = []
    # Batches sent to the device processes (or, refined, to the search thread),
    # oldest first, with their records; more than `max_in_flight` waits. On one
    # device the network runs up to two batches ahead of the search, so neither
    # waits at a batch's end for the other's (dev, whole process, 2 pairs in
    # turn: 0.96x the wall-clock of one batch ahead, the same rows).
    max_in_flight = 2 * len(names) if pool is not None else 2
    in_flight: collections.deque[tuple[list, Future | None]] = collections.deque()
    workers_started = False  # once the first batch of several chunks came
    # The total is an estimate from the raw bytes (MS1 and unreadable files make
    # it inexact); the bar moves once per batch, when its rows are written.
    bar = tqdm(
        desc="sequencing",
        unit="spectra",
        total=estimate_spectra(inputs) if progress else None,
        disable=not progress,
        dynamic_ncols=True,
    )

    def rows_of(records: list, results: Iterator[list[Prediction]]):
        for record in records:
            if isinstance(record, Skipped):
                summary.skipped += 1
                if len(summary.skip_examples) < MAX_SKIP_MESSAGES:
                    summary.skip_examples.append(record.reason)
                yield _skipped_row(record)
            else:
                summary.sequenced += 1
                yield from next(results)
        bar.update(len(records))

    def finish_oldest() -> Iterator[Prediction]:
        records, future = in_flight.popleft()
        results: list[list[Prediction]] = []
        if future is not None:
            results, part = future.result()
            summary.steps += part.steps
            summary.unconstrained += part.unconstrained
            summary.model_seconds += part.model_seconds
            summary.decode_seconds += part.decode_seconds
        yield from rows_of(records, iter(results))

    def flush() -> Iterator[Prediction]:
        nonlocal workers_started
        records = list(pending)
        pending.clear()
        spectra = [r for r in records if isinstance(r, Spectrum)]
        if pool is None and finisher is None:  # feedback rounds: in turn
            results = (
                predict_batch(model, spectra, cfg, device, top_k, summary, scorers)
                if spectra
                else []
            )
            yield from rows_of(records, iter(results))
            return
        future = None
        if spectra and pool is not None:
            future = pool.submit(_predict_on_device, spectra, top_k)
        elif spectra:
            chunks = math.ceil(len(spectra) / search.CHUNK)
            if workers.pool_pays(chunks) and not workers_started:
                # the workers start while the network reads this batch
                finisher.submit(workers.start_workers, cfg.decoding.workers)
                workers_started = True
            refined = network_pass(model, spectra, cfg, device, summary)
            future = finisher.submit(
                _finish_in_turn, model, spectra, refined, cfg, device, top_k, scorers
            )
        in_flight.append((records, future))
        while len(in_flight) > max_in_flight:
            yield from finish_oldest()

    try:
        for path in inputs:
            for record in _file_records(path, default_charge, summary):
                summary.spectra += 1
                if isinstance(record, Spectrum):
                    record = prepare(record)
                pending.append(record)
                spectra = sum(isinstance(r, Spectrum) for r in pending)
                if spectra >= cfg.decoding.batch_size:
                    yield from flush()
        yield from flush()
        while in_flight:
            yield from finish_oldest()
    finally:
        for executor in (pool, finisher):
            if executor is not None:
                executor.shutdown(cancel_futures=True)
        torch.set_num_threads(threads)
    bar.close()


def expand_folders(inputs: Sequence[str | Path]) -> list[str | Path]:
    """Each input file as given, and each folder as the spectrum files inside it.

    Raises
    ------
    InputError
        For a path that does not exist or a folder without spectrum files.
    """
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise InputError(f"{', '.join(missing)}: no such file")
    out: list[str | Path] = []
    for path in inputs:
        if not Path(path).is_dir():
            out.append(path)
            continue
        found = spectrum_files(path)
        if not found:
            raise InputError(
                f"{path}: is a directory with no .mgf, .mzML or .mzXML files in it"
            )
        log.info("%s: %d spectrum files", path, len(found))
        out += found
    return out


def distinct_inputs(inputs: Sequence[str | Path]) -> list[str | Path]:
    """The inputs with a file given twice kept once (first place), with a warning.

    A file read twice would give each of its spectra two rows with one
    (file, index), which nothing downstream can tell apart.
    """
    seen: set[str] = set()
    out = []
    for path in inputs:
        key = str(Path(path).resolve())
        if key in seen:
            log.warning("%s: given more than once; reading it once", path)
            continue
        seen.add(key)
        out.append(path)
    return out


def with_q_values(
    rows: Iterable[Prediction], fdr: float | None = None
) -> Iterator[Prediction]:
    """The rows again, each rank-1 row with its q-value (`confidence.q_values`).

    q-values need every score first, so rows are spooled to a temporary file
    (memory stays flat on large inputs) and replayed. With `fdr`, a rank-1 row
    whose q-value is above it keeps its peptide but its status says it did not
    pass, so a filtered run still has every spectrum's row.
    """
    scores = []
    with tempfile.TemporaryFile() as spool:
        for row in rows:
            pickle.dump(row, spool)
            if row.rank == 1 and row.peptide:
                scores.append(row.score)
        q = iter(confidence.q_values(np.array(scores)))
        spool.seek(0)
        while True:
            try:
                row = pickle.load(spool)
            except EOFError:
                break
            if row.rank == 1 and row.peptide:
                row.q_value = float(next(q))
                if fdr is not None and not row.q_value <= fdr:
                    row.status = (
                        f"above FDR {fdr:g} (q = {row.q_value:.4f}); {row.status}"
                    )
            yield row


def sequence_files(
    inputs: Sequence[str | Path],
    output: str | Path,
    model: PepTRM,
    cfg: Config,
    device: str = "cpu",
    top_k: int | None = None,
    default_charge: int | None = None,
    progress: bool = True,
    scorers: Scorers | None = None,
    fdr: float | None = None,
    devices: int = 1,
) -> RunSummary:
    """Sequence every spectrum of `inputs` and write mzTab (or CSV, by extension).

    A folder stands for the spectrum files in it (sorted). Every input must
    exist and the output must be a .mztab or .csv that is not an input before any
    work starts; a file that turns out unreadable gets a skipped row and the run
    goes on. The output appears only when the run succeeds: it is written beside
    its final name and renamed at the end. Rank-1 rows carry q-values
    (`with_q_values`), filtered by `fdr` when given. `devices`: sequencing
    processes (`predictions`).
    """
    inputs = distinct_inputs(expand_folders(inputs))
    check_output_path(output, inputs)
    summary = RunSummary(inputs=[str(p) for p in inputs])
    started = time.perf_counter()
    rows: Iterable[Prediction] = predictions(
        inputs,
        model,
        cfg,
        device,
        top_k,
        default_charge,
        summary,
        progress,
        scorers,
        devices,
    )
    rows = with_q_values(rows, fdr)
    output = Path(output)
    with replace_when_done(output) as path:
        if output.suffix.lower() == ".csv":
            write_csv(path, rows)
        else:
            write_mztab(
                path,
                rows,
                [str(Path(p).resolve()) for p in inputs],
                __version__,
                params={
                    "top_k": top_k or cfg.decoding.top_k,
                    "precursor_tol_ppm": cfg.decoding.precursor_tol_ppm,
                    "isotope_errors": f"{cfg.decoding.min_isotope}.."
                    f"{cfg.decoding.max_isotope}",
                    "fragment_evidence_weight": cfg.decoding.evidence_weight,
                    "fragment_tol_da": cfg.decoding.fragment_tol_da,
                    "scores": (scorers or Scorers()).describe(),
                    "fdr": "off" if fdr is None else fdr,
                },
            )
    summary.seconds = time.perf_counter() - started
    return summary


def calibrate(
    model: PepTRM,
    spectra: Sequence[Spectrum],
    cfg: Config,
    device: str = "cpu",
    fitted_on: str = "",
    rerank_k: int = rerank.DEFAULT_K,
    learn_cleavage: bool = True,
    rerank_features: Sequence[str] = rerank.FEATURES,
    platt_spectra: Sequence[Spectrum] = (),
    platt_fitted_on: str = "",
    cross_fit: Sequence[PepTRM] = (),
) -> tuple[Scorers, dict]:
    """Fit every scorer a model carries on labelled, preprocessed spectra.

    First the cleavage log-odds (`evidence.fit_table`, unless `learn_cleavage`
    is False), then, on the search's results with them, the per-residue and
    peptide calibration (rank-1 peptides) and the reranker (`peptrm.rerank`,
    the top `rerank_k`; 0: none; `rerank_features`: `rerank.FEATURES`, or
    `rerank.PREDICTED_FEATURES` to read ms2pip's intensities too). Returns
    them and what they did on these spectra: their number, the peptides right
    at rank 1 of the search, the peptide-score ECE before and after
    calibration (in-sample), and the reranker's out-of-fold rank-1 recall.
    With `platt_spectra` (spectra the network did not train on), the
    reranker's map to a probability is then refitted on those
    (`rerank.refit_platt`), and the report gives their number.

    `cross_fit` (`weights.load_cross_fit`: model k's peak annotator never
    learned from fold k of the training part) cross-fits the scorers: each
    spectrum is annotated and searched by the model that left its fold out, so
    the scorers learn what the annotator says of spectra it has not seen (on
    those it learned from, it is surer than it will be when sequencing).
    """
    if not spectra:
        raise ValueError("no usable labelled spectra to calibrate on")
    readers = list(cross_fit) or [model]
    table = None
    if learn_cleavage:
        peaks = None
        if cfg.model.peak_annotator:
            peaks = in_folds(
                readers, spectra, lambda m, s: _annotated_peaks(m, s, cfg, device)
            )
        table = evidence.fit_table(
            spectra, cfg.decoding.fragment_tol_da, fitted_on=fitted_on, peaks=peaks
        )
    k = max(rerank_k, 1)
    searched = in_folds(
        readers,
        spectra,
        lambda m, s: list(
            zip(*_search_labelled(m, s, cfg, device, k, table), strict=True)
        ),
    )
    groups = [found for found, _ in searched]
    peaks = [found_peaks for _, found_peaks in searched]
    candidates = [options[0] for options in groups]
    labels = [s.peptide for s in spectra]
    fitted = confidence.fit(candidates, peaks, labels, fitted_on)
    reranker, rerank_report = None, {}
    if rerank_k > 0:
        charges = [s.charge for s in spectra]
        reranker, rerank_report = rerank.fit(
            groups, peaks, charges, labels, rerank_k, fitted_on,
            features=rerank_features,
        )  # fmt: skip
    if reranker is not None and platt_spectra:
        platt_groups, platt_peaks = _search_labelled(
            model, platt_spectra, cfg, device, k, table
        )
        reranker = rerank.refit_platt(
            reranker,
            platt_groups,
            platt_peaks,
            [s.charge for s in platt_spectra],
            [s.peptide for s in platt_spectra],
            platt_fitted_on,
        )
        rerank_report["platt_spectra"] = len(platt_spectra)
    correct = np.array(
        [
            metrics.aa_match(c.tokens, masses.parse(label))[1]
            for c, label in zip(candidates, labels, strict=True)
        ]
    )
    raw = np.array([c.score for c in candidates])
    calibrated = np.array(
        [fitted.apply(c, p)[0] for c, p in zip(candidates, peaks, strict=True)]
    )
    return Scorers(fitted, reranker, table), {
        "spectra": len(spectra),
        "correct": int(correct.sum()),
        "ece_raw": metrics.expected_calibration_error(raw, correct),
        "ece_calibrated": metrics.expected_calibration_error(calibrated, correct),
        **rerank_report,
    }


def in_folds(
    models: Sequence[PepTRM],
    spectra: Sequence[Spectrum],
    work: Callable[[PepTRM, list[Spectrum]], list[T]],
) -> list[T]:
    """`work(model, spectra)`'s per-spectrum results, in the order of `spectra`.

    With one model, it reads every spectrum; with K (cross-fitting), model k
    reads the spectra of fold k (`train.fold_of`), the fold it left out.
    """
    if len(models) == 1:
        return work(models[0], list(spectra))
    from peptrm.train import fold_of  # here alone: training imports Lightning

    fold = [fold_of(s.peptide, len(models)) for s in spectra]
    out: list[T | None] = [None] * len(spectra)
    for k, model in enumerate(models):
        rows = [i for i, f in enumerate(fold) if f == k]
        if rows:
            results = work(model, [spectra[i] for i in rows])
            for i, result in zip(rows, results, strict=True):
                out[i] = result
    return out


def _annotated_peaks(
    model: PepTRM, spectra: Sequence[Spectrum], cfg: Config, device: str
) -> list[FragmentEvidence] | None:
    """The peaks as the search sees them with the model's peak annotator, or None.

    None when the model has no annotator: the cleavage table then reads the
    spectra's own peaks (their intensity ranks).
    """
    if not cfg.model.peak_annotator:
        return None
    peaks, size = [], cfg.decoding.batch_size
    for start in range(0, len(spectra), size):
        batch = preprocess.collate(
            spectra[start : start + size], cfg.preprocess.n_peaks
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        peaks += evidence.from_batch(
            annotate(model, batch), cfg.decoding.fragment_tol_da
        )
    return peaks


def _search_labelled(
    model: PepTRM,
    spectra: Sequence[Spectrum],
    cfg: Config,
    device: str,
    k: int,
    table: CleavageTable | None,
) -> tuple[list[list[decoding.Candidate]], list[FragmentEvidence]]:
    """The search's top `k` (unscored) and the peaks of labelled spectra."""
    groups, peaks, summary = [], [], RunSummary()
    size = cfg.decoding.batch_size
    for start in range(0, len(spectra), size):
        found, found_peaks, _ = decode_batch(
            model, spectra[start : start + size], cfg, device, k, summary,
            Scorers(cleavage=table), head_k=k,
        )  # fmt: skip
        groups += found
        peaks += found_peaks
        log.info("calibrate: searched %d of %d spectra", len(groups), len(spectra))
    return groups, peaks
