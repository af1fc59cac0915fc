"""The PepTRM network: spectrum encoder -> recursive core -> heads.

Shapes used in comments throughout:
    B batch, P peaks (+1 for the precursor token), L peptide positions,
    D width, V vocabulary.

The design follows the Tiny Recursive Model (Jolicoeur-Martineau, "Less is More:
Recursive Reasoning with Tiny Networks", 2025): one small network, applied over
and over, improves a whole draft answer `y` by first updating a latent reasoning
state `z` n times from the spectrum `x` and the draft, then revising the draft
once from `z`. This file holds the network only: no decoding, I/O or Lightning.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from peptrm import masses
from peptrm.config import ModelConfig, RecursionConfig

MAX_STEPS = 64  # step embeddings available; later steps share the last one
DRAFT_CONFIDENCE = 5.0  # logit margin of a given draft: p ~ 0.85 after softmax


# --------------------------------------------------------------------------
# Small blocks
# --------------------------------------------------------------------------
class SinusoidalEncoding(nn.Module):
    """Sine/cosine features of a scalar at log-spaced wavelengths.

    With wavelengths from 0.001 to 10000 Th the shortest terms separate peaks
    0.01 Th apart while the longest keep every m/z in the file distinct.
    """

    def __init__(self, dim: int, min_wavelength: float, max_wavelength: float) -> None:
        super().__init__()
        n = dim // 2
        ratio = max_wavelength / min_wavelength
        wavelengths = min_wavelength * ratio ** (torch.arange(n) / max(n - 1, 1))
        self.register_buffer("frequencies", 2 * math.pi / wavelengths, persistent=False)

    def forward(self, values: Tensor) -> Tensor:
        """Encode values of any shape S as (S, D) features."""
        angles = values.unsqueeze(-1).double() * self.frequencies.double()  # (..., D/2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).float()  # (..., D)


class Block(nn.Module):
    """Pre-norm Transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, n_heads: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(
            dim, n_heads, dropout=dropout, batch_first=True
        )
        if cross:  # only blocks that read the spectrum carry cross-attention weights
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attention = nn.MultiheadAttention(
                dim, n_heads, dropout=dropout, batch_first=True
            )
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * dim, dim),
        )

    def forward(
        self,
        h: Tensor,
        padding: Tensor | None = None,
        memory: Tensor | None = None,
        memory_padding: Tensor | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Update `h` (B, S, D); attend to `memory` (B, M, D) when given.

        `memory_kv` is this block's keys and values of `memory` (`project_memory`),
        computed once where the same memory is read many times.
        """
        a = self.norm_self(h)
        h = h + attend(self.self_attention, a, a, padding)
        if memory is not None:
            query = self.norm_cross(h)
            h = h + attend(
                self.cross_attention, query, memory, memory_padding, memory_kv
            )
        return h + self.mlp(self.norm_mlp(h))  # (B, S, D)


def attend(
    attention: nn.MultiheadAttention,
    query: Tensor,
    memory: Tensor,
    padding: Tensor | None,
    kv: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """`attention`(query, memory, memory) with its own weights, through SDPA.

    The same sums as `nn.MultiheadAttention`, but its inference fast path with a
    padding mask (a masked softmax and batched matmuls) is ~5x slower on a CPU
    than `scaled_dot_product_attention`, where the encoder spent a third of its
    time. `padding` (B, M) is True at padded memory positions. `kv` is
    `project_memory(attention, memory)` when the caller already has it.
    """
    (b, s, d), m, heads = query.shape, memory.shape[1], attention.num_heads
    w, bias = attention.in_proj_weight, attention.in_proj_bias
    q = nn.functional.linear(query, w[:d], bias[:d])
    q = q.view(b, s, heads, d // heads).transpose(1, 2)  # (B, H, S, D/H)
    k, v = project_memory(attention, memory) if kv is None else kv
    mask = None if padding is None else ~padding.view(b, 1, 1, m)  # True: attend
    dropout = attention.dropout if attention.training else 0.0
    out = nn.functional.scaled_dot_product_attention(q, k, v, mask, dropout)
    return attention.out_proj(out.transpose(1, 2).reshape(b, s, d))  # (B, S, D)


def project_memory(
    attention: nn.MultiheadAttention, memory: Tensor
) -> tuple[Tensor, Tensor]:
    """The keys and values (B, H, M, D/H) that `attention` reads from `memory`."""
    (b, m, d), heads = memory.shape, attention.num_heads
    w, bias = attention.in_proj_weight[d:], attention.in_proj_bias[d:]
    k, v = nn.functional.linear(memory, w, bias).chunk(2, dim=-1)  # (B, M, D) each
    return tuple(t.view(b, m, heads, d // heads).transpose(1, 2) for t in (k, v))


# --------------------------------------------------------------------------
# Spectrum encoder: peaks -> x
# --------------------------------------------------------------------------
class SpectrumEncoder(nn.Module):
    """Embed peaks and the precursor, then contextualise them with a few blocks.

    Each peak is its m/z encoding plus a learned projection of its intensity. The
    precursor becomes one extra token: its neutral mass (same sinusoids) plus a
    charge embedding, so the core can check drafts against the precursor.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.mz_encoding = SinusoidalEncoding(
            cfg.dim, cfg.min_wavelength, cfg.max_wavelength
        )
        self.mz_projection = nn.Linear(cfg.dim, cfg.dim)
        self.intensity_projection = nn.Linear(1, cfg.dim)
        if cfg.complement_encoding:  # the mirror m/z M + 2 proton - m of each peak
            self.complement_projection = nn.Linear(cfg.dim, cfg.dim)
        self.complement = cfg.complement_encoding
        self.charge_embedding = nn.Embedding(cfg.max_charge + 1, cfg.dim)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.n_heads, cfg.dropout, cross=False)
            for _ in range(cfg.n_encoder_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.max_charge = cfg.max_charge

    def forward(
        self, mz: Tensor, intensity: Tensor, precursor_mass: Tensor, charge: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Return x (B, 1+P, D) and its padding mask (B, 1+P), True where padded."""
        peaks = self.mz_projection(self.mz_encoding(mz))  # (B, P, D)
        peaks = peaks + self.intensity_projection(intensity.unsqueeze(-1))  # (B, P, D)
        if self.complement:
            # A singly charged b ion at m/z m has its y partner at M + 2 proton - m
            # (and vice versa), so the mirror lines the two ladders up.
            mirror = precursor_mass.unsqueeze(1) + 2 * masses.PROTON - mz  # (B, P)
            mirror = mirror.clamp(min=0) * (intensity > 0)
            peaks = peaks + self.complement_projection(self.mz_encoding(mirror))
        charge = charge.clamp(1, self.max_charge)
        precursor = self.mz_projection(self.mz_encoding(precursor_mass))  # (B, D)
        precursor = precursor + self.charge_embedding(charge)  # (B, D)
        x = torch.cat([precursor.unsqueeze(1), peaks], dim=1)  # (B, 1+P, D)
        padding = torch.cat([torch.zeros_like(mz[:, :1]), intensity], dim=1) <= 0
        padding[:, 0] = False  # the precursor token is always present
        for block in self.blocks:
            x = block(x, padding=padding)
        return self.norm(x), padding


# --------------------------------------------------------------------------
# Recursive core: one tiny network that thinks and revises
# --------------------------------------------------------------------------
class TinyNetwork(nn.Module):
    """The single ~2-layer network used for every think and revise call.

    Thinking sees the spectrum through cross-attention; revising does not (as
    in the paper, the answer is updated from the latent state alone).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.n_heads, cfg.dropout, cross=True)
            for _ in range(cfg.n_core_layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(
        self,
        h: Tensor,
        memory: Tensor | None = None,
        memory_padding: Tensor | None = None,
        memory_kv: list[tuple[Tensor, Tensor]] | None = None,
    ) -> Tensor:
        """Map h (B, L, D) to (B, L, D); `memory_kv` holds each block's `remember`."""
        for i, block in enumerate(self.blocks):
            kv = None if memory_kv is None else memory_kv[i]
            h = block(h, memory=memory, memory_padding=memory_padding, memory_kv=kv)
        return self.norm(h)

    def remember(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each block's cross-attention keys and values of `memory` (B, M, D)."""
        return [project_memory(block.cross_attention, memory) for block in self.blocks]


# --------------------------------------------------------------------------
# Heads: residue logits, revision gate, halting
# --------------------------------------------------------------------------
class Heads(nn.Module):
    """Read residue logits, the revision gate and the halting logit."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.residues = nn.Linear(cfg.dim, vocab_size)
        self.gate = nn.Linear(cfg.dim, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(
            self.gate.bias, cfg.gate_bias
        )  # sigmoid(-2) = 0.12: earn edits
        self.halt = nn.Linear(cfg.dim, 1)

    def halting(self, z: Tensor) -> Tensor:
        """Logit (B,) that the current draft is already entirely correct."""
        return self.halt(z.mean(dim=1)).squeeze(-1)  # (B,)


# --------------------------------------------------------------------------
# Ion evidence: where the draft says the ions are, what the peaks say
# --------------------------------------------------------------------------
# I ion types (`masses.FRAGMENT_IONS`), C kernel channels.
ION_TYPES = masses.FRAGMENT_IONS
# Two kernel widths: a narrow one at Orbitrap/TOF fragment accuracy and a wide one
# that still sees ion-trap fragments (~0.5 Da) and near misses.
KERNEL_WIDTHS_DA = (0.02, 0.3)
EVIDENCE_CHANNELS = 2 * len(KERNEL_WIDTHS_DA)  # presence and intensity per width
ABSENT_MZ = 1e6  # m/z given to padding peaks so a spectrum's peaks stay sorted
KERNEL_FLOOR = -80.0  # kernel exponents below this give 0 (exp(-80) ~ 2e-35)
ROW_MULTIPLE = 32  # distinct lookup rows are padded to a multiple of this
EVIDENCE_HIDDEN = 32  # width of the per-token evidence scorer (`evidence_logits`)
# A candidate's context for the per-token scorers (`model.charge_context`):
# charge 3, charge 4+, the b fragment's share s of the residue mass, s at 3, s at 4+.
CONTEXT_FEATURES = 5


class SortedPeaks(NamedTuple):
    """One batch's peaks sorted by m/z, padding pushed past every real m/z."""

    mz: Tensor  # (B, P) ascending; padding at ABSENT_MZ
    intensity: Tensor  # (B, P) 0 for padding
    chance: Tensor | None = None  # (B, P, A) the annotator's ion-type chances

    def select(self, index: Tensor) -> SortedPeaks:
        """The peaks of the spectra at `index` (R,): (R, P) each."""
        return SortedPeaks(*(t if t is None else t[index] for t in self))


class Lookup(NamedTuple):
    """Ion evidence of a batch's distinct cleavage rows (`PepTRM._lookup`).

    R rows, each one position's V candidate cleavages; `row` says which row
    each of the B x L draft positions reads.
    """

    found: Tensor  # (R, V * I * C) kernel channels at every ion type
    chances: Tensor | None  # (R, V * CHANCE_CHANNELS) the annotator's, if any
    row: Tensor  # (B, L) index into the R rows
    context: Tensor | None = None  # (R, V, CONTEXT_FEATURES) with charge_context

    def expand(self) -> tuple[Tensor, Tensor | None]:
        """`found` (B, L, V * I * C) and `chances` (B, L, ...) per position."""
        chances = None if self.chances is None else self.chances[self.row]
        return self.found[self.row], chances


def sort_peaks(
    mz: Tensor, intensity: Tensor, chance: Tensor | None = None
) -> SortedPeaks:
    """Sort each spectrum's peaks (and their chances (B, P, A)) by m/z."""
    mz = torch.where(intensity > 0, mz, torch.full_like(mz, ABSENT_MZ))  # (B, P)
    order = mz.argsort(dim=1)
    if chance is not None:  # a padding peak's chance is read through a zero kernel
        chance = chance.gather(1, order.unsqueeze(-1).expand_as(chance))
    return SortedPeaks(mz.gather(1, order), intensity.gather(1, order), chance)


def nearest_peaks(peaks: SortedPeaks, ion_mz: Tensor) -> tuple[Tensor, Tensor]:
    """Index (B, N) of the peak nearest each ion m/z (B, N), and its kernels.

    The kernels (B, N, W) are exp(-d^2 / 2 sigma^2) of the distance d to that
    peak for each of `KERNEL_WIDTHS_DA` (0 where the nearest is padding).
    """
    right = torch.searchsorted(peaks.mz, ion_mz).clamp(max=peaks.mz.shape[1] - 1)
    left = (right - 1).clamp(min=0)  # (B, N)
    to_left = (ion_mz - peaks.mz.gather(1, left)).abs()  # (B, N)
    to_right = (peaks.mz.gather(1, right) - ion_mz).abs()  # (B, N)
    nearest = torch.where(to_left < to_right, left, right)  # (B, N)
    distance = torch.minimum(to_left, to_right)  # (B, N) to the nearest
    sigma = torch.tensor(KERNEL_WIDTHS_DA, dtype=distance.dtype, device=distance.device)
    exponent = -0.5 * (distance.unsqueeze(-1) / sigma) ** 2  # (B, N, W)
    # Most ions are far from any peak, and exp of a very negative float32 takes
    # a slow path (~30x slower); past the floor the kernel is 0. Padding peaks
    # sit at ABSENT_MZ, so far past the floor that their kernels are 0 too.
    kept = exponent > KERNEL_FLOOR  # (B, N, W)
    return nearest, torch.exp(exponent.clamp(min=KERNEL_FLOOR)) * kept


def lookup_peaks(peaks: SortedPeaks, nearest: Tensor, kernels: Tensor) -> Tensor:
    """Kernel match of every ion to its nearest observed peak (`nearest_peaks`).

    Returns (B, N, C): for each kernel width, exp(-d^2 / 2 sigma^2) of the
    distance d to the nearest peak, and that times the peak's intensity.
    Nothing here is differentiated: the lookup reads the spectrum, it is not
    learned.
    """
    intensity = peaks.intensity.gather(1, nearest).unsqueeze(-1)  # (B, N, 1)
    channels = torch.stack([kernels, kernels * intensity], dim=-1)  # (B, N, W, 2)
    return channels.flatten(-2)  # (B, N, C): presence, intensity per width


def lookup_chances(peaks: SortedPeaks, nearest: Tensor, kernels: Tensor) -> Tensor:
    """The annotator's word on every candidate ladder ion (`nearest_peaks`).

    `nearest` (B, M, A) and `kernels` (B, M, A, W) are the nearest peak to
    each of M cleavages' `ANNOTATED_IONS`; ion type a reads the chance that
    its peak is an ion of type a, times each kernel of the distance: (B, M,
    A * W). A noise peak at a b-ion m/z then counts for little, a peak the
    annotator names a b ion for much.
    """
    batch, n, kinds = nearest.shape
    flat = peaks.chance.reshape(batch, -1)  # (B, P * A)
    kind = torch.arange(kinds, device=nearest.device)  # (A,)
    chance = flat.gather(1, (nearest * kinds + kind).reshape(batch, -1))  # (B, M*A)
    found = kernels * chance.view(batch, n, kinds, 1)  # (B, M, A, W)
    return found.reshape(batch, n, -1)  # (B, M, A * W)


def padded_rows(n: int, multiple: int, device: torch.device | str) -> Tensor:
    """Indices 0..n-1, then copies of 0 up to a multiple of `multiple`.

    Elementwise kernels round a tensor's last few elements apart from the rest
    (a scalar tail), and a matrix product over a few rows rounds apart from one
    over many, so the networks read batches (`sequence.BATCH_MULTIPLE`) and
    every ion lookup reads rows (ROW_MULTIPLE) padded this way: a spectrum then
    reads the same whatever batch (or part of one) it sits in.
    """
    rows = torch.arange(n, device=device)
    return torch.cat([rows, rows[:1].expand((-n) % multiple)])


def _rows_from(
    fresh_rows: Tensor, fresh: Tensor, cached: Tensor, held: Tensor, kept: Tensor
) -> Tensor:
    """One lookup's rows: `fresh_rows` at `fresh`, the cache's rows `kept` at `held`."""
    out = fresh_rows.new_empty(len(held), fresh_rows.shape[1])
    out[fresh] = fresh_rows
    out[held] = cached[kept]
    return out


def token_scorer(features: int) -> nn.Sequential:
    """A small network shared by every token: its `features` -> one logit.

    The last layer starts at zero, so a model fine-tuned with it starts
    unchanged.
    """
    scorer = nn.Sequential(
        nn.Linear(features, EVIDENCE_HIDDEN), nn.GELU(), nn.Linear(EVIDENCE_HIDDEN, 1)
    )
    nn.init.zeros_(scorer[-1].weight)
    nn.init.zeros_(scorer[-1].bias)
    return scorer


def token_logits(
    scorer: nn.Sequential,
    features: Tensor,
    context_weights: nn.Linear | None = None,
    context: Tensor | None = None,
) -> Tensor:
    """`scorer` (`token_scorer`) of every token's `features` (..., F): logits (...).

    With `context_weights`, the candidate's `context` (..., CONTEXT_FEATURES)
    joins the features in the scorer's hidden layer.
    """
    hidden = scorer[0](features)
    if context_weights is not None:
        hidden = hidden + context_weights(context.to(hidden.dtype))
    return scorer[2](scorer[1](hidden)).squeeze(-1)


def context_weights() -> nn.Linear:
    """Weights from a candidate's context into a scorer's hidden layer, at zero."""
    weights = nn.Linear(CONTEXT_FEATURES, EVIDENCE_HIDDEN, bias=False)
    nn.init.zeros_(weights.weight)
    return weights


def candidate_context(b: Tensor, precursor_mass: Tensor, charge: Tensor) -> Tensor:
    """Each candidate cleavage's context (R, V, CONTEXT_FEATURES).

    `b` (R, V) is the cleavages' b-fragment residue masses in spectra of
    neutral precursor mass (R,) and charge (R,). At charge 3 and above the
    long fragments of a peptide are seen as 2+ ions more than as 1+, so how
    much a candidate's 2+ and 1+ ions say depends on both.
    """
    residues = (precursor_mass.double() - masses.H2O).unsqueeze(1)  # (R, 1)
    share = (b / residues).clamp(0, 1).float()  # (R, V)
    three = (charge == 3).float().unsqueeze(1).expand_as(share)  # (R, V)
    more = (charge >= 4).float().unsqueeze(1).expand_as(share)  # (R, V)
    return torch.stack([three, more, share, share * three, share * more], dim=-1)


def candidate_ion_mz(b: Tensor, precursor_mass: Tensor) -> Tensor:
    """m/z of every ion type of cleavages whose b fragments weigh `b` (B, L, V).

    `b` is each cleavage's b-fragment residue mass (neutral); the y fragment is
    precursor_mass - b. Returns (B, L, V, I).
    """
    is_y, charge, offset = masses.ion_table(ION_TYPES)  # I each
    b = b.unsqueeze(-1)  # (B, L, V, 1)
    is_y = torch.tensor(is_y, device=b.device)  # (I,)
    neutral = torch.where(is_y, precursor_mass.view(-1, 1, 1, 1) - b, b)
    charge, offset = (b.new_tensor(column) for column in (charge, offset))  # (I,)
    return masses.charged_mz(neutral, charge, offset)  # (B, L, V, I)


# --------------------------------------------------------------------------
# Peak annotator: which peaks are ladder ions
# --------------------------------------------------------------------------
# A ion types named per peak (`masses.LADDER_IONS`: b, y, b++, y++).
ANNOTATED_IONS = masses.LADDER_IONS
# Per candidate token: each annotated ion type's chance times each kernel width.
CHANCE_CHANNELS = len(ANNOTATED_IONS) * len(KERNEL_WIDTHS_DA)


class PeakAnnotator(nn.Module):
    """A spectrum encoder of its own that names each peak's ion type.

    Each peak is read in the context of all the others (its complement, its
    isotopes, the peaks a residue mass away), and gets one logit per
    `ANNOTATED_IONS` type that it is that ion of the spectrum's peptide. It is
    trained on labelled peaks alone (`training.annotator_only`); the search's
    cleavage table reads its chances in place of the peaks' intensity ranks.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        own = dataclasses.replace(cfg, n_encoder_layers=cfg.annotator_layers)
        self.encoder = SpectrumEncoder(own)
        self.head = nn.Linear(cfg.dim, len(ANNOTATED_IONS))

    def forward(
        self, mz: Tensor, intensity: Tensor, precursor_mass: Tensor, charge: Tensor
    ) -> Tensor:
        """Ion-type logits (B, P, A) of every peak (padding's are meaningless)."""
        x, _ = self.encoder(mz, intensity, precursor_mass, charge)  # (B, 1+P, D)
        return self.head(x[:, 1:])  # (B, P, A) without the precursor token


ANNOTATOR_INPUTS = ("mz", "intensity", "precursor_mass", "charge")  # batch keys


@torch.no_grad()
def peak_chances(annotator: PeakAnnotator, batch: Mapping[str, Tensor]) -> Tensor:
    """What `annotator` says of a batch's peaks (`ANNOTATOR_INPUTS`): (B, P, A)."""
    logits = annotator(*(batch[key] for key in ANNOTATOR_INPUTS))
    return torch.sigmoid(logits.float())


# --------------------------------------------------------------------------
# PepTRM
# --------------------------------------------------------------------------
class Encoded(NamedTuple):
    """An embedded batch of spectra: what every think step looks at."""

    x: Tensor  # (B, 1+P, D) precursor token + peaks
    padding: Tensor  # (B, 1+P) True where a peak is padding
    precursor_mass: Tensor  # (B,) neutral precursor mass (Da)
    peaks: SortedPeaks | None = (
        None  # for the ion-evidence lookup, when the model uses it
    )
    # The core blocks' cross-attention keys and values of x (`PepTRM.remember`).
    memory_kv: list[tuple[Tensor, Tensor]] | None = None
    # At inference (`PepTRM.remember`): the last ion lookups, shared by every
    # selection of the batch, and which spectrum of the batch each row is.
    lookups: LookupCache | None = None
    origin: Tensor | None = None  # (B,) index into the batch `remember` saw
    charge: Tensor | None = None  # (B,) precursor charge, for `charge_context`

    def select(self, index: Tensor) -> Encoded:
        """The spectra at `index` (R,) of the batch, everything they carry with them."""
        peaks = None if self.peaks is None else self.peaks.select(index)
        memory_kv = None
        if self.memory_kv is not None:
            memory_kv = [(k[index], v[index]) for k, v in self.memory_kv]
        return Encoded(
            self.x[index],
            self.padding[index],
            self.precursor_mass[index],
            peaks,
            memory_kv,
            self.lookups,
            None if self.origin is None else self.origin[index],
            None if self.charge is None else self.charge[index],
        )


class LookupCache:
    """One batch's last ion lookups, to reuse where a draft position held.

    Between think steps most of a draft's prefix masses do not change, and a
    lookup is a pure function of the spectrum and the prefix mass, so
    `PepTRM._lookup` looks up only the rows whose prefix changed since the
    last lookup of that spectrum and position, and copies the others: the
    same values as looking every row up (each looked-up part is padded to
    ROW_MULTIPLE rows, as a whole lookup is: `padded_rows`).
    """

    def __init__(self, batch: int, length: int, device: torch.device) -> None:
        # per spectrum of the batch and position: the prefix mass (float64) its
        # last lookup read (nan: none) and that lookup's row in `found`
        self.prefix = torch.full(
            (batch, length), math.nan, dtype=torch.float64, device=device
        )
        self.row = torch.zeros((batch, length), dtype=torch.long, device=device)
        self.found: Tensor | None = None  # (R, V * I * C) of the last lookup
        self.chances: Tensor | None = None  # (R, V * CHANCE_CHANNELS) or None


class PepTRM(nn.Module):
    """Tiny Recursive Model for de novo peptide sequencing.

    Symbols as in the paper: `x` is the embedded spectrum (B, 1+P, D); `y` the
    current draft, kept as per-position logits over the vocabulary (B, L, V);
    `z` the latent reasoning state (B, L, D). n = `n_latent_steps`,
    T = `n_cycles`; N_sup (`n_supervision`) is driven from outside (training
    loop, inference loop), each supervision step calling `forward` once.

    With `draft_mass_encoding`, each draft position also carries the m/z of
    the b and y ions its soft prefix predicts, encoded exactly like the peaks,
    so thinking can check the draft's fragment ladder against the spectrum.
    """

    def __init__(
        self, cfg: ModelConfig, recursion: RecursionConfig, vocab_size: int
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.recursion = recursion
        self.encoder = SpectrumEncoder(cfg)
        self.token_embedding = nn.Linear(vocab_size, cfg.dim, bias=False)  # soft lookup
        self.position_embedding = nn.Parameter(
            torch.randn(cfg.max_length, cfg.dim) * 0.02
        )
        self.step_embedding = nn.Embedding(MAX_STEPS, cfg.dim)
        # Small like the position embedding: N(0, 1) (norm ~8 at D = 64, the same at
        # every position) would drown the position signal.
        nn.init.normal_(self.step_embedding.weight, std=cfg.step_embedding_std)
        features = vocab_size * len(ION_TYPES) * EVIDENCE_CHANNELS
        if cfg.ion_evidence:
            self.evidence_projection = nn.Linear(features, cfg.dim)
        if cfg.ion_evidence and cfg.suffix_evidence:
            self.suffix_evidence_projection = nn.Linear(features, cfg.dim)
        if cfg.ion_evidence and cfg.lookahead_evidence:
            # starts at zero, so a model fine-tuned with it starts unchanged
            self.lookahead_projection = nn.Linear(features, cfg.dim)
            nn.init.zeros_(self.lookahead_projection.weight)
            nn.init.zeros_(self.lookahead_projection.bias)
        if cfg.ion_evidence and cfg.evidence_logits:
            # each candidate token's I x C ion features -> one logit
            self.evidence_scorer = token_scorer(len(ION_TYPES) * EVIDENCE_CHANNELS)
            if cfg.charge_context:
                self.evidence_context = context_weights()
        if cfg.chance_evidence:
            if not (cfg.ion_evidence and cfg.peak_annotator):
                raise ValueError(
                    "model.chance_evidence needs model.ion_evidence and "
                    "model.peak_annotator"
                )
            # What the annotator says at each candidate's b, y, b++ and y++ ions,
            # into the position's input and, per token, straight into its logit.
            # Both start at zero, so a model fine-tuned with them starts unchanged.
            self.chance_projection = nn.Linear(vocab_size * CHANCE_CHANNELS, cfg.dim)
            nn.init.zeros_(self.chance_projection.weight)
            nn.init.zeros_(self.chance_projection.bias)
            self.chance_scorer = token_scorer(CHANCE_CHANNELS)
            if cfg.charge_context:
                self.chance_context = context_weights()
        if cfg.charge_context and not (cfg.evidence_logits or cfg.chance_evidence):
            raise ValueError(
                "model.charge_context needs a per-token scorer: "
                "model.evidence_logits or model.chance_evidence"
            )
        self.z_init = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        # With T >= 2 the first cycles run without gradients, so no gradient ever
        # reaches the start state: it stays the fixed random state it starts as
        # (and DDP would stop on a trainable parameter that no loss uses).
        self.z_init.requires_grad_(recursion.n_cycles == 1)
        self.net = TinyNetwork(cfg)
        self.heads = Heads(cfg, vocab_size)
        if cfg.peak_annotator:
            self.annotator = PeakAnnotator(cfg)
        self.vocab_size = vocab_size
        token_masses = torch.as_tensor(
            masses.VOCAB_MASSES[:vocab_size], dtype=torch.float64
        )
        self.register_buffer("token_masses", token_masses, persistent=False)  # (V,)

    def encode(
        self,
        mz: Tensor,
        intensity: Tensor,
        precursor_mass: Tensor,
        charge: Tensor,
        chance: Tensor | None = None,
    ) -> Encoded:
        """Embed a batch of spectra (peaks (B, P), precursor mass and charge (B,)).

        `chance` (B, P, A) is each peak's annotated ion-type chances, which a
        model with `chance_evidence` needs.
        """
        x, padding = self.encoder(mz, intensity, precursor_mass, charge)
        if self.cfg.chance_evidence and chance is None:
            raise ValueError("model.chance_evidence needs the peaks' ion chances")
        chance = chance if self.cfg.chance_evidence else None
        peaks = sort_peaks(mz, intensity, chance) if self.cfg.ion_evidence else None
        return Encoded(x, padding, precursor_mass, peaks, charge=charge)

    def encode_batch(self, batch: Mapping[str, Tensor]) -> Encoded:
        """Embed a batch as `preprocess.collate` builds it (keys mz, intensity, ...).

        With `chance_evidence`, the peaks' chances are the batch's
        ``ion_chances`` when it has them (`sequence.annotate`, or another
        annotator's in cross-fitted training), else this model's annotator's.
        """
        chance = None
        if self.cfg.chance_evidence:
            chance = batch.get("ion_chances")
            chance = self.annotate_batch(batch) if chance is None else chance
        return self.encode(
            batch["mz"],
            batch["intensity"],
            batch["precursor_mass"],
            batch["charge"],
            chance,
        )

    def remember(self, spectrum: Encoded) -> Encoded:
        """`spectrum` carrying the keys and values every think step reads from x.

        Every think call of every step attends to the same x; projecting it once
        per batch, not 2 x n x T x N_sup times, gives the same sums (~a third of
        the core's matrix products at inference). It also carries a
        `LookupCache`: each improvement step looks up only the draft positions whose
        prefix mass changed since the last (6,144 rows on the demo's 8 steps
        without it, 2,410 with it; the same values). Training re-encodes x each
        supervision step, so it has nothing to keep.
        """
        batch = len(spectrum.x)
        return spectrum._replace(
            memory_kv=self.net.remember(spectrum.x),
            lookups=LookupCache(batch, self.cfg.max_length, spectrum.x.device),
            origin=torch.arange(batch, device=spectrum.x.device),
        )

    def annotate_batch(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Each peak's chance (B, P, A) of being each `ANNOTATED_IONS` type."""
        return peak_chances(self.annotator, batch)

    def initial_state(self, spectrum: Encoded) -> tuple[Tensor, Tensor]:
        """The blank draft (uniform logits) and latent state for a batch."""
        batch = spectrum.x.shape[0]
        y = spectrum.x.new_zeros(
            batch, self.cfg.max_length, self.vocab_size
        )  # (B, L, V)
        z = (self.z_init + self.position_embedding).expand(batch, -1, -1)  # (B, L, D)
        return y, z

    def draft_logits(self, tokens: Tensor, given: Tensor | None = None) -> Tensor:
        """A confident draft (B, L, V) of token indices (B, L), blank where not given.

        This is how a peptide from outside the recursion (the search's answer at
        inference, a corrupted label in training) becomes the draft `y` that the
        next improvement step re-reads the spectrum from. `given` marks the rows
        (B,) or the positions (B, L) that get their tokens; the others keep the
        uniform blank draft.
        """
        y = nn.functional.one_hot(tokens, self.vocab_size).float() * DRAFT_CONFIDENCE
        if given is not None:
            mask = given.view(-1, 1, 1) if given.dim() == 1 else given.unsqueeze(-1)
            y = y * mask.to(y.dtype)
        return y  # (B, L, V)

    def ladder(self, probs: Tensor, precursor_mass: Tensor) -> Tensor:
        """Encoded b and y ion m/z after each draft position (B, L, D)."""
        # float64: float32 resolves only ~1e-4 Da at 1000 Da, coarser than the
        # shortest wavelength of the m/z encoding.
        prefix = torch.cumsum(probs.double() @ self.token_masses, dim=1)  # (B, L)
        b_mz = prefix + masses.PROTON  # (B, L) b ion ending at each position
        y_mz = precursor_mass.double().unsqueeze(1) - prefix + masses.PROTON  # (B, L)
        encode = self.encoder.mz_encoding
        project = self.encoder.mz_projection
        return project(encode(b_mz)) + project(encode(y_mz))  # (B, L, D)

    @torch.no_grad()
    def ion_evidence(
        self, probs: Tensor, spectrum: Encoded
    ) -> tuple[Tensor, Tensor | None]:
        """What the peaks say about every candidate token at every position.

        The draft's residue masses (`draft_masses`) give each position's prefix mass;
        for each candidate token the ions of the cleavage after it (`ION_TYPES`)
        are looked up in the spectrum. Returns (B, L, V * I * C), and with
        `chance_evidence` the annotator's chances at its ladder ions (B, L,
        V * CHANCE_CHANNELS). Each refinement step re-reads the spectrum where
        its current draft puts the ions.
        """
        return self.prefix_lookup(probs, spectrum).expand()

    @torch.no_grad()
    def prefix_lookup(self, probs: Tensor, spectrum: Encoded) -> Lookup:
        """`ion_evidence` as distinct rows (`Lookup`), before expanding."""
        token = self.draft_masses(probs)  # (B, L) each position's residue mass
        prefix_before = torch.cumsum(token, dim=1) - token  # (B, L) exclusive
        b = prefix_before.unsqueeze(-1) + self.token_masses  # (B, L, V) v ends b
        return self._lookup(b, spectrum, prefix_before)

    def draft_masses(self, probs: Tensor) -> Tensor:
        """The residue mass (B, L) the lookups give each draft position (float64).

        By default the expected mass under the soft draft; with `argmax_prefix`
        the mass of its likeliest token. A position 85 % sure of its token,
        the rest spread over the vocabulary, has an expected mass a Da or more
        off, wider than either kernel, so every prefix after an unsure position
        misses its ions; the argmax prefix is exact wherever the draft's
        likeliest tokens are right. A blank position's likeliest token is STOP
        (index 0, the first of equal logits), so the blank first draft looks
        every position up as the first cleavage.
        """
        if self.cfg.argmax_prefix:
            return self.token_masses[probs.argmax(dim=-1)]  # (B, L)
        return probs.double() @ self.token_masses  # (B, L)

    @torch.no_grad()
    def suffix_ion_evidence(self, probs: Tensor, spectrum: Encoded) -> Tensor:
        """`ion_evidence` anchored at the C-terminus: the cleavage before each token.

        The draft's residue masses after position i (STOP weighs nothing) give
        the y fragment that starts with a candidate v at i: v + everything after
        it. A draft sure of its length and end resolves its last residues this
        way while the prefix walk is still at the first ones.
        """
        return self.suffix_lookup(probs, spectrum).expand()[0]  # (B, L, V * I * C)

    @torch.no_grad()
    def lookahead_lookup(self, probs: Tensor, spectrum: Encoded) -> Lookup:
        """The ions of each candidate's next cleavage, under the draft's next token.

        Position i's candidate v with the draft's likeliest token at i + 1 (its
        mass, `draft_masses`; nothing past the end): for the first position the
        b2 and y(n-2) ions that would confirm v with the second residue. A
        position's own lookups (`prefix_lookup`) read only the cleavage after
        it, so the first position's never change with the draft.
        """
        token = self.draft_masses(probs)  # (B, L)
        prefix_before = torch.cumsum(token, dim=1) - token
        following = torch.cat([token[:, 1:], torch.zeros_like(token[:, :1])], dim=1)
        b = (prefix_before + following).unsqueeze(-1) + self.token_masses
        return self._lookup(b, spectrum)

    @torch.no_grad()
    def suffix_lookup(self, probs: Tensor, spectrum: Encoded) -> Lookup:
        """`suffix_ion_evidence` as distinct rows (`Lookup`), before expanding."""
        token = self.draft_masses(probs)  # (B, L)
        suffix_after = token.flip(1).cumsum(1).flip(1) - token  # (B, L)
        residues = spectrum.precursor_mass.double().unsqueeze(1) - masses.H2O
        b = (residues - suffix_after).unsqueeze(-1) - self.token_masses  # (B, L, V)
        return self._lookup(b, spectrum)

    def _lookup(
        self, b: Tensor, spectrum: Encoded, prefix: Tensor | None = None
    ) -> Lookup:
        """Peaks at every ion type of cleavages with b fragments `b` (B, L, V).

        A position whose candidates weigh what the position before it gave reads
        the same ions: every position past the draft's last residue (STOP
        weighs nothing), the whole blank first draft. Only the distinct rows are
        looked up (about half the positions of a batch of tryptic drafts). With
        `prefix` (B, L), the prefix mass before each position, and a
        `LookupCache` (inference), rows whose prefix held since the last lookup
        are copied from it, not looked up again.
        """
        repeats = (b[:, 1:] == b[:, :-1]).all(dim=-1)  # (B, L-1)
        new = torch.cat([torch.ones_like(repeats[:, :1]), ~repeats], dim=1)  # (B, L)
        row = new.flatten().cumsum(0).view(new.shape) - 1  # (B, L) latest new row
        picked = new.nonzero()  # (R, 2) spectrum and position of each distinct row
        picked = picked[padded_rows(len(picked), ROW_MULTIPLE, picked.device)]
        owner, position = picked.unbind(1)  # (R,) each
        b = b[owner, position]  # (R, V)
        context = None
        if self.cfg.charge_context:
            context = candidate_context(
                b, spectrum.precursor_mass[owner], spectrum.charge[owner]
            )
        cache = spectrum.lookups
        if cache is None or prefix is None:
            return Lookup(*self._look_up_rows(b, owner, spectrum), row, context)
        key = prefix[owner, position]  # (R,) float64
        origin = spectrum.origin[owner]  # (R,) in the batch the cache follows
        held = cache.prefix[origin, position] == key  # (R,) nan never equals
        fresh = (~held).nonzero().squeeze(1)  # (F,)
        kept = cache.row[origin[held], position[held]]  # their rows in the cache
        if len(fresh) == 0:
            found = cache.found[kept]
            chances = None if cache.chances is None else cache.chances[kept]
        else:
            # padded as a whole lookup is, so each row reads the same in a part
            part = fresh[padded_rows(len(fresh), ROW_MULTIPLE, fresh.device)]
            found, chances = self._look_up_rows(b[part], owner[part], spectrum)
            found = found[: len(fresh)]
            chances = None if chances is None else chances[: len(fresh)]
            if len(kept):
                found = _rows_from(found, fresh, cache.found, held, kept)
                if chances is not None:
                    chances = _rows_from(chances, fresh, cache.chances, held, kept)
        cache.prefix[spectrum.origin] = math.nan  # this lookup replaces theirs
        cache.prefix[origin, position] = key
        cache.row[origin, position] = torch.arange(len(picked), device=b.device)
        cache.found, cache.chances = found, chances
        return Lookup(found, chances, row, context)

    def _look_up_rows(
        self, b: Tensor, owner: Tensor, spectrum: Encoded
    ) -> tuple[Tensor, Tensor | None]:
        """Ion evidence of rows of cleavages `b` (R, V) of spectra `owner` (R,).

        Returns `Lookup.found` (R, V * I * C) and `Lookup.chances`; the caller
        pads R to a multiple of ROW_MULTIPLE (`padded_rows`).
        """
        peaks = spectrum.peaks.select(owner)
        precursor = spectrum.precursor_mass.double()[owner]  # (R,)
        ion_mz = candidate_ion_mz(b.unsqueeze(1), precursor).float()  # (R, 1, V, I)
        rows, ions = len(b), ion_mz.shape[-1]
        nearest, kernels = nearest_peaks(peaks, ion_mz.view(rows, -1))
        found = lookup_peaks(peaks, nearest, kernels).view(rows, -1)  # (R, V * I * C)
        if peaks.chance is None:
            return found, None
        ladder = slice(0, len(ANNOTATED_IONS))  # the first ION_TYPES are b, y, ...
        nearest = nearest.view(rows, -1, ions)[..., ladder]  # (R, V, A)
        kernels = kernels.view(rows, -1, ions, kernels.shape[-1])[..., ladder, :]
        chances = lookup_chances(peaks, nearest, kernels)  # (R, V, A * W)
        return found, chances.view(rows, -1)  # (R, V * A * W)

    def embed_draft(self, y: Tensor, spectrum: Encoded) -> tuple[Tensor, Tensor | None]:
        """Soft embedding of the draft (B, L, D), and what its evidence adds per token.

        The embedding is probabilities x token embeddings, plus what the draft
        says about the spectrum. The second tensor (B, L, V) is each candidate
        token's learned score of its own evidence (`evidence_logits`, and the
        annotator's chances with `chance_evidence`) for `revise`, None when the
        model has neither. Projections and scores run on a lookup's distinct
        rows, then spread to the positions that read them.
        """
        probs = y.softmax(dim=-1)  # (B, L, V)
        h = self.token_embedding(probs) + self.position_embedding
        per_token = []  # (B, L, V) each token's learned score, spread from its rows
        if self.cfg.draft_mass_encoding:
            h = h + self.ladder(probs, spectrum.precursor_mass).to(h.dtype)
        if self.cfg.ion_evidence:
            found, chances, row, context = self.prefix_lookup(probs.detach(), spectrum)
            found = found.to(h.dtype)
            h = h + self.evidence_projection(found)[row]  # (B, L, D)
            if self.cfg.evidence_logits:
                per_row = found.view(len(found), self.vocab_size, -1)  # (R, V, I*C)
                weights = getattr(self, "evidence_context", None)
                scores = token_logits(self.evidence_scorer, per_row, weights, context)
                per_token.append(scores[row])  # (B, L, V)
            if chances is not None:
                chances = chances.to(h.dtype)
                h = h + self.chance_projection(chances)[row]  # (B, L, D)
                per_row = chances.view(len(chances), self.vocab_size, -1)
                weights = getattr(self, "chance_context", None)
                scores = token_logits(self.chance_scorer, per_row, weights, context)
                per_token.append(scores[row])  # (B, L, V)
        if self.cfg.ion_evidence and self.cfg.suffix_evidence:
            suffix = self.suffix_lookup(probs.detach(), spectrum)
            projected = self.suffix_evidence_projection(suffix.found.to(h.dtype))
            h = h + projected[suffix.row]  # (B, L, D)
        if self.cfg.ion_evidence and self.cfg.lookahead_evidence:
            ahead = self.lookahead_lookup(probs.detach(), spectrum)
            projected = self.lookahead_projection(ahead.found.to(h.dtype))
            h = h + projected[ahead.row]  # (B, L, D)
        return h, sum(per_token) if per_token else None

    def think(
        self, z: Tensor, draft: Tensor, spectrum: Encoded, step: Tensor
    ) -> Tensor:
        """One latent update: z <- net(z + embed(y) + step, spectrum x)."""
        h = z + draft + step  # (B, L, D)
        return self.net(h, spectrum.x, spectrum.padding, spectrum.memory_kv)

    def revise(
        self, y: Tensor, z: Tensor, draft: Tensor, per_token: Tensor | None = None
    ) -> Tensor:
        """Gated residual revision of the draft from the latent state alone.

        `per_token` (B, L, V), from `embed_draft`, is each candidate token's
        learned score of its own ion evidence (`evidence_logits`) and of the
        annotator's chances at its ladder ions (`chance_evidence`), added to the
        residue logits.
        """
        h = self.net(z + draft)  # (B, L, D) no spectrum x
        candidate = self.heads.residues(h)  # (B, L, V)
        if per_token is not None:
            candidate = candidate + per_token
        gate = torch.sigmoid(self.heads.gate(h))  # (B, L, 1)
        return (1 - gate) * y + gate * candidate  # (B, L, V)

    def improve(
        self, spectrum: Encoded, y: Tensor, z: Tensor, step: int
    ) -> tuple[Tensor, Tensor]:
        """One improvement step: think n times about the draft, then revise it once."""
        step_vector = self.step_embedding.weight[min(step, MAX_STEPS - 1)]  # (D,)
        draft, per_token = self.embed_draft(y, spectrum)  # (B, L, D), (B, L, V)
        for _ in range(self.recursion.n_latent_steps):
            z = self.think(z, draft, spectrum, step_vector)  # (B, L, D)
        y = self.revise(y, z, draft, per_token)  # (B, L, V)
        return y, z

    def forward(
        self, spectrum: Encoded, y: Tensor, z: Tensor, supervision_step: int = 0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run T improvement cycles; only the last keeps activations for backprop.

        Returns the new draft y (B, L, V), latent z (B, L, D) and halting logit (B,).
        """
        first = supervision_step * self.recursion.n_cycles
        with torch.no_grad():  # the first T-1 cycles cost compute, keep no activations
            for cycle in range(self.recursion.n_cycles - 1):
                y, z = self.improve(spectrum, y, z, first + cycle)
        y, z = self.improve(spectrum, y, z, first + self.recursion.n_cycles - 1)
        return y, z, self.heads.halting(z)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
