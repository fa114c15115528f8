"""The two networks every framework shares: a residual MLP for vectors and a small U-Net for
images, both conditioned on a scalar condition c (what it is: models/conditioning.py), embedded
by EDM-style Fourier features of ln(s) / 4 or by DDPM's sinusoids of the timestep t. A recipe
sets their size, dropout (DDPM's, before each block's second layer) and, for the U-Net, the
levels with self-attention besides the middle; the defaults are the networks as they were.
The U-Net's remaining options (`groups`, `heads`, `upsample_conv`, `emb_in`, `emb_silu`) make
it the network of Ho et al. (2020, app. B; their diffusion_tf/models/unet.py) exactly; their
defaults keep the earlier network, its state-dict keys and its outputs.

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
    for an integer timestep t in 0 .. 999 (Ho et al., 2020, section 4 and their code).
    `in_dim` sinusoids (default `dim`) feed the MLP in_dim -> dim -> dim: DDPM's is ch -> 4 ch."""

    def __init__(self, dim: int, max_frequency: float = 16.0, kind: str = "fourier",
                 in_dim: int | None = None):
        super().__init__()
        if kind not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {kind!r}")
        in_dim = dim if in_dim is None else in_dim
        half = in_dim // 2
        if kind == "fourier":
            freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), half)) * 2 * math.pi
        else:
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(1, half - 1))
        self.register_buffer("freqs", freqs, persistent=False)  # fixed: not in the state dict
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

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
    self-attention (the U-Net's `attention` levels). `emb_silu`: SiLU on the embedding before
    the block's projection, as DDPM's code has it (no parameters: the state dict is the same)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8, dropout: float = 0.0,
                 attention: bool = False, heads: int = 4, emb_silu: bool = False):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb, self.emb_silu = nn.Linear(emb_dim, c_out), emb_silu
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)  # no parameters: the state dict is as without it
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.attn = SelfAttention(c_out, heads, groups) if attention else None  # None: no state-dict entries

    def forward(self, x, emb):
        emb = F.silu(emb) if self.emb_silu else emb
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


def _upsample(channels: int, conv: bool) -> nn.Module:
    """Nearest-neighbour 2x, then (DDPM's `with_conv`) a 3x3 convolution; without it the bare
    Upsample, which has no state-dict entries (the earlier network's keys)."""
    up = nn.Upsample(scale_factor=2, mode="nearest")
    return nn.Sequential(up, nn.Conv2d(channels, channels, 3, padding=1)) if conv else up


def _check_unet(image_size: int, widths: list, attention, groups: int, heads: int) -> None:
    levels = len(widths)
    if image_size % 2 ** (levels - 1):
        raise ValueError(f"image_size {image_size} not divisible by 2^{levels - 1}")
    if any(not 0 <= level < levels for level in attention):
        raise ValueError(f"attention levels must lie in [0, {levels}), got {list(attention)}")
    if any(w % groups or w % heads for w in widths):
        raise ValueError(f"every width {widths} must be divisible by groups={groups} and heads={heads}")


class UNet(nn.Module):
    """A U-Net: per level `blocks` residual blocks, 2x down/up-sampling between levels,
    self-attention in the middle (at the coarsest level) and after each residual block of the
    levels listed in `attention` (0: the full resolution). Image side must be divisible by
    2^(levels-1). `groups` of every GroupNorm, `heads` of every attention, `upsample_conv` (a
    3x3 conv after each upsampling), `emb_in` (sinusoids into the embedding MLP; None: emb_dim)
    and `emb_silu` (ResBlock) are DDPM's 32, 1, true, base and true (Ho et al. 2020, app. B)."""

    def __init__(self, channels: int = 1, image_size: int = 8, base: int = 64,
                 mults: tuple = (1, 2), blocks: int = 2, emb_dim: int = 128, dropout: float = 0.0,
                 attention: tuple = (), embedding: str = "fourier", groups: int = 8, heads: int = 4,
                 upsample_conv: bool = False, emb_in: int | None = None, emb_silu: bool = False):
        super().__init__()
        widths = [base * m for m in mults]
        _check_unet(image_size, [base, *widths], attention, groups, heads)
        self.hparams = dict(kind="unet", channels=channels, image_size=image_size, base=base,
                            mults=list(mults), blocks=blocks, emb_dim=emb_dim, dropout=dropout,
                            attention=list(attention), embedding=embedding, groups=groups,
                            heads=heads, upsample_conv=upsample_conv, emb_in=emb_in, emb_silu=emb_silu)
        self.embed = FourierEmbedding(emb_dim, kind=embedding, in_dim=emb_in)
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        self._res = dict(emb_dim=emb_dim, groups=groups, dropout=dropout, heads=heads, emb_silu=emb_silu)
        skips = self._build_down(widths, blocks, attention)
        c = skips[-1]
        self.mid = nn.ModuleList([self._block(c, c), SelfAttention(c, heads, groups), self._block(c, c)])
        c = self._build_up(widths, blocks, attention, skips, upsample_conv)
        self.out = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))

    def _block(self, c_in: int, c_out: int, attention: bool = False) -> ResBlock:
        return ResBlock(c_in, c_out, attention=attention, **self._res)

    def _build_down(self, widths: list, blocks: int, attention) -> list:
        """self.down; returns the channels of each skip connection, in the order made."""
        self.down, skips = nn.ModuleList(), [self.inp.out_channels]
        for level, width in enumerate(widths):
            for _ in range(blocks):
                self.down.append(self._block(skips[-1], width, level in attention))
                skips.append(width)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skips.append(width)
        return skips

    def _build_up(self, widths: list, blocks: int, attention, skips: list, conv: bool) -> int:
        """self.up, taking the skips last-made first; returns its output channels."""
        self.up, c = nn.ModuleList(), skips[-1]
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(blocks + 1):
                self.up.append(self._block(c + skips.pop(), width, level in attention))
                c = width
            if level > 0:
                self.up.append(_upsample(c, conv))
        return c

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

