"""Base-crop grids and the position labels of VoCo (paper Sec. 3.2, Fig. 4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["base_boxes", "position_labels"]


def _as_triple(value: Sequence[int] | Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    triple = torch.as_tensor(value, dtype=torch.float64).flatten()
    if triple.numel() != 3:
        raise ValueError(f"{name} must have 3 entries (one per spatial axis), got {list(triple.tolist())}.")
    if bool((triple <= 0).any()):
        raise ValueError(f"{name} must be positive on every axis, got {list(triple.tolist())}.")
    return triple


def base_boxes(region_size: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """The ``[start, end)`` boxes of the non-overlapping base cells that tile ``region_size``.

    Args:
        region_size: spatial shape of the region (3 ints), divisible by ``grid`` on every axis.
        grid: number of cells per axis (3 ints).

    Returns:
        int64 tensor (n, 3, 2), n = prod(grid), cells in C order over (gx, gy, gz):
        index = (ix * gy + iy) * gz + iz.
    """
    region_f, cells_f = _as_triple(region_size, "region_size"), _as_triple(grid, "grid")
    if bool((region_f != region_f.round()).any()) or bool((cells_f != cells_f.round()).any()):
        raise ValueError(f"region_size {region_f.tolist()} and grid {cells_f.tolist()} must hold whole numbers.")
    region, cells = region_f.long(), cells_f.long()
    if bool((region % cells != 0).any()):
        raise ValueError(
            f"region_size {region.tolist()} is not divisible by grid {cells.tolist()}: base cells must be equal."
        )
    cell = region // cells
    index = torch.cartesian_prod(*(torch.arange(int(g)) for g in cells)).reshape(-1, 3)
    starts = index * cell
    return torch.stack((starts, starts + cell), dim=-1)


def position_labels(
    boxes: torch.Tensor, region_size: Sequence[int] | Sequence[float], grid: Sequence[int]
) -> torch.Tensor:
    """Fraction of each crop's volume that overlaps each base cell (the position label y of the paper).

    Args:
        boxes: (k, 3, 2) ``[start, end)`` coordinates of k crops in region coordinates, int or float.
        region_size: spatial shape of the region (3 numbers); the region is cut into ``grid`` equal cells.
        grid: number of base cells per axis (3 ints); n = prod(grid).

    Returns:
        float32 tensor (k, n); entry (j, i) = |crop_j ∩ cell_i| / |crop_j|, cells in the C order of
        :func:`base_boxes`. Rows sum to 1 for crops that lie inside the region.
    """
    boxes = torch.as_tensor(boxes)
    if boxes.ndim != 3 or boxes.shape[1:] != (3, 2):
        raise ValueError(f"boxes must have shape (k, 3, 2) of [start, end) per axis, got {tuple(boxes.shape)}.")
    region = _as_triple(region_size, "region_size")
    cells = _as_triple(grid, "grid")
    if bool((cells != cells.round()).any()):
        raise ValueError(f"grid must hold whole numbers, got {cells.tolist()}.")
    boxes = boxes.to(torch.float64)
    starts, ends = boxes[..., 0], boxes[..., 1]  # (k, 3)
    if bool((ends <= starts).any()):
        raise ValueError("every box needs end > start on every axis.")
    cell = region / cells
    overlaps = []
    for axis in range(3):  # three axes, not crops or cells: each step is vectorised over both
        edges = torch.arange(int(cells[axis]), dtype=torch.float64) * cell[axis]
        lo = torch.maximum(starts[:, axis, None], edges[None])
        hi = torch.minimum(ends[:, axis, None], edges[None] + cell[axis])
        overlaps.append((hi - lo).clamp_min(0))  # (k, g_axis)
    ox, oy, oz = overlaps
    volume = ox[:, :, None, None] * oy[:, None, :, None] * oz[:, None, None, :]
    crop_volume = (ends - starts).prod(dim=1)
    return (volume.reshape(boxes.shape[0], -1) / crop_volume[:, None]).to(torch.float32)
