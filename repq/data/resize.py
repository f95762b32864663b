"""MATLAB-compatible bicubic resizing (``imresize(I, 1/s, 'bicubic')``), the degradation
behind published super-resolution numbers (DIV2K's ``LR_bicubic``, the benchmark sets'
LR images, official ECBSR and EDSR).

MATLAB's algorithm, written from its documented behaviour: Keys' cubic kernel with
``a = -0.5``; when shrinking by ``s`` the kernel is stretched by ``s`` (antialiasing, 4s
taps instead of 4); output pixel ``x`` (1-based) samples the input at
``u = x * s + (1 - s) / 2``; the weights of each output pixel sum to one; indices beyond
the border are mirrored (``symmetric`` padding, the border pixel repeated); dimensions
are resized one after the other, height first; for a ``uint8`` image each pass is
computed in double precision and rounded back to ``uint8`` (MATLAB's ``imresizemex``
keeps the input's class between the passes). The output size is ``ceil(size / s)``.
PIL's ``Image.BICUBIC`` also antialiases with ``a = -0.5`` but handles borders and
sampling positions differently.
"""

from __future__ import annotations

import math

import numpy as np


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(weights, indices)`` of every output pixel along one dimension, both
    ``[out_length, taps]``; ``scale`` is out/in (below 1 when shrinking); indices are
    0-based and mirrored into the input."""
    kernel_width = 4.0
    if scale < 1:  # antialiasing: stretch the kernel over the shrunk footprint
        kernel_width /= scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # 1-based
    distance = u[:, None] - indices
    weights = scale * cubic(scale * distance) if scale < 1 else cubic(distance)
    weights /= weights.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[(indices.astype(np.int64) - 1) % (2 * in_length)]
    used = np.any(weights != 0, axis=0)
    return weights[:, used], indices[:, used]


def _resize_axis(image: np.ndarray, axis: int, out_length: int, scale: float) -> np.ndarray:
    weights, indices = contributions(image.shape[axis], out_length, scale)
    moved = np.moveaxis(image, axis, 0)  # [in, ...]
    gathered = moved[indices]  # [out, taps, ...]
    shape = weights.shape + (1,) * (moved.ndim - 1)
    return np.moveaxis((gathered * weights.reshape(shape)).sum(1), 0, axis)


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize an ``[H, W]`` or ``[H, W, C]`` image by ``scale`` (``1/2`` halves it) as
    MATLAB's ``imresize(image, scale, 'bicubic')`` does; ``uint8`` in, ``uint8`` out
    (rounded), float in, float64 out."""
    result = image
    for axis in (0, 1):
        out_length = math.ceil(image.shape[axis] * scale)
        result = _resize_axis(result.astype(np.float64), axis, out_length, scale)
        if image.dtype == np.uint8:
            result = np.clip(np.round(result), 0, 255).astype(np.uint8)
    return result
