"""Tests of the VoCo base-cell grid and position labels (paper Sec. 3.2, Fig. 4), in 3D and in 2D.

Every expected value is computed inside the test, by hand (arithmetic in the comments) or by a brute-force
voxel (pixel) counter that knows nothing about the library's per-axis overlap formula.
"""

import itertools

import numpy as np
import pytest
import torch

from voco_components.transforms.labels import base_boxes, position_labels

# (region_size, grid) pairs: region divisible by grid; small enough to count voxels one by one.
CONFIGS = [
    ((24, 24, 12), (2, 2, 1)),
    ((24, 24, 12), (3, 3, 1)),
    ((24, 24, 12), (4, 4, 1)),
    ((24, 24, 12), (3, 3, 2)),
    ((24, 24, 12), (4, 4, 2)),
    ((25, 25, 12), (5, 5, 1)),
    ((18, 12, 9), (2, 3, 3)),  # unequal cells on every axis
]
# 2D (region_size, grid) pairs: radiographs
CONFIGS_2D = [
    ((24, 24), (2, 2)),
    ((24, 24), (4, 4)),
    ((24, 24), (3, 3)),
    ((25, 25), (5, 5)),
    ((18, 12), (2, 3)),  # unequal cells on both axes
    ((16, 24), (4, 3)),
]


def cell_index_volume(region, grid):
    """Voxel volume (or pixel image) of shape ``region`` holding, per voxel, the C-order index of the grid cell it
    lies in: ((ix * gy) + iy) * gz + iz, written out per number of axes."""
    region, grid = np.asarray(region), np.asarray(grid)
    cell = region // grid
    if len(region) == 2:
        ix, iy = np.indices(tuple(region))
        return (ix // cell[0]) * grid[1] + iy // cell[1]
    ix, iy, iz = np.indices(tuple(region))
    return ((ix // cell[0]) * grid[1] + iy // cell[1]) * grid[2] + iz // cell[2]


def count_labels(boxes, region, grid, factor=1):
    """Brute-force labels: count the voxels (pixels) of each box in each cell, divided by the box volume (area).

    Boxes may be float as long as ``boxes * factor`` is integer: the count is then done on a grid ``factor``
    times finer (region ``region * factor``), where every box covers whole voxels. Parts of a box outside the
    region count towards its volume but towards no cell.
    """
    region_f = np.asarray(region) * factor
    cells = cell_index_volume(region_f, grid)
    n = int(np.prod(grid))
    scaled = np.asarray(boxes, dtype=np.float64) * factor
    boxes_f = np.rint(scaled).astype(np.int64)
    assert np.allclose(scaled, boxes_f, atol=1e-6), "boxes are not on the fine grid"
    rows = []
    for box in boxes_f:
        lo = np.clip(box[:, 0], 0, region_f)
        hi = np.clip(box[:, 1], 0, region_f)
        inside = cells[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        counts = np.bincount(inside.ravel(), minlength=n).astype(np.float64)
        rows.append(counts / np.prod(box[:, 1] - box[:, 0]))
    return np.stack(rows)


def random_int_boxes(rng, region, k, sizes=None):
    """k integer boxes fully inside ``region``; random size per axis unless ``sizes`` is given."""
    region = np.asarray(region)
    d = len(region)
    size = rng.integers(1, region + 1, size=(k, d)) if sizes is None else np.broadcast_to(sizes, (k, d))
    start = rng.integers(0, region - size + 1)
    return np.stack((start, start + size), axis=-1)


# ---------------------------------------------------------------- hand-worked cases


@pytest.mark.parametrize("unit", [(1, 1, 1), (96, 96, 64)])
def test_fig4_style_hand_worked(unit):
    """A one-cell crop straddling cells 5, 6, 9, 10 of a 4x4x1 grid, fractions worked out by hand.

    Cells are unit (96, 96, 64) in the paper's 384x384x64 region (or 1x1x1 in a 4x4x1 region).
    The crop is x in [1.25, 2.25), y in [1.75, 2.75), z in [0, 1) cells:
      x overlaps row 1 = [1, 2) by 0.75 and row 2 = [2, 3) by 0.25 (of 1);
      y overlaps col 1 = [1, 2) by 0.25 and col 2 = [2, 3) by 0.75 (of 1);
      z covers the single layer.
    Cell index = ix * 4 + iy, so
      cell 5  = (1, 1): 0.75 * 0.25 = 0.1875
      cell 6  = (1, 2): 0.75 * 0.75 = 0.5625
      cell 9  = (2, 1): 0.25 * 0.25 = 0.0625
      cell 10 = (2, 2): 0.25 * 0.75 = 0.1875
    and 0 elsewhere. All are exact binary fractions, so the comparison is exact.
    """
    u = np.asarray(unit, dtype=np.float64)
    box = torch.tensor([[1.25, 2.25], [1.75, 2.75], [0.0, 1.0]], dtype=torch.float64) * torch.from_numpy(u)[:, None]
    region = (4 * u[0], 4 * u[1], u[2])
    labels = position_labels(box[None], region, (4, 4, 1))
    expected = torch.zeros(1, 16)
    expected[0, 5], expected[0, 6], expected[0, 9], expected[0, 10] = 0.1875, 0.5625, 0.0625, 0.1875
    assert labels.dtype == torch.float32
    assert labels.shape == (1, 16)
    assert torch.equal(labels, expected)


def test_hand_worked_crop_larger_than_cell():
    """A 1.5-cell crop in a 4x4x1 grid of unit cells.

    x in [0.5, 2.0): row 0 gets 0.5, row 1 gets 1.0 of 1.5 -> 1/3, 2/3.
    y in [3.0, 4.0): column 3 only.  z in [0, 1).
    cell 3 = (0, 3): 1/3;  cell 7 = (1, 3): 2/3.
    """
    box = torch.tensor([[[0.5, 2.0], [3.0, 4.0], [0.0, 1.0]]])
    labels = position_labels(box, (4, 4, 1), (4, 4, 1))
    expected = torch.zeros(1, 16)
    expected[0, 3], expected[0, 7] = 1 / 3, 2 / 3
    torch.testing.assert_close(labels, expected)


def test_hand_worked_z_cells_3x3x2():
    """z is the fastest index: a crop over cell (2, 0, *) split evenly in z lands on cells 12 and 13.

    Region 3x3x2 of unit cells; crop x in [2, 3), y in [0, 1), z in [0.5, 1.5):
    z overlaps layer 0 by 0.5 and layer 1 by 0.5; index (2*3 + 0)*2 + iz = 12 + iz.
    """
    box = torch.tensor([[[2.0, 3.0], [0.0, 1.0], [0.5, 1.5]]])
    labels = position_labels(box, (3, 3, 2), (3, 3, 2))
    expected = torch.zeros(1, 18)
    expected[0, 12], expected[0, 13] = 0.5, 0.5
    assert torch.equal(labels, expected)


def test_hand_worked_crop_partly_outside():
    """Half of the crop lies outside the region, so its labels sum to 0.5.

    Region 4x4x1 of unit cells; crop x in [-1, 1), y in [0, 1), z in [0, 1): volume 2,
    of which x in [0, 1) (volume 1) lies in cell 0.
    """
    box = torch.tensor([[[-1.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
    labels = position_labels(box, (4, 4, 1), (4, 4, 1))
    expected = torch.zeros(1, 16)
    expected[0, 0] = 0.5
    assert torch.equal(labels, expected)


# ---------------------------------------------------------------- brute-force voxel counting


@pytest.mark.parametrize(("region", "grid"), CONFIGS)
def test_integer_boxes_match_voxel_count(region, grid):
    """Random integer boxes of random sizes (not a cell size) against a per-voxel count."""
    rng = np.random.default_rng(sum(region) * 7 + sum(grid))
    boxes = random_int_boxes(rng, region, 40)
    expected = count_labels(boxes, region, grid)
    labels = position_labels(torch.from_numpy(boxes), region, grid)
    assert labels.shape == (40, int(np.prod(grid)))
    np.testing.assert_allclose(labels.numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("region", "grid"), CONFIGS)
def test_cell_sized_integer_boxes_match_voxel_count(region, grid):
    """Random boxes of exactly one cell (the default random-crop size) against a per-voxel count."""
    rng = np.random.default_rng(3)
    cell = np.asarray(region) // np.asarray(grid)
    boxes = random_int_boxes(rng, region, 30, sizes=cell)
    np.testing.assert_allclose(
        position_labels(torch.from_numpy(boxes), region, grid).numpy(), count_labels(boxes, region, grid), atol=1e-6
    )


@pytest.mark.parametrize(("region", "grid"), CONFIGS[2:5])
def test_boxes_partly_outside_match_voxel_count(region, grid):
    """Integer boxes that stick out of the region: only the inside voxels count, the volume is the whole box."""
    rng = np.random.default_rng(11)
    region_arr = np.asarray(region)
    size = rng.integers(1, region_arr + 1, size=(30, 3))
    start = rng.integers(-region_arr // 2, region_arr - size // 2 + 1)  # may leave the region on either side
    boxes = np.stack((start, start + size), axis=-1)
    expected = count_labels(boxes, region, grid)
    np.testing.assert_allclose(position_labels(torch.from_numpy(boxes), region, grid).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(("region", "grid"), [CONFIGS[0], CONFIGS[3], CONFIGS[4], CONFIGS[6]])
def test_float_boxes_match_fine_grid_count(region, grid):
    """Float boxes on a quarter-unit lattice, counted on a grid four times finer than the region."""
    rng = np.random.default_rng(5)
    fine = random_int_boxes(rng, np.asarray(region) * 4, 30)  # integer on the 4x finer grid
    boxes = fine / 4.0  # quarter-unit floats in region coordinates
    assert not np.allclose(boxes, np.rint(boxes))  # really fractional
    expected = count_labels(boxes, region, grid, factor=4)
    labels = position_labels(torch.from_numpy(boxes), region, grid)
    np.testing.assert_allclose(labels.numpy(), expected, atol=1e-6)
    # float32 boxes give the same labels
    labels32 = position_labels(torch.from_numpy(boxes).float(), region, grid)
    np.testing.assert_allclose(labels32.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(("region", "grid"), [CONFIGS[2], CONFIGS[4], CONFIGS[5]])
def test_arbitrary_float_boxes_are_additive(region, grid):
    """Arbitrary real boxes: cutting a box in two along any axis splits its overlaps exactly.

    |A u B| y(A u B) = |A| y(A) + |B| y(B) holds for true overlap fractions whatever the cut; labels
    of a box shifted entirely into one cell are one-hot on that cell.
    """
    rng = np.random.default_rng(17)
    region_arr = np.asarray(region, dtype=np.float64)
    for _ in range(20):
        size = rng.uniform(0.3, 1.0, 3) * region_arr
        start = rng.uniform(0, region_arr - size)
        box = np.stack((start, start + size), axis=-1)
        axis = rng.integers(3)
        cut = rng.uniform(box[axis, 0], box[axis, 1])
        a, b = box.copy(), box.copy()
        a[axis, 1], b[axis, 0] = cut, cut
        volume = lambda x: np.prod(x[:, 1] - x[:, 0])  # noqa: E731
        y = position_labels(torch.from_numpy(np.stack((box, a, b))), region, grid).double().numpy()
        np.testing.assert_allclose(volume(box) * y[0], volume(a) * y[1] + volume(b) * y[2], atol=1e-5 * volume(box))
    # a small box strictly inside cell i is one-hot on i
    cell = region_arr / np.asarray(grid)
    for i, idx in enumerate(itertools.product(*(range(g) for g in grid))):
        lo = np.asarray(idx) * cell + rng.uniform(0, 0.3, 3) * cell
        box = np.stack((lo, lo + 0.5 * cell), axis=-1)
        y = position_labels(torch.from_numpy(box[None]), region, grid)[0]
        assert y[i] == 1.0 and float(y.sum()) == 1.0


# ---------------------------------------------------------------- row sums


@pytest.mark.parametrize(("region", "grid"), CONFIGS)
def test_rows_sum_to_one_inside_region(region, grid):
    """Crops inside the region are fully covered by the cells, so every row sums to 1."""
    rng = np.random.default_rng(23)
    region_arr = np.asarray(region, dtype=np.float64)
    size = rng.uniform(0.05, 1.0, (50, 3)) * region_arr
    start = rng.uniform(0, region_arr - size)
    boxes = torch.from_numpy(np.stack((start, start + size), axis=-1))
    labels = position_labels(boxes, region, grid)
    torch.testing.assert_close(labels.sum(dim=1), torch.ones(50), atol=1e-5, rtol=0)
    assert bool((labels >= 0).all())


def test_rows_sum_below_one_outside_region():
    """A crop partly outside the region has row sum = inside volume / volume < 1 (here 3/4 and 1/2)."""
    region, grid = (24, 24, 12), (4, 4, 1)
    boxes = torch.tensor(
        [
            [[-3, 3], [0, 6], [0, 12]],  # half of x outside: (3 * 6 * 12) / (6 * 6 * 12) = 1/2
            [[20, 26], [21, 27], [0, 12]],  # x: 4 of 6 inside, y: 3 of 6 inside -> (4*3)/(6*6) = 1/3
            [[0, 6], [0, 6], [-4, 12]],  # z: 12 of 16 inside -> 3/4
        ]
    )
    sums = position_labels(boxes, region, grid).sum(dim=1)
    torch.testing.assert_close(sums, torch.tensor([1 / 2, 1 / 3, 3 / 4]))
    assert bool((sums < 1).all())


# ---------------------------------------------------------------- base boxes


@pytest.mark.parametrize(("region", "grid"), CONFIGS)
def test_base_boxes_order_and_coordinates(region, grid):
    """Cell (ix, iy, iz) sits at index (ix*gy + iy)*gz + iz with box [i*cell, (i+1)*cell) per axis."""
    boxes = base_boxes(region, grid)
    gx, gy, gz = grid
    cell = [r // g for r, g in zip(region, grid, strict=True)]
    assert boxes.dtype == torch.int64
    assert boxes.shape == (gx * gy * gz, 3, 2)
    for ix in range(gx):
        for iy in range(gy):
            for iz in range(gz):
                expected = [[i * c, (i + 1) * c] for i, c in zip((ix, iy, iz), cell, strict=True)]
                assert boxes[(ix * gy + iy) * gz + iz].tolist() == expected


@pytest.mark.parametrize(("region", "grid"), CONFIGS)
def test_base_boxes_tile_region(region, grid):
    """Every voxel of the region is covered exactly once, each cell by the voxels of its own index."""
    boxes = base_boxes(region, grid).numpy()
    cover = np.zeros(region, dtype=np.int64)
    owner = np.full(region, -1, dtype=np.int64)
    for i, b in enumerate(boxes):
        cover[b[0, 0] : b[0, 1], b[1, 0] : b[1, 1], b[2, 0] : b[2, 1]] += 1
        owner[b[0, 0] : b[0, 1], b[1, 0] : b[1, 1], b[2, 0] : b[2, 1]] = i
    assert (cover == 1).all()
    assert np.array_equal(owner, cell_index_volume(region, grid))


@pytest.mark.parametrize(("region", "grid"), CONFIGS)
def test_base_boxes_against_themselves_are_identity(region, grid):
    """Each base cell overlaps only itself, fully: the labels of the base boxes are the identity matrix."""
    boxes = base_boxes(region, grid)
    n = boxes.shape[0]
    assert torch.equal(position_labels(boxes, region, grid), torch.eye(n))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("boxes", "match"),
    [
        (torch.zeros(3, 2), r"shape \(k, 3, 2\)"),
        (torch.zeros(2, 2, 3), r"shape \(k, 3, 2\)"),
        (torch.zeros(2, 3, 3), r"shape \(k, 3, 2\)"),
        (torch.zeros(1, 2, 3, 2), r"shape \(k, 3, 2\)"),
        (torch.tensor([[[0, 4], [0, 4], [0, 0]]]), "end > start"),
        (torch.tensor([[[0, 4], [5, 4], [0, 1]]]), "end > start"),
    ],
)
def test_position_labels_rejects_bad_boxes(boxes, match):
    """Wrong box shapes and empty or inverted boxes are ValueErrors."""
    with pytest.raises(ValueError, match=match):
        position_labels(boxes, (8, 8, 4), (2, 2, 1))


@pytest.mark.parametrize(
    ("region", "grid", "match"),
    [
        ((8, 8), (2, 2, 1), "grid must have 2 entries"),
        ((8, 8, 4), (2, 2), "grid must have 3 entries"),
        ((8,), (2,), "region_size must have 2 or 3 entries"),
        ((8, 8, 4, 4), (2, 2, 1, 1), "region_size must have 2 or 3 entries"),
        ((8, 0, 4), (2, 2, 1), "region_size must be positive"),
        ((8, -8, 4), (2, 2, 1), "region_size must be positive"),
        ((8, 8, 4), (2, 0, 1), "grid must be positive"),
        ((8, 8, 4), (2, 1.5, 1), "whole numbers"),
    ],
)
def test_position_labels_rejects_bad_sizes(region, grid, match):
    """Region and grid need two or three positive entries, as many in the grid as in the region; the grid whole
    numbers."""
    boxes = torch.tensor([[[0, 2], [0, 2], [0, 2]]])
    with pytest.raises(ValueError, match=match):
        position_labels(boxes, region, grid)


@pytest.mark.parametrize(
    ("region", "grid", "match"),
    [
        ((10, 12, 4), (4, 4, 1), "not divisible"),
        ((12, 12, 5), (3, 3, 2), "not divisible"),
        ((12, 12), (3, 3, 1), "grid must have 2 entries"),
        ((12,), (3,), "region_size must have 2 or 3 entries"),
        ((12, 12, 4), (3, 0, 1), "grid must be positive"),
        ((0, 12, 4), (3, 3, 1), "region_size must be positive"),
    ],
)
def test_base_boxes_rejects_bad_sizes(region, grid, match):
    """base_boxes needs two or three positive entries per size and a region divisible by the grid."""
    with pytest.raises(ValueError, match=match):
        base_boxes(region, grid)


def test_base_boxes_rejects_fractional_sizes():
    """A fractional grid or region cannot be cut into whole-voxel cells."""
    with pytest.raises(ValueError, match="whole numbers"):
        base_boxes((8, 8, 4), (2.5, 2, 1))
    with pytest.raises(ValueError, match="whole numbers"):
        base_boxes((8.5, 8, 4), (2, 2, 1))


# ---------------------------------------------------------------- 2D: labels are fractions of area


def test_2d_hand_worked():
    """A one-cell crop straddling four cells of a 4x4 grid of unit cells: fractions of its area, by hand.

    x in [1.25, 2.25) overlaps row 1 by 0.75 and row 2 by 0.25; y in [1.75, 2.75) overlaps column 1 by 0.25
    and column 2 by 0.75. Cell index = ix * 4 + iy: cell 5 gets 0.75 * 0.25, cell 6 0.75 * 0.75, cell 9
    0.25 * 0.25 and cell 10 0.25 * 0.75 (exact binary fractions).
    """
    box = torch.tensor([[[1.25, 2.25], [1.75, 2.75]]])
    labels = position_labels(box, (4, 4), (4, 4))
    expected = torch.zeros(1, 16)
    expected[0, 5], expected[0, 6], expected[0, 9], expected[0, 10] = 0.1875, 0.5625, 0.0625, 0.1875
    assert labels.dtype == torch.float32 and torch.equal(labels, expected)


@pytest.mark.parametrize(("region", "grid"), CONFIGS_2D)
def test_2d_integer_boxes_match_pixel_count(region, grid):
    """Random integer boxes of random sizes against a per-pixel count."""
    rng = np.random.default_rng(sum(region) * 5 + sum(grid))
    boxes = random_int_boxes(rng, region, 60)
    labels = position_labels(torch.from_numpy(boxes), region, grid)
    assert labels.shape == (60, int(np.prod(grid)))
    np.testing.assert_allclose(labels.numpy(), count_labels(boxes, region, grid), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("region", "grid"), CONFIGS_2D)
def test_2d_float_and_outside_boxes_match_fine_grid_count(region, grid):
    """Quarter-pixel float boxes, some sticking out of the region, counted on a grid four times finer."""
    rng = np.random.default_rng(29)
    fine_region = np.asarray(region) * 4
    size = rng.integers(1, fine_region + 1, size=(40, 2))
    start = rng.integers(-fine_region // 3, fine_region - size // 2 + 1)
    boxes = np.stack((start, start + size), axis=-1) / 4.0
    expected = count_labels(boxes, region, grid, factor=4)
    np.testing.assert_allclose(position_labels(torch.from_numpy(boxes), region, grid).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(("region", "grid"), CONFIGS_2D)
def test_2d_base_boxes_tile_the_region_in_c_order(region, grid):
    """Every pixel is covered once, each by the cell of its C-order index; base boxes label themselves."""
    boxes = base_boxes(region, grid)
    assert boxes.shape == (int(np.prod(grid)), 2, 2) and boxes.dtype == torch.int64
    owner = np.full(region, -1, dtype=np.int64)
    cover = np.zeros(region, dtype=np.int64)
    for i, b in enumerate(boxes.numpy()):
        cover[b[0, 0] : b[0, 1], b[1, 0] : b[1, 1]] += 1
        owner[b[0, 0] : b[0, 1], b[1, 0] : b[1, 1]] = i
    assert (cover == 1).all() and np.array_equal(owner, cell_index_volume(region, grid))
    assert torch.equal(position_labels(boxes, region, grid), torch.eye(len(boxes)))


def test_2d_region_with_3d_boxes_is_refused():
    with pytest.raises(ValueError, match=r"shape \(k, 2, 2\)"):
        position_labels(torch.tensor([[[0, 2], [0, 2], [0, 1]]]), (8, 8), (2, 2))
