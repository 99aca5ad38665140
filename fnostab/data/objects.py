"""The grid-lines test object of PtychoPINN (docs/data.md, The object).

Random line segments are drawn on a canvas twice the object size, blurred at three scales
(amplitude = g₁ + 2·g₅ + 5·g₁₀, Gaussian σ in pixels), and the centre S×S is kept. With ``set_phi``
the phase is π·tanh((A − max A / 2) / (3 · mean A)), max and mean taken over the whole stack of the
split's objects; otherwise the object is real.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def draw_lines(canvas_size: int, n_lines: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 canvas with ``n_lines`` one-pixel line segments of value 1 (endpoints uniform).

    Each segment is sampled at max(|Δrow|, |Δcol|) + 1 evenly spaced points and rounded, which
    visits the same pixels as Bresenham's algorithm up to ties; all segments at once, no loop.
    """
    ends = rng.integers(0, canvas_size, size=(n_lines, 4))
    r0, c0, r1, c1 = ends.T
    counts = np.maximum(np.abs(r1 - r0), np.abs(c1 - c0)) + 1
    line_index = np.repeat(np.arange(n_lines), counts)
    starts = np.cumsum(counts) - counts
    step = np.arange(counts.sum()) - starts[line_index]
    t = step / np.maximum(counts[line_index] - 1, 1)
    rows = np.rint(r0[line_index] + t * (r1 - r0)[line_index]).astype(np.intp)
    cols = np.rint(c0[line_index] + t * (c1 - c0)[line_index]).astype(np.intp)
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.float32)
    canvas[rows, cols] = 1.0
    return canvas


def lines_amplitude(size: int, n_lines: int, rng: np.random.Generator) -> np.ndarray:
    """Amplitude of one lines object, (size, size) float32, non-negative and unbounded."""
    canvas = draw_lines(2 * size, n_lines, rng)
    blurred = gaussian_filter(canvas, 1.0) + 2.0 * gaussian_filter(canvas, 5.0) + 5.0 * gaussian_filter(canvas, 10.0)
    start = size // 2
    return np.ascontiguousarray(blurred[start : start + size, start : start + size], dtype=np.float32)


def lines_objects(n_images: int, size: int, n_lines: int, set_phi: bool, rng: np.random.Generator) -> np.ndarray:
    """A stack of complex lines objects, (n_images, size, size) complex64."""
    amplitude = np.stack([lines_amplitude(size, n_lines, rng) for _ in range(n_images)])
    if not set_phi:
        return amplitude.astype(np.complex64)
    phase = np.pi * np.tanh((amplitude - amplitude.max() / 2) / (3 * amplitude.mean()))
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)
