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

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from peptrm import masses
from peptrm.config import ModelConfig, RecursionConfig

MAX_STEPS = 64  # step embeddings available; later steps share the last one


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
    ) -> Tensor:
        """Update `h` (B, S, D); attend to `memory` (B, M, D) when given."""
        a = self.norm_self(h)
        h = (
            h
            + self.self_attention(
                a, a, a, key_padding_mask=padding, need_weights=False
            )[0]
        )
        if memory is not None:
            a = self.norm_cross(h)
            h = (
                h
                + self.cross_attention(
                    a,
                    memory,
                    memory,
                    key_padding_mask=memory_padding,
                    need_weights=False,
                )[0]
            )
        return h + self.mlp(self.norm_mlp(h))  # (B, S, D)


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
    ) -> Tensor:
        """Map h (B, L, D) to (B, L, D)."""
        for block in self.blocks:
            h = block(h, memory=memory, memory_padding=memory_padding)
        return self.norm(h)


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
# PepTRM
# --------------------------------------------------------------------------
class Encoded(NamedTuple):
    """An embedded batch of spectra: what every think step looks at."""

    x: Tensor  # (B, 1+P, D) precursor token + peaks
    padding: Tensor  # (B, 1+P) True where a peak is padding
    precursor_mass: Tensor  # (B,) neutral precursor mass (Da)


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
        self.z_init = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.net = TinyNetwork(cfg)
        self.heads = Heads(cfg, vocab_size)
        self.vocab_size = vocab_size
        token_masses = torch.as_tensor(
            masses.VOCAB_MASSES[:vocab_size], dtype=torch.float64
        )
        self.register_buffer("token_masses", token_masses, persistent=False)  # (V,)

    def encode(
        self, mz: Tensor, intensity: Tensor, precursor_mass: Tensor, charge: Tensor
    ) -> Encoded:
        """Embed a batch of spectra (peaks (B, P), precursor mass and charge (B,))."""
        x, padding = self.encoder(mz, intensity, precursor_mass, charge)
        return Encoded(x, padding, precursor_mass)

    def encode_batch(self, batch: Mapping[str, Tensor]) -> Encoded:
        """Embed a batch as `preprocess.collate` builds it (keys mz, intensity, ...)."""
        return self.encode(
            batch["mz"], batch["intensity"], batch["precursor_mass"], batch["charge"]
        )

    def initial_state(self, spectrum: Encoded) -> tuple[Tensor, Tensor]:
        """The blank draft (uniform logits) and latent state for a batch."""
        batch = spectrum.x.shape[0]
        y = spectrum.x.new_zeros(
            batch, self.cfg.max_length, self.vocab_size
        )  # (B, L, V)
        z = (self.z_init + self.position_embedding).expand(batch, -1, -1)  # (B, L, D)
        return y, z

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

    def embed_draft(self, y: Tensor, spectrum: Encoded) -> Tensor:
        """Soft embedding of the draft: probabilities x token embeddings (B, L, D)."""
        probs = y.softmax(dim=-1)  # (B, L, V)
        h = self.token_embedding(probs) + self.position_embedding
        if self.cfg.draft_mass_encoding:
            h = h + self.ladder(probs, spectrum.precursor_mass).to(h.dtype)
        return h

    def think(self, z: Tensor, y: Tensor, spectrum: Encoded, step: Tensor) -> Tensor:
        """One latent update: z <- net(z + embed(y) + step, spectrum x)."""
        h = z + self.embed_draft(y, spectrum) + step  # (B, L, D)
        return self.net(h, memory=spectrum.x, memory_padding=spectrum.padding)

    def revise(self, y: Tensor, z: Tensor, spectrum: Encoded) -> Tensor:
        """Gated residual revision of the draft from the latent state alone."""
        h = self.net(z + self.embed_draft(y, spectrum))  # (B, L, D) no spectrum x
        candidate = self.heads.residues(h)  # (B, L, V)
        gate = torch.sigmoid(self.heads.gate(h))  # (B, L, 1)
        return (1 - gate) * y + gate * candidate  # (B, L, V)

    def improve(
        self, spectrum: Encoded, y: Tensor, z: Tensor, step: int
    ) -> tuple[Tensor, Tensor]:
        """One improvement step: think n times about the draft, then revise it once."""
        step_vector = self.step_embedding.weight[min(step, MAX_STEPS - 1)]  # (D,)
        for _ in range(self.recursion.n_latent_steps):
            z = self.think(z, y, spectrum, step_vector)  # (B, L, D)
        y = self.revise(y, z, spectrum)  # (B, L, V)
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
