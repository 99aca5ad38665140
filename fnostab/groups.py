"""Groups of overlapping patterns (PtychoPINN's gridsize): geometry and the object_big reassembly.

At gridsize g every sample is a g×g group of N×N patterns whose windows sit ``offset`` pixels apart
inside one outer window of side M = N + (g − 1)·offset. Member k = i·g + j (row-major) has its
top-left corner at (i·offset, j·offset) in the outer window, so its centre lies

    ((i − (g − 1)/2)·offset, (j − (g − 1)/2)·offset)

from the group centre: the relative offset stored as ``coords_nominal`` / ``coords_true``.

The forward model ties the members together (docs/gridsize.md): :func:`reassemble` places the C
predicted patches at their positions in the M×M window and averages every pixel over the patches
that cover it; :func:`extract` cuts the C windows out again. Averaging then re-extracting is the
orthogonal projection onto the patch tuples that agree on every overlap, so patches that already
agree (the true object's) pass through unchanged, and patches that disagree are replaced by the
closest consistent set. Offsets are whole pixels, so no interpolation is involved.

At gridsize 1 the geometry is the identity (M = N, one member at the origin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fnostab.errors import InputError


@dataclass(frozen=True)
class GroupGeometry:
    """Where the C = g² members of a group sit inside its M×M outer window."""

    N: int
    gridsize: int = 1
    offset: int = 0

    @property
    def channels(self) -> int:
        return self.gridsize**2

    @property
    def window(self) -> int:
        """M = N + (g − 1)·offset: the side of the shared object region of one group."""
        return self.N + (self.gridsize - 1) * self.offset

    @property
    def corners(self) -> np.ndarray:
        """(C, 2) integer top-left corners [row, col] of the members inside the outer window."""
        steps = np.arange(self.gridsize) * self.offset
        rows, cols = np.meshgrid(steps, steps, indexing="ij")
        return np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.int64)

    @property
    def relative_offsets(self) -> np.ndarray:
        """(C, 2) member centre minus group centre [row, col], in pixels (float32, as stored)."""
        return (self.corners - (self.gridsize - 1) * self.offset / 2).astype(np.float32)

    @property
    def coverage(self) -> np.ndarray:
        """(M, M) number of members covering each pixel of the outer window (≥ 1 everywhere)."""
        count = np.zeros((self.window, self.window), np.float32)
        for r, c in self.corners:
            count[r : r + self.N, c : c + self.N] += 1
        return count

    @classmethod
    def from_relative_offsets(cls, relative: np.ndarray, N: int, where: str) -> GroupGeometry:
        """The geometry whose members sit at ``relative`` (C, 2) offsets; InputError unless it is a
        square g×g group at one integer spacing in row-major order (the layout ``simulate`` writes)."""
        relative = np.asarray(relative, dtype=np.float64)
        C = relative.shape[0]
        g = int(round(np.sqrt(C)))
        if g * g != C:
            raise InputError(f"{where}: expected C = gridsize² channels, found {C}")
        if g == 1:
            if np.any(np.abs(relative) > 1e-3):
                raise InputError(f"{where}: expected zero relative offsets at gridsize 1, found {relative.tolist()}")
            return cls(N, 1, 0)
        spacing = relative[1, 1] - relative[0, 1]
        offset = int(round(spacing))
        expected = cls(N, g, offset)
        if offset < 1 or offset >= N or np.abs(relative - expected.relative_offsets).max() > 1e-3:
            raise InputError(
                f"{where}: expected the relative offsets of a {g}×{g} group in row-major order at one whole-pixel "
                f"spacing smaller than N={N} (e.g. {expected.relative_offsets.tolist()}), found {relative.tolist()}"
            )
        return expected

    # ------------------------------------------------------------------------------------- numpy
    def member_patches(self, windows: np.ndarray) -> np.ndarray:
        """(n, M, M) outer windows → (n, C, N, N) member patches."""
        return np.stack([windows[:, r : r + self.N, c : c + self.N] for r, c in self.corners], axis=1)

    def reassemble_np(self, patches: np.ndarray) -> np.ndarray:
        """(n, C, N, N) member patches → (n, M, M) outer windows, overlaps averaged."""
        total = np.zeros((patches.shape[0], self.window, self.window), dtype=patches.dtype)
        for k, (r, c) in enumerate(self.corners):
            total[:, r : r + self.N, c : c + self.N] += patches[:, k]
        return total / self.coverage.astype(total.real.dtype)

    # ------------------------------------------------------------------------------------- torch
    def reassemble(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, C, N, N) patches → (B, M, M) shared object region (PtychoPINN's object_big), overlaps averaged."""
        if self.gridsize == 1:
            return patches[:, 0]
        M = self.window
        total = patches.new_zeros((patches.shape[0], M, M))
        for k, (r, c) in enumerate(self.corners.tolist()):
            # Out-of-place so autograd sees a sum of placed patches (index_put on a view would work
            # too, but a padded sum is one clear expression of "place at (r, c)").
            total = total + _place(patches[:, k], r, c, M)
        weight = torch.as_tensor(1.0 / self.coverage, device=patches.device)
        return total * weight

    def extract(self, region: torch.Tensor) -> torch.Tensor:
        """(B, M, M) object regions → (B, C, N, N) member windows."""
        if self.gridsize == 1:
            return region[:, None]
        return torch.stack([region[:, r : r + self.N, c : c + self.N] for r, c in self.corners.tolist()], dim=1)

    def enforce_overlap(self, patches: torch.Tensor) -> torch.Tensor:
        """Project (B, C, N, N) patches onto the consistent ones: reassemble, then re-extract."""
        if self.gridsize == 1:
            return patches
        return self.extract(self.reassemble(patches))


def _place(patch: torch.Tensor, r: int, c: int, M: int) -> torch.Tensor:
    """(B, N, N) → (B, M, M) with the patch at rows r…, columns c… and zeros elsewhere."""
    N = patch.shape[-1]
    pad = (c, M - N - c, r, M - N - r)
    if patch.is_complex():
        return torch.complex(torch.nn.functional.pad(patch.real, pad), torch.nn.functional.pad(patch.imag, pad))
    return torch.nn.functional.pad(patch, pad)
