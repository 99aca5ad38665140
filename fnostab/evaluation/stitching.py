"""Stitch per-patch predictions into whole images, gridsize 1 (docs/data.md, Stitching and metrics).

Every test patch is an N×N window of one object image, taken on a regular scan grid with step
``stride``. Only the central ``stride``×``stride`` crop of each patch is kept, and the crops are
tiled side by side without blending, so every stitched pixel comes from exactly one patch.

Geometry (all in pixels of the full object, row then column):

- a patch with top-left corner (r, c) has centre (r + (N−1)/2, c + (N−1)/2), the mean pixel index;
- its crop starts ``b = (N − stride) // 2`` pixels inside the patch, so the crop sits at
  ``r + b = floor(centre − (stride − 1)/2)`` in the object;
- per image, the crop positions are taken relative to the smallest one, and must then be exact
  multiples of ``stride``: crop (i, j) of the grid lands at rows ``i·stride …`` and columns
  ``j·stride …`` of the stitched image.

Unlike the original, which reshaped the predictions to an s×s grid and cropped ``(N − 10)/2`` from
each side (a shape mismatch whenever N − stride is odd), the tiles are placed by their centres:
any N ≥ stride, any stride, non-square grids and any patch order work. ``ground_truth_region`` uses
the same geometry, so ``stitch_patches(true_patches) == ground_truth_region(object)`` exactly.
"""

from __future__ import annotations

import numpy as np

from fnostab.errors import InputError

__all__ = ["stitch_patches", "ground_truth_region"]

# Centres are stored as float32 in the NPZ; a top-left corner further than this from an integer
# means the centres do not belong to N×N patches at all (for example N is wrong).
_PIXEL_TOLERANCE = 1e-3


def _as_patches(patches: np.ndarray) -> np.ndarray:
    """Return patches as (n, N, N); the data-contract layout (n, N, N, 1) is accepted too."""
    patches = np.asarray(patches)
    if patches.ndim == 4 and patches.shape[-1] == 1:
        patches = patches[..., 0]
    if patches.ndim != 3 or patches.shape[1] != patches.shape[2]:
        raise InputError(f"patches must have shape (n, N, N) (or (n, N, N, 1)); found {patches.shape}")
    if patches.shape[0] == 0:
        raise InputError("patches is empty: there is nothing to stitch")
    return patches


def _as_centres(centres: np.ndarray, n: int) -> np.ndarray:
    """Return centres as float64 (n, 2) [row, col]; the layout (n, 1, 2, 1) is accepted too."""
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim == 4 and centres.shape[1] == 1 and centres.shape[3] == 1:
        centres = centres[:, 0, :, 0]
    if centres.shape != (n, 2):
        raise InputError(
            f"centres must have shape (n, 2) = ({n}, 2) [row, col] to match {n} patches; found {centres.shape}"
        )
    if not np.all(np.isfinite(centres)):
        raise InputError("centres contain NaN or inf")
    return centres


def _check_stride(stride: int, N: int) -> int:
    if isinstance(stride, bool) or int(stride) != stride or stride < 1:
        raise InputError(f"stride must be a positive integer; found {stride!r}")
    stride = int(stride)
    if stride > N:
        raise InputError(
            f"stride {stride} is larger than the patch size N={N}: the central stride×stride crop "
            "does not fit in a patch (use a stride ≤ N)"
        )
    return stride


def _grid_layout(
    centres: np.ndarray, N: int, stride: int, n_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Locate every crop on its image's grid.

    Returns ``image`` (n,), ``grid`` (n, 2) integer [row, col] grid indices, ``origin``
    (n_images, 2) integer object position of grid cell (0, 0) per image, and the grid shape
    (rows, cols), identical for all images.
    """
    n = centres.shape[0]
    if n == 0:
        raise InputError("centres is empty: there is no scan grid")
    if isinstance(n_images, bool) or int(n_images) != n_images or n_images < 1:
        raise InputError(f"n_images must be a positive integer; found {n_images!r}")
    n_images = int(n_images)
    if n % n_images:
        raise InputError(
            f"{n} patches cannot be split evenly over n_images={n_images} "
            "(patches are stored image by image, so n must be a multiple of n_images)"
        )
    per_image = n // n_images

    top_left = centres - (N - 1) / 2.0
    top_left_int = np.rint(top_left)
    if np.any(np.abs(top_left - top_left_int) > _PIXEL_TOLERANCE):
        k = int(np.argmax(np.abs(top_left - top_left_int).max(axis=1)))
        raise InputError(
            f"centre {centres[k].tolist()} of patch {k} is not the centre of a pixel-aligned "
            f"{N}×{N} patch (a centre is the mean pixel index, (N−1)/2 past the top-left corner); "
            "check N and the centres"
        )
    # Crop position = r + (N − stride)//2 = floor(centre − (stride − 1)/2) for integer r.
    position = top_left_int.astype(np.int64) + (N - stride) // 2

    image = np.repeat(np.arange(n_images), per_image)
    position = position.reshape(n_images, per_image, 2)
    origin = position.min(axis=1)  # (n_images, 2)
    offset = position - origin[:, None, :]
    if np.any(offset % stride):
        i, k = np.argwhere((offset % stride).any(axis=2))[0]
        raise InputError(
            f"centres are not on one regular grid with stride {stride}: patch {i * per_image + k} "
            f"(image {i}, centre {centres[i * per_image + k].tolist()}) is "
            f"{offset[i, k].tolist()} px from the grid origin, not a multiple of {stride}"
        )
    grid = offset // stride  # (n_images, per_image, 2)
    shape = grid.max(axis=1) + 1  # (n_images, 2)
    if np.any(shape != shape[0]):
        raise InputError(f"every image must have the same scan grid; found grid shapes {shape.tolist()}")
    rows, cols = (int(v) for v in shape[0])
    if rows * cols != per_image:
        raise InputError(
            f"centres do not fill a regular {rows}×{cols} grid with stride {stride}: "
            f"{per_image} patches per image for {rows * cols} grid cells"
        )
    cell = grid[..., 0] * cols + grid[..., 1]  # (n_images, per_image)
    # per_image cells each in [0, rows·cols): all distinct ⇔ every cell is covered exactly once.
    if np.any(np.diff(np.sort(cell, axis=1), axis=1) == 0):
        raise InputError("two patches of the same image have the same centre: the scan grid has duplicates")
    return image, grid.reshape(n, 2), origin, (rows, cols)


def stitch_patches(patches: np.ndarray, centres: np.ndarray, stride: int, n_images: int = 1) -> np.ndarray:
    """Tile the central ``stride``×``stride`` crop of every patch into whole images.

    Args:
        patches: (n, N, N) real or complex patches (the data-contract (n, N, N, 1) is accepted),
            stored image by image: all patches of image 0, then image 1, …; order within an image
            is free, because crops are placed by their centres.
        centres: (n, 2) patch centres [row, col] in object pixels, the mean pixel index of each
            patch (the data-contract ``coords_offsets`` (n, 1, 2, 1) is accepted).
        stride: scan step in pixels, 1 ≤ stride ≤ N; also the side of the kept crop.
        n_images: number of object images the patches come from; n must be a multiple of it.

    Returns:
        (n_images, rows·stride, cols·stride) array of the input dtype, where rows × cols is the
        scan grid (square for the grid-lines data, but need not be).

    Raises:
        InputError (a ValueError): stride > N, shapes that do not match, centres that are not one
        complete regular grid with this stride per image, or n not divisible by n_images.
    """
    patches = _as_patches(patches)
    n, N = patches.shape[0], patches.shape[1]
    stride = _check_stride(stride, N)
    centres = _as_centres(centres, n)
    image, grid, _, (rows, cols) = _grid_layout(centres, N, stride, n_images)

    b = (N - stride) // 2
    crops = patches[:, b : b + stride, b : b + stride]
    tiles = np.zeros((int(n_images), rows, cols, stride, stride), dtype=patches.dtype)
    tiles[image, grid[:, 0], grid[:, 1]] = crops
    # (img, row, col, y, x) → (img, row, y, col, x) → (img, rows·stride, cols·stride)
    return tiles.transpose(0, 1, 3, 2, 4).reshape(int(n_images), rows * stride, cols * stride)


def ground_truth_region(full_object: np.ndarray, centres: np.ndarray, N: int, stride: int) -> np.ndarray:
    """Cut out the part of each full object that ``stitch_patches`` covers.

    This replaces the original's ``get_clipped_object`` (drop (S − N) mod stride trailing pixels,
    clip b from each side, keep image 0 only) with the stitching geometry itself, so that stitching
    the true patches reproduces this region exactly, for every image.

    Args:
        full_object: (n_images, S, S) (or (n_images, S, S, 1)) full object images; need not be square.
        centres: (n, 2) patch centres [row, col], stored image by image; n a multiple of n_images.
        N: patch size in pixels; used to check that the centres are centres of N×N patches and
            that stride ≤ N, as ``stitch_patches`` does.
        stride: scan step in pixels.

    Returns:
        (n_images, rows·stride, cols·stride) copy of the covered region, input dtype.

    Raises:
        InputError: as ``stitch_patches``, or if the region falls outside the object.
    """
    obj = np.asarray(full_object)
    if obj.ndim == 4 and obj.shape[-1] == 1:
        obj = obj[..., 0]
    if obj.ndim != 3:
        raise InputError(f"full_object must have shape (n_images, S, S) (or (n_images, S, S, 1)); found {obj.shape}")
    if isinstance(N, bool) or int(N) != N or N < 1:
        raise InputError(f"N must be a positive integer; found {N!r}")
    N = int(N)
    stride = _check_stride(stride, N)
    n_images = obj.shape[0]
    centres = np.asarray(centres, dtype=np.float64)
    n = centres.shape[0] if centres.ndim >= 1 else 0
    centres = _as_centres(centres, n)
    _, _, origin, (rows, cols) = _grid_layout(centres, N, stride, n_images)

    height, width = rows * stride, cols * stride
    end = origin + np.array([height, width])
    if np.any(origin < 0) or np.any(end > np.array(obj.shape[1:])):
        raise InputError(
            f"the stitched region (rows {origin[:, 0].tolist()}…{end[:, 0].tolist()}, columns "
            f"{origin[:, 1].tolist()}…{end[:, 1].tolist()}) does not fit in objects of shape "
            f"{obj.shape[1:]}: do the centres belong to this object?"
        )
    return np.stack([obj[i, r : r + height, c : c + width] for i, (r, c) in enumerate(origin)])
