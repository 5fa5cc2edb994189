"""Batched augmentation: random geometric warps and erasing per image, applied to the whole batch on its device.

The tutorial's first answer to overfitting is "more data". Shifted, slightly rotated, rescaled or elastically
distorted digits are still the same digits; a mirrored shirt is still a shirt. Every geometric change here
(flip, translation, rotation, scale, elastic distortion) is folded into ONE sampling grid and drawn with ONE
``grid_sample`` call, so the image is resampled once (no compounding blur) and the fast data path stays fast:
no per-sample Python, CPU and GPU alike. Random erasing is then one masked fill. kornia's ``augmentation``
module offers the same transforms; on this kit's batches the hand-written path was measured faster
(docs/benchmarks.md, ``bench/augment.py``), mostly because kornia resamples once per transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlplab.rules import check_arguments


class BatchAugment(nn.Module):
    """Per-image random augmentation of a batch ``[N, C, H, W]`` of normalized images.

    - ``translate``: shift by up to this fraction of the image size, each axis; ``degrees``: rotate by up to
      this many degrees; ``scale``: zoom by a factor in ``[1 - scale, 1 + scale]``.
    - ``hflip``: the probability of mirroring left-right (clothing: yes; digits and kana: never).
    - ``elastic_alpha``, ``elastic_sigma``: elastic distortion (Simard et al. 2003): a random displacement
      field, smoothed by a Gaussian of ``elastic_sigma`` pixels and scaled by ``elastic_alpha`` pixels; 0 = off.
    - ``erasing``: the probability of filling a random rectangle with the background (Zhong et al. 2017),
      whose area is a fraction in ``erasing_scale`` of the image and aspect ratio in [0.3, 3.3].
    """

    def __init__(
        self,
        translate: float = 0.1,
        degrees: float = 10.0,
        scale: float = 0.1,
        hflip: float = 0.0,
        elastic_alpha: float = 0.0,
        elastic_sigma: float = 4.0,
        erasing: float = 0.0,
        erasing_scale: Sequence[float] = (0.02, 0.2),
        enabled: bool = True,
    ) -> None:
        super().__init__()
        check_arguments("data.augment", locals())
        self.translate, self.degrees, self.scale, self.hflip = translate, degrees, scale, hflip
        self.elastic_alpha, self.elastic_sigma = elastic_alpha, elastic_sigma
        self.erasing, self.erasing_scale = erasing, tuple(erasing_scale)

    def forward(self, images: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        if any((self.translate, self.degrees, self.scale, self.hflip, self.elastic_alpha)):
            images = self.warp(images, fill)  # resampled only when some warp is asked for
        return self.erase(images, fill) if self.erasing > 0 else images

    def uniform(self, images: torch.Tensor, low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.empty(images.shape[0], *shape, device=images.device).uniform_(low, high)

    def warp(self, images: torch.Tensor, fill: float) -> torch.Tensor:
        """Flip, rotation, scale, translation and elastic distortion as one sampling grid, one resampling."""
        n, _, height, width = images.shape
        angle = self.uniform(images, -self.degrees, self.degrees) * (math.pi / 180)
        zoom = self.uniform(images, 1 - self.scale, 1 + self.scale)
        # affine_grid maps output to input coordinates in [-1, 1]: a shift of t image widths is 2t there.
        shift = torch.stack([self.uniform(images, -self.translate, self.translate) for _ in "xy"], 1) * 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # A flip negates the output's x before the rest: x_in = A (-x_out, y_out), i.e. the first column of A.
        # Drawn only when flips are asked for, so that recipes without them keep their random stream (and results).
        mirror = torch.where(torch.rand(n, device=images.device) < self.hflip, -1.0, 1.0) if self.hflip > 0 else 1.0
        theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1), torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), [n, 1, height, width], align_corners=False)
        if self.elastic_alpha > 0:
            grid = grid + self.elastic_field(images).to(images.dtype)
        # grid_sample pads with zeros: shift so that "zero" is the background value, then shift back.
        return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill

    def elastic_field(self, images: torch.Tensor) -> torch.Tensor:
        """A smooth random displacement per pixel, ``[N, H, W, 2]`` in grid units (2 / size per pixel)."""
        n, _, height, width = images.shape
        noise = self.uniform(images, -1.0, 1.0, 2, height, width)
        # A separable Gaussian blur as two small matrix products (rows, then columns), the reflected edges folded
        # into the matrices: one batched matmul per axis for the whole batch, no padding, no per-image kernel.
        field = gaussian_blur_matrix(height, self.elastic_sigma, noise) @ noise @ gaussian_blur_matrix(width, self.elastic_sigma, noise).T
        pixels = torch.tensor([2 / width, 2 / height], device=images.device, dtype=noise.dtype)
        return (field * self.elastic_alpha).permute(0, 2, 3, 1) * pixels

    def erase(self, images: torch.Tensor, fill: float) -> torch.Tensor:
        """With probability ``erasing``, one rectangle per image set to ``fill``; a single masked fill for the batch."""
        n, _, height, width = images.shape
        area = self.uniform(images, *self.erasing_scale) * (height * width)
        aspect = torch.exp(self.uniform(images, math.log(0.3), math.log(1 / 0.3)))
        box_h = (area * aspect).sqrt().round().clamp(1, height)
        box_w = (area / aspect).sqrt().round().clamp(1, width)
        top = (torch.rand(n, device=images.device) * (height - box_h + 1)).floor()
        left = (torch.rand(n, device=images.device) * (width - box_w + 1)).floor()
        rows = torch.arange(height, device=images.device).view(1, -1, 1)
        cols = torch.arange(width, device=images.device).view(1, 1, -1)
        chosen = (torch.rand(n, device=images.device) < self.erasing).view(-1, 1, 1)
        inside = (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
        inside = inside & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))
        return images.masked_fill((inside & chosen).unsqueeze(1), fill)


def gaussian_blur_matrix(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``[size, size]`` matrix B with ``B @ x`` = x blurred along its first axis by a Gaussian of ``sigma`` samples,
    edges reflected (as ``F.pad(mode="reflect")``); the kernel is cut at 3 sigma, or at the size of the image."""
    radius = min(math.ceil(3 * sigma), size - 1)
    taps = torch.arange(-radius, radius + 1, device=like.device, dtype=like.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    source = torch.arange(size, device=like.device).view(-1, 1) + taps.long().view(1, -1)
    source = torch.where(source < 0, -source, torch.where(source >= size, 2 * (size - 1) - source, source))
    matrix = torch.zeros(size, size, device=like.device, dtype=like.dtype)
    return matrix.scatter_add_(1, source, kernel.expand(size, -1).contiguous())
