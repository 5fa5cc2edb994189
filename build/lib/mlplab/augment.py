"""Batched augmentation: one random affine warp per image, applied to the whole batch on its device.

The tutorial's first answer to overfitting is "more data". Shifted, slightly rotated and rescaled digits
are still the same digits; drawing them as one ``affine_grid`` + ``grid_sample`` call keeps the fast
data path fast (no per-sample Python, works on CPU and GPU alike).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlplab.errors import ConfigError


class BatchAffine(nn.Module):
    """Random translation (fraction of the image size), rotation (degrees) and scaling per image."""

    def __init__(self, translate: float = 0.1, degrees: float = 10.0, scale: float = 0.1, enabled: bool = True) -> None:
        super().__init__()
        for name, value in (("translate", translate), ("degrees", degrees), ("scale", scale)):
            if value < 0:
                raise ConfigError(f"data.augment.{name}={value} must be >= 0")
        if scale >= 1:
            raise ConfigError(f"data.augment.scale={scale} must be < 1 (a fraction, e.g. 0.1 for +-10%)")
        self.translate, self.degrees, self.scale = translate, degrees, scale

    def forward(self, images: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        n = images.shape[0]
        uniform = lambda low, high: torch.empty(n, device=images.device).uniform_(low, high)  # noqa: E731
        angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
        zoom = uniform(1 - self.scale, 1 + self.scale)
        # affine_grid maps output to input coordinates in [-1, 1]: a shift of t image widths is 2t there.
        shift = torch.stack([uniform(-self.translate, self.translate), uniform(-self.translate, self.translate)], 1) * 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        # grid_sample pads with zeros: shift so that "zero" is the background value, then shift back.
        return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
