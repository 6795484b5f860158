"""Base-crop grids and the position labels of VoCo (paper Sec. 3.2, Fig. 4), for 2D images and 3D volumes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["SPATIAL_DIMS", "spatial_sizes", "base_boxes", "position_labels"]

SPATIAL_DIMS = (2, 3)
"""VoCo works on 2D images (radiographs) and 3D volumes (CT, MRI)."""


def spatial_sizes(
    value: Sequence[int] | Sequence[float] | torch.Tensor, name: str, dims: int | None = None
) -> torch.Tensor:
    """``value`` as a float64 vector of one positive size per spatial axis.

    Args:
        value: the sizes.
        name: the argument's name, for the error message.
        dims: the number of axes required; None accepts 2 or 3 (:data:`SPATIAL_DIMS`).

    Raises:
        ValueError: a wrong number of entries, or an entry that is not positive.
    """
    sizes = torch.as_tensor(value, dtype=torch.float64).flatten()
    allowed = SPATIAL_DIMS if dims is None else (int(dims),)
    if sizes.numel() not in allowed:
        wanted = " or ".join(str(d) for d in allowed)
        raise ValueError(f"{name} must have {wanted} entries (one per spatial axis), got {list(sizes.tolist())}.")
    if bool((sizes <= 0).any()):
        raise ValueError(f"{name} must be positive on every axis, got {list(sizes.tolist())}.")
    return sizes


def base_boxes(region_size: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """The ``[start, end)`` boxes of the non-overlapping base cells that tile ``region_size``.

    Args:
        region_size: spatial shape of the region (2 ints for an image, 3 for a volume), divisible by ``grid``.
        grid: number of cells per axis, one per axis of ``region_size``.

    Returns:
        int64 tensor (n, d, 2), n = prod(grid), d = len(region_size), cells in C order over the grid:
        index = (ix * gy + iy) * gz + iz in 3D, ix * gy + iy in 2D.
    """
    region_f = spatial_sizes(region_size, "region_size")
    cells_f = spatial_sizes(grid, "grid", region_f.numel())
    if bool((region_f != region_f.round()).any()) or bool((cells_f != cells_f.round()).any()):
        raise ValueError(f"region_size {region_f.tolist()} and grid {cells_f.tolist()} must hold whole numbers.")
    region, cells = region_f.long(), cells_f.long()
    if bool((region % cells != 0).any()):
        raise ValueError(
            f"region_size {region.tolist()} is not divisible by grid {cells.tolist()}: base cells must be equal."
        )
    cell = region // cells
    index = torch.cartesian_prod(*(torch.arange(int(g)) for g in cells)).reshape(-1, len(cells))
    starts = index * cell
    return torch.stack((starts, starts + cell), dim=-1)


def position_labels(
    boxes: torch.Tensor, region_size: Sequence[int] | Sequence[float], grid: Sequence[int]
) -> torch.Tensor:
    """Fraction of each crop's area (2D) or volume (3D) that overlaps each base cell (the position label y).

    Args:
        boxes: (k, d, 2) ``[start, end)`` coordinates of k crops in region coordinates, int or float.
        region_size: spatial shape of the region (d = 2 or 3 numbers); it is cut into ``grid`` equal cells.
        grid: number of base cells per axis (d ints); n = prod(grid).

    Returns:
        float32 tensor (k, n); entry (j, i) = |crop_j ∩ cell_i| / |crop_j|, cells in the C order of
        :func:`base_boxes`. Rows sum to 1 for crops that lie inside the region.
    """
    region = spatial_sizes(region_size, "region_size")
    dims = region.numel()
    cells = spatial_sizes(grid, "grid", dims)
    boxes = torch.as_tensor(boxes)
    if boxes.ndim != 3 or boxes.shape[1:] != (dims, 2):
        raise ValueError(f"boxes must have shape (k, {dims}, 2) of [start, end) per axis, got {tuple(boxes.shape)}.")
    if bool((cells != cells.round()).any()):
        raise ValueError(f"grid must hold whole numbers, got {cells.tolist()}.")
    boxes = boxes.to(torch.float64)
    starts, ends = boxes[..., 0], boxes[..., 1]  # (k, d)
    if bool((ends <= starts).any()):
        raise ValueError("every box needs end > start on every axis.")
    cell = region / cells
    k = boxes.shape[0]
    overlap: torch.Tensor | None = None
    for axis in range(dims):  # the axes, not crops or cells: each step is vectorised over both
        edges = torch.arange(int(cells[axis]), dtype=torch.float64) * cell[axis]
        lo = torch.maximum(starts[:, axis, None], edges[None])
        hi = torch.minimum(ends[:, axis, None], edges[None] + cell[axis])
        extent = (hi - lo).clamp_min(0)  # (k, g_axis)
        # outer product with the axes so far, in C order: the last axis varies fastest
        overlap = extent if overlap is None else (overlap[:, :, None] * extent[:, None, :]).reshape(k, -1)
    crop_size = (ends - starts).prod(dim=1)
    return (overlap / crop_size[:, None]).to(torch.float32)
