"""Batch augmentations of the DARTS evaluation recipe, on tensors, seeded.

Every transform takes a whole batch ``[N, C, H, W]`` and a ``torch.Generator``
and draws its random numbers for the *whole* batch in a fixed order. A
data-parallel run augments the global batch on every process with the same
generator and then keeps its shard, so K processes see exactly the augmented
samples one process sees (search/distributed.py), and a resumed run sees what
an uninterrupted one saw (the generator is seeded from (seed, epoch)).

* :func:`cutout` -- DeVries & Taylor's Cutout as the DARTS code applies it
  (after normalisation, so the square is zero in normalised units, i.e. the
  dataset mean): one ``length x length`` square per image, centred uniformly
  anywhere in the image and clipped at the border. The square spans
  ``[c - length // 2, c - length // 2 + length)``; for even lengths (16 on
  CIFAR) that is the DARTS code's square exactly, for odd lengths DARTS's
  ``c +- length // 2`` would give a side of ``length - 1``.
* :func:`random_crop_flip` -- ``RandomCrop(size, padding=pad)`` and a
  horizontal flip with probability 1/2 (DARTS's CIFAR transforms). The
  padding is zero in normalised units (the mean colour), not black.
"""
from __future__ import annotations

import torch

from spaces.errors import HwcostError


def _check_batch(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise HwcostError(f"{what} takes a batch [N, C, H, W], got shape {tuple(x.shape)}")


def cutout_centers(n: int, h: int, w: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[n, 2]`` square centres (row, column), uniform over the image."""
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    return torch.stack([cy, cx], 1)


def cutout_mask(h: int, w: int, length: int, centers: torch.Tensor) -> torch.Tensor:
    """``[n, 1, h, w]`` float mask: 0 inside each clipped ``length x length`` square, 1 elsewhere."""
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    y0 = (centers[:, 0] - length // 2)[:, None, None]
    x0 = (centers[:, 1] - length // 2)[:, None, None]
    inside = (rows >= y0) & (rows < y0 + length) & (cols >= x0) & (cols < x0 + length)
    return (~inside).to(torch.float32)[:, None]


def cutout(x: torch.Tensor, length: int, generator: torch.Generator | None = None,
           centers: torch.Tensor | None = None) -> torch.Tensor:
    """Zero one ``length x length`` square (clipped at the border) in every image of ``x``.

    ``centers`` (``[N, 2]`` row/column) fixes the squares; otherwise they are
    drawn from ``generator``. ``length = 0`` returns ``x`` unchanged.
    """
    _check_batch(x, "cutout")
    if length < 0:
        raise HwcostError(f"cutout length must be >= 0, got {length}")
    if length == 0 or x.size(0) == 0:
        return x
    n, _, h, w = x.shape
    if centers is None:
        centers = cutout_centers(n, h, w, generator)
    return x * cutout_mask(h, w, length, centers).to(x.device, x.dtype)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad by ``pad`` (zeros), crop back to the input size at a random offset, flip half the images."""
    _check_batch(x, "random_crop_flip")
    if pad < 0:
        raise HwcostError(f"crop padding must be >= 0, got {pad}")
    n, _, h, w = x.shape
    if n == 0 or (pad == 0 and not flip):
        return x
    out = x
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
        out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        out = torch.where(mirror[:, None, None, None].to(out.device), out.flip(3), out)
    return out
