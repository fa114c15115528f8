"""The two networks every framework shares: a residual MLP for vectors and a small U-Net for
images, both conditioned on a scalar condition c (what it is: models/conditioning.py), embedded
by EDM-style Fourier features of ln(s) / 4 or by DDPM's sinusoids of the timestep t. A recipe
sets their size, dropout (DDPM's, before each block's second layer) and, for the U-Net, the
levels with self-attention besides the middle; the defaults are the networks as they were.

A network is saved as its JSON config plus a state dict, never as pickled code.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

EMBEDDINGS = ("fourier", "positional")  # of the condition: EDM's ln(s)/4 | DDPM's timestep


class FourierEmbedding(nn.Module):
    """sin/cos of the condition at fixed log-spaced frequencies, then a small MLP.

    "fourier": 2 pi f for f log-spaced in [1, 16], for c = ln(s) / 4 of order one (EDM's c_noise);
    "positional": DDPM's (the Transformer's) exp(-ln(10000) k / (dim/2 - 1)), k = 0 .. dim/2 - 1,
    for an integer timestep t in 0 .. 999 (Ho et al., 2020, section 4 and their code)."""

    def __init__(self, dim: int, max_frequency: float = 16.0, kind: str = "fourier"):
        super().__init__()
        if kind not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")
        half = dim // 2
        if kind == "fourier":
            freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), half)) * 2 * math.pi
        else:
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(1, half - 1))
        self.register_buffer("freqs", freqs, persistent=False)  # fixed: not in the state dict
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        angles = c.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.emb = nn.Linear(width, width), nn.Linear(emb_dim, width)
        self.dropout = nn.Dropout(dropout)  # no parameters: the state dict is as without it
        self.fc2 = nn.Linear(width, width)

    def forward(self, h, emb):
        z = F.silu(self.fc1(self.norm(h)) + self.emb(emb))
        return h + self.fc2(self.dropout(z))


class MLP(nn.Module):
    """Residual MLP for N x D data."""

    def __init__(self, dim: int, width: int = 256, depth: int = 4, emb_dim: int = 64,
                 dropout: float = 0.0, embedding: str = "fourier"):
        super().__init__()
        self.hparams = dict(kind="mlp", dim=dim, width=width, depth=depth, emb_dim=emb_dim,
                            dropout=dropout, embedding=embedding)
        self.embed = FourierEmbedding(emb_dim, kind=embedding)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualMLPBlock(width, emb_dim, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x, c_noise):
        emb, h = self.embed(c_noise), self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class ResBlock(nn.Module):
    """DDPM's residual block (dropout before the second convolution), optionally followed by
    self-attention (the U-Net's `attention` levels)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8, dropout: float = 0.0,
                 attention: bool = False):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)  # no parameters: the state dict is as without it
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.attn = SelfAttention(c_out) if attention else None  # None: no state-dict entries

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        out = self.skip(x) + h
        return out if self.attn is None else self.attn(out)


class SelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int = 4, groups: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """A small U-Net: per level `blocks` residual blocks, 2x down/up-sampling between levels,
    self-attention in the middle (at the coarsest level) and after each residual block of the
    levels listed in `attention` (0: the full resolution). Image side must be divisible by
    2^(levels-1)."""

    def __init__(self, channels: int = 1, image_size: int = 8, base: int = 64,
                 mults: tuple = (1, 2), blocks: int = 2, emb_dim: int = 128, dropout: float = 0.0,
                 attention: tuple = (), embedding: str = "fourier"):
        super().__init__()
        if image_size % 2 ** (len(mults) - 1):
            raise ValueError(f"image_size {image_size} not divisible by 2^{len(mults) - 1}")
        if any(not 0 <= level < len(mults) for level in attention):
            raise ValueError(f"attention levels must lie in [0, {len(mults)}), got {list(attention)}")
        self.hparams = dict(kind="unet", channels=channels, image_size=image_size, base=base,
                            mults=list(mults), blocks=blocks, emb_dim=emb_dim, dropout=dropout,
                            attention=list(attention), embedding=embedding)
        widths = [base * m for m in mults]
        self.embed = FourierEmbedding(emb_dim, kind=embedding)
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        self.down, skips, c = nn.ModuleList(), [base], base
        for level, width in enumerate(widths):
            for _ in range(blocks):
                self.down.append(ResBlock(c, width, emb_dim, dropout=dropout, attention=level in attention))
                c = width
                skips.append(c)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout=dropout), SelfAttention(c),
                                  ResBlock(c, c, emb_dim, dropout=dropout)])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), width, emb_dim, dropout=dropout,
                                        attention=level in attention))
                c = width
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))

    def forward(self, x, c_noise):
        emb = self.embed(c_noise)
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)


NETWORKS = {"mlp": MLP, "unet": UNet}


def build_network(config: dict) -> nn.Module:
    """A network from its JSON config: {"kind": "mlp" | "unet", **constructor arguments}."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in NETWORKS:
        raise ValueError(f"network kind must be one of {sorted(NETWORKS)}, got {kind!r}")
    return NETWORKS[kind](**config)

