"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018).

timm ships a CBAM (`timm.layers.CbamModule`), but it is built to sit inside
blocks, puts a BatchNorm into the spatial gate, and does not expose the
gate's map. We need one module on the backbone's final feature map, in the
paper's form, whose spatial map explanation code can read
(`spatial_attention_map`), so we keep this small version.
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelAttention(nn.Module):
    """A shared MLP over average- and max-pooled features, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(torch.mean(x, dim=(2, 3), keepdim=True))
        mx = self.mlp(torch.amax(x, dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """A 7x7 convolution over the channel-wise average and max maps, sigmoid."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel attention, then spatial attention, each multiplying the features."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel_size: int = 7):
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(spatial_kernel_size)
        self.spatial_attention_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_attention(x)
        spatial = self.spatial_attention(x)
        # Kept (detached) so explanation code can show where CBAM looked.
        self.spatial_attention_map = spatial.detach()
        return x * spatial
