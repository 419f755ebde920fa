"""Light, label-preserving augmentation of training batches (pre-training and forgetting tasks).

One random affine per image: a crop of 80-100% of the area, a shift within what the crop leaves, a rotation of at most
10 degrees; borders repeat the edge pixels. No flips and no colour changes, so it is safe for faces, objects and
characters alike. Applied to whole batches on the batch's device with an explicit generator: reproducible, and no
per-image Python loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, min_area: float = 0.8,
                  max_degrees: float = 10.0) -> torch.Tensor:
    """A randomly cropped, shifted and rotated copy of the image batch ``x`` (N, C, H, W), same shape and dtype."""
    n = x.shape[0]
    if n == 0:
        return x

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(n).uniform_(low, high, generator=generator)

    scale = uniform(min_area, 1.0).sqrt()  # side of the crop relative to the image
    shift_x = uniform(-1.0, 1.0) * (1 - scale)
    shift_y = uniform(-1.0, 1.0) * (1 - scale)
    angle = uniform(-max_degrees, max_degrees) * (math.pi / 180)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    theta = theta.to(device=x.device, dtype=torch.float32)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(x.dtype)
