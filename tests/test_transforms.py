"""Tests of VoCoCropd: crops are cut where the boxes say, labels match the boxes, augmentation and errors.

Expected values are computed inside the tests: a linear intensity ramp predicts every resampled voxel,
plain slicing predicts crops of a volume already on the sampling grid, and a brute-force voxel counter
predicts the position labels from the reported boxes.
"""

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose

from voco_components.transforms.crops import VoCoCropd

# region (96, 96, 32) cut 4x4x1, crops of 16^3: sampling grid (64, 64, 16), 2/3 and 1/2 voxel per region unit
SMALL = {"region_size": (96, 96, 32), "grid": (4, 4, 1), "roi_size": (16, 16, 16)}
SAMPLING = (64, 64, 16)
N_BASE = 16


def make(keys="image", seed=0, **kwargs):
    """A seeded VoCoCropd on the SMALL configuration unless overridden."""
    config = {**SMALL, **kwargs}
    transform = VoCoCropd(keys, **config)
    transform.set_random_state(seed=seed)
    return transform


def sampling_shape(config):
    return tuple(g * r for g, r in zip(config["grid"], config["roi_size"], strict=True))


def count_labels(boxes, region, grid, factor):
    """Brute-force labels: per-voxel count of each box in each cell on a grid ``factor`` times finer."""
    region_f = np.asarray(region) * factor
    cell = region_f // np.asarray(grid)
    ix, iy, iz = np.indices(tuple(region_f))
    cells = ((ix // cell[0]) * grid[1] + iy // cell[1]) * grid[2] + iz // cell[2]
    scaled = np.asarray(boxes, dtype=np.float64) * factor
    boxes_f = np.rint(scaled).astype(np.int64)
    assert np.allclose(scaled, boxes_f, atol=1e-4), "boxes are not on the fine grid"
    rows = []
    for b in boxes_f:
        inside = cells[b[0, 0] : b[0, 1], b[1, 0] : b[1, 1], b[2, 0] : b[2, 1]]
        rows.append(np.bincount(inside.ravel(), minlength=int(np.prod(grid))) / np.prod(b[:, 1] - b[:, 0]))
    return np.stack(rows)


def expected_base_boxes(region, grid):
    """Base cells in C order over (gx, gy, gz), written out with loops."""
    cell = [r // g for r, g in zip(region, grid, strict=True)]
    out = []
    for ix in range(grid[0]):
        for iy in range(grid[1]):
            for iz in range(grid[2]):
                out.append([[i * c, (i + 1) * c] for i, c in zip((ix, iy, iz), cell, strict=True)])
    return torch.tensor(out, dtype=torch.float32)


def slice_of(volume, box, scale):
    """The part of a sampling-grid volume (C, *sampling) under a region-coordinate box."""
    s = torch.round(box * torch.as_tensor(scale, dtype=box.dtype)[:, None]).long().tolist()
    return volume[:, s[0][0] : s[0][1], s[1][0] : s[1][1], s[2][0] : s[2][1]]


# ---------------------------------------------------------------- linear ramp: crops are cut where the boxes say

SLOPES = (0.5, -0.25, 1.5)  # intensity per input voxel along x, y, z


def ramp_volume(shape):
    """(1, *shape) float32 volume whose voxel (i, j, k) holds a*(i+.5) + b*(j+.5) + c*(k+.5)."""
    centres = np.meshgrid(*(np.arange(s) + 0.5 for s in shape), indexing="ij")
    return torch.from_numpy(sum(a * u for a, u in zip(SLOPES, centres, strict=True))[None].astype(np.float32))


def ramp_crop_positions(box, roi, raw_shape, region):
    """Input continuous coordinates (voxel centres at i + 0.5) of the roi sample points of a box, per axis.

    A crop of ``roi`` voxels samples its box at the cell centres start + (m + 0.5) * size / roi (region
    units); region coordinate p maps to input coordinate p * raw / region, since the region stands for
    the whole input volume.
    """
    axes = []
    for axis in range(3):
        start, end = float(box[axis, 0]), float(box[axis, 1])
        p = start + (np.arange(roi[axis]) + 0.5) * (end - start) / roi[axis]
        axes.append(p * raw_shape[axis] / region[axis])
    return axes


def ramp_at(ux, uy, uz):
    a, b, c = SLOPES
    return a * ux[:, None, None] + b * uy[None, :, None] + c * uz[None, None, :]


@pytest.mark.parametrize("crop_size", [None, (36, 36, 32)], ids=["slice-path", "general-1.5-cells"])
def test_linear_ramp_crops_sit_at_their_boxes(crop_size):
    """Every crop voxel of a ramp equals the ramp at the input position its box maps to (exact).

    The raw shape (90, 70, 40) is larger than the sampling grid (64, 64, 16) on every axis, so the
    trilinear resampling (align_corners=False) reads source positions inside [0.5, raw - 0.5]: no border
    clamping, and linear interpolation of a linear function is exact. The 1.5-cell crops (24x24x16
    sampling voxels -> 16^3) sample every 1.5, 1.5, 1 sampling voxels, again never within half a voxel of
    the border. So the only error is float32 rounding; values are below ~100, tolerance 2e-3.
    The mean of each crop equals the ramp at the box centre.
    """
    raw = (90, 70, 40)
    transform = make(seed=4, num_crops=8, crop_size=crop_size)
    assert transform.slice_only == (crop_size is None)
    out = transform({"image": ramp_volume(raw)})
    crops, boxes = out["image"], out["voco_boxes"].double()
    assert crops.shape == (N_BASE + 8, 1, 16, 16, 16)
    for crop, box in zip(crops, boxes, strict=True):
        expected = ramp_at(*ramp_crop_positions(box, SMALL["roi_size"], raw, SMALL["region_size"]))
        np.testing.assert_allclose(crop[0].double().numpy(), expected, atol=2e-3)
        centre = box.mean(dim=1).numpy() * np.asarray(raw) / np.asarray(SMALL["region_size"])
        assert float(crop.double().mean()) == pytest.approx(float(np.dot(SLOPES, centre)), abs=2e-3)


@pytest.mark.parametrize(
    "crop_size", [None, (36, 36, 32), (20, 30, 24)], ids=["slice-path", "general-1.5-cells", "general-small"]
)
def test_linear_ramp_with_border_clamping(crop_size):
    """Raw volume smaller than the sampling grid: exact inside, bounded error where resampling clamps.

    Upsampling (40, 30, 12) -> (64, 64, 16) reads source positions below 0.5 / above raw - 0.5 near the
    border, where trilinear interpolation repeats the edge voxel (the coordinate is clamped by at most half
    an input voxel). Crops smaller than one cell (general-small) sample closer than half a sampling voxel to
    the border, where grid_sample's border padding clamps by at most half a sampling voxel
    (raw / sampling input voxels). Hence per axis |error| <= |slope| * (0.5 + 0.5 * raw / sampling).
    Voxels at least two sampling voxels away from the border are unaffected and must match to 2e-3.
    """
    raw = (40, 30, 12)
    region = np.asarray(SMALL["region_size"], dtype=np.float64)
    ratio = np.asarray(raw) / np.asarray(SAMPLING)  # input voxels per sampling voxel
    bound = sum(abs(a) * (0.5 + 0.5 * r) for a, r in zip(SLOPES, ratio, strict=True)) + 2e-3
    transform = make(seed=9, num_crops=12, crop_size=crop_size)
    out = transform({"image": ramp_volume(raw)})
    n_interior = 0
    for crop, box in zip(out["image"], out["voco_boxes"].double(), strict=True):
        ux, uy, uz = ramp_crop_positions(box, SMALL["roi_size"], raw, region)
        err = np.abs(crop[0].double().numpy() - ramp_at(ux, uy, uz))
        assert err.max() <= bound
        # interior: at least 2 sampling voxels (2 * ratio input voxels) from the input border on every axis
        inner = [(u >= 2 * r) & (u <= s - 2 * r) for u, r, s in zip((ux, uy, uz), ratio, raw, strict=True)]
        mask = inner[0][:, None, None] & inner[1][None, :, None] & inner[2][None, None, :]
        n_interior += int(mask.sum())
        assert err[mask].max(initial=0.0) <= 2e-3
    assert n_interior > 1000  # the tight check is not vacuous


# ---------------------------------------------------------------- labels and boxes


@pytest.mark.parametrize(
    ("config", "factor"),
    [
        ({**SMALL, "crop_size": None}, 2),  # boxes on multiples of 1.5 (x, y) and 2 (z)
        ({**SMALL, "crop_size": (36, 30, 20)}, 2),
        ({"region_size": (24, 24, 12), "grid": (3, 3, 2), "roi_size": (8, 8, 4), "crop_size": (10, 6, 9)}, 2),
        ({"region_size": (40, 40, 10), "grid": (5, 5, 1), "roi_size": (4, 4, 4), "crop_size": None}, 2),
        ({"region_size": (32, 32, 16), "grid": (4, 4, 2), "roi_size": (8, 8, 8), "crop_size": (12, 12, 8)}, 1),
    ],
)
def test_labels_match_boxes_by_voxel_count(config, factor):
    """Labels equal a brute-force count over the reported random boxes; base boxes are the grid cells."""
    k = 12
    transform = VoCoCropd("image", num_crops=k, **config)
    transform.set_random_state(seed=2)
    out = transform({"image": torch.zeros(1, *sampling_shape(config))})
    region, grid = config["region_size"], config["grid"]
    n = int(np.prod(grid))
    boxes, labels = out["voco_boxes"], out["label"]
    assert boxes.dtype == torch.float32 and boxes.shape == (n + k, 3, 2)
    assert labels.dtype == torch.float32 and labels.shape == (k, n)
    assert torch.equal(boxes[:n], expected_base_boxes(region, grid))
    np.testing.assert_allclose(labels.numpy(), count_labels(boxes[n:].numpy(), region, grid, factor), atol=1e-6)
    crop = torch.as_tensor(config["crop_size"] or [r / g for r, g in zip(region, grid, strict=True)])
    torch.testing.assert_close(boxes[n:, :, 1] - boxes[n:, :, 0], crop.float().expand(k, 3))


@pytest.mark.parametrize("crop_size", [None, (36, 30, 20)])
def test_random_crops_lie_inside_region_and_reach_its_edges(crop_size):
    """Random boxes stay inside the region, at whole sampling-grid positions, and reach both ends."""
    transform = make(seed=5, num_crops=3000, crop_size=crop_size)
    transform.randomize()
    boxes = transform.random_boxes()
    region = torch.tensor(SMALL["region_size"], dtype=torch.float64)
    assert bool((boxes[..., 0] >= 0).all()) and bool((boxes[..., 1] <= region + 1e-9).all())
    starts = boxes[..., 0] * torch.tensor(SAMPLING, dtype=torch.float64) / region
    torch.testing.assert_close(starts, starts.round())
    assert bool((boxes[..., 0].min(dim=0).values == 0).all())
    extent = torch.tensor(crop_size or (24, 24, 32), dtype=torch.float64)
    last = torch.floor((region - extent) * torch.tensor(SAMPLING) / region) * region / torch.tensor(SAMPLING)
    torch.testing.assert_close(boxes[..., 0].max(dim=0).values, last)


# ---------------------------------------------------------------- sampling-grid input is only sliced


@pytest.mark.parametrize(
    "config",
    [SMALL, {"region_size": (24, 24, 12), "grid": (3, 3, 2), "roi_size": (8, 8, 4)}],
)
def test_sampling_grid_input_is_only_sliced(config):
    """A volume already at grid * roi: every crop (base and random) is exactly the slice under its box."""
    shape = sampling_shape(config)
    volume = torch.rand(2, *shape)
    transform = VoCoCropd("image", num_crops=6, **config)
    transform.set_random_state(seed=1)
    out = transform({"image": volume})
    scale = [s / r for s, r in zip(shape, config["region_size"], strict=True)]
    for crop, box in zip(out["image"], out["voco_boxes"].double(), strict=True):
        assert torch.equal(crop, slice_of(volume, box, scale))


def test_sampling_grid_input_general_crop_size_keeps_base_slices():
    """With a crop size other than one cell, base crops are still exact slices of a sampling-grid volume."""
    volume = torch.rand(1, *SAMPLING)
    out = make(seed=1, crop_size=(36, 36, 32))({"image": volume})
    scale = [s / r for s, r in zip(SAMPLING, SMALL["region_size"], strict=True)]
    for crop, box in zip(out["image"][:N_BASE], out["voco_boxes"][:N_BASE].double(), strict=True):
        assert torch.equal(crop, slice_of(volume, box, scale))


def test_sampling_grid_input_is_only_sliced_inexact_scale():
    """Region (150, 150, 50), grid 3x3x1, roi 7: the default one-cell crops should still be plain slices."""
    config = {"region_size": (150, 150, 50), "grid": (3, 3, 1), "roi_size": (7, 7, 7)}
    shape = sampling_shape(config)
    volume = torch.rand(1, *shape)
    transform = VoCoCropd("image", num_crops=4, **config)
    transform.set_random_state(seed=0)
    out = transform({"image": volume})
    scale = [s / r for s, r in zip(shape, config["region_size"], strict=True)]
    for crop, box in zip(out["image"], out["voco_boxes"].double(), strict=True):
        assert torch.equal(crop, slice_of(volume, box, scale))


# ---------------------------------------------------------------- determinism


def test_same_seed_same_output_different_seed_different_boxes():
    """Same seed: identical crops, labels, boxes; another seed: other random boxes (base boxes unchanged)."""
    volume = torch.rand(1, 50, 40, 20)
    kwargs = {"num_crops": 6, "flip_prob": 0.5, "rot90_prob": 0.5, "shift_intensity_prob": 0.5}
    a = make(seed=7, **kwargs)({"image": volume})
    b = make(seed=7, **kwargs)({"image": volume})
    c = make(seed=8, **kwargs)({"image": volume})
    for key in ("image", "label", "voco_boxes"):
        assert torch.equal(a[key], b[key])
    assert torch.equal(a["voco_boxes"][:N_BASE], c["voco_boxes"][:N_BASE])
    assert not torch.equal(a["voco_boxes"][N_BASE:], c["voco_boxes"][N_BASE:])
    # re-seeding a used transform replays it; calling again without re-seeding draws new boxes
    transform = make(seed=7, **kwargs)
    first = transform({"image": volume})
    second = transform({"image": volume})
    assert not torch.equal(first["voco_boxes"], second["voco_boxes"])
    transform.set_random_state(seed=7)
    assert torch.equal(transform({"image": volume})["image"], a["image"])


# ---------------------------------------------------------------- augmentation


@pytest.fixture(scope="module")
def aug_volume():
    return torch.randn(1, *SAMPLING, generator=torch.Generator().manual_seed(0))


def plain_and_augmented(volume, **aug):
    """Outputs of an un-augmented and an augmented transform with the same seed (same crop positions)."""
    plain = make(seed=3, num_crops=8)({"image": volume})
    augmented = make(seed=3, num_crops=8, **aug)({"image": volume})
    assert torch.equal(plain["voco_boxes"], augmented["voco_boxes"])
    assert torch.equal(plain["label"], augmented["label"])
    return plain["image"], augmented["image"]


def test_flip_prob_one_flips_every_crop_on_all_axes(aug_volume):
    """flip_prob=1: each crop is the un-augmented crop flipped on x, y and z."""
    plain, aug = plain_and_augmented(aug_volume, flip_prob=1.0)
    for p, a in zip(plain, aug, strict=True):
        assert torch.equal(a, torch.flip(p, dims=(1, 2, 3)))


def test_flip_half_gives_one_of_eight_flips(aug_volume):
    """flip_prob=0.5: each crop is one of the 8 axis-flip combinations, and not all the same one."""
    plain, aug = plain_and_augmented(aug_volume, flip_prob=0.5)
    combos = [tuple(d for d, on in zip((1, 2, 3), bits, strict=True) if on) for bits in np.ndindex(2, 2, 2)]
    used = set()
    for p, a in zip(plain, aug, strict=True):
        hits = [dims for dims in combos if torch.equal(a, torch.flip(p, dims=dims) if dims else p)]
        assert len(hits) == 1
        used.add(hits[0])
    assert len(used) > 2


def test_rot90_prob_one_rotates_every_crop(aug_volume):
    """rot90_prob=1: each crop is the un-augmented crop rotated by 90, 180 or 270 degrees in (x, y)."""
    plain, aug = plain_and_augmented(aug_volume, rot90_prob=1.0)
    ks = []
    for p, a in zip(plain, aug, strict=True):
        hits = [k for k in (1, 2, 3) if torch.equal(a, torch.rot90(p, k=k, dims=(1, 2)))]
        assert len(hits) == 1
        assert not torch.equal(a, p)
        ks.append(hits[0])
    assert set(ks) == {1, 2, 3}


def test_shift_intensity_adds_a_bounded_constant_per_crop(aug_volume):
    """shift_intensity_prob=1: crop - un-augmented crop is one constant per crop, within [-offset, offset]."""
    offset = 0.3
    plain, aug = plain_and_augmented(aug_volume, shift_intensity_prob=1.0, shift_intensity_offset=offset)
    diffs = aug - plain
    per_crop = diffs.flatten(1)
    shifts = per_crop.mean(dim=1)
    assert float((per_crop.max(dim=1).values - per_crop.min(dim=1).values).max()) < 1e-5
    assert bool((shifts.abs() <= offset + 1e-6).all())
    assert bool((shifts.abs() > 0).all())
    assert len(set(np.round(shifts.numpy(), 6))) == len(shifts)  # drawn independently per crop
    # U(-offset, offset): of 24 draws, some fall beyond offset / 2 on each side (fails with prob. ~1e-7)
    assert float(shifts.max()) > offset / 2 and float(shifts.min()) < -offset / 2


def test_zero_probabilities_change_nothing(aug_volume):
    """All probabilities 0 (with a non-zero offset): crops are the plain slices of the input."""
    transform = make(
        seed=3, num_crops=8, flip_prob=0.0, rot90_prob=0.0, shift_intensity_prob=0.0, shift_intensity_offset=0.5
    )
    out = transform({"image": aug_volume})
    scale = [s / r for s, r in zip(SAMPLING, SMALL["region_size"], strict=True)]
    for crop, box in zip(out["image"], out["voco_boxes"].double(), strict=True):
        assert torch.equal(crop, slice_of(aug_volume, box, scale))


def test_augmentation_is_shared_between_keys(aug_volume):
    """Two keys holding the same volume are cropped at the same boxes and should be augmented identically."""
    out = make(keys=["image", "twin"], seed=3, num_crops=8, flip_prob=0.5, rot90_prob=0.5)(
        {"image": aug_volume, "twin": aug_volume.clone()}
    )
    assert torch.equal(out["image"], out["twin"])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"region_size": (96, 96, 30), "grid": (4, 4, 4)}, "not divisible"),
        ({"region_size": (90, 96, 32), "grid": (4, 4, 1)}, "not divisible"),
        ({"crop_size": (97, 24, 32)}, "larger than region_size"),
        ({"crop_size": (24, 24, 33)}, "larger than region_size"),
        ({"num_crops": 0}, "num_crops must be at least 1"),
        ({"num_crops": -2}, "num_crops must be at least 1"),
        ({"flip_prob": -0.1}, r"flip_prob must lie in \[0, 1\]"),
        ({"flip_prob": 1.5}, r"flip_prob must lie in \[0, 1\]"),
        ({"rot90_prob": 1.01}, r"rot90_prob must lie in \[0, 1\]"),
        ({"shift_intensity_prob": -1.0}, r"shift_intensity_prob must lie in \[0, 1\]"),
        ({"roi_size": (16, 8, 16), "rot90_prob": 0.5}, "rot90 needs equal roi_size"),
        ({"crop_size": (0, 24, 32)}, "crop_size must be 3 positive"),
        ({"roi_size": (16, 16)}, "roi_size must be 3 positive integers"),
    ],
)
def test_constructor_errors(kwargs, match):
    """Invalid configurations are ValueErrors naming the problem."""
    with pytest.raises(ValueError, match=match):
        VoCoCropd("image", **{**SMALL, **kwargs})


def test_unequal_roi_allowed_without_rot90():
    """Unequal roi on x and y is only an error when rot90 is on."""
    VoCoCropd("image", **{**SMALL, "roi_size": (16, 8, 16)})


@pytest.mark.parametrize("shape", [(20, 20, 8), (1, 1, 20, 20, 8), (20, 20)])
def test_input_not_channel_first_3d_names_key(shape):
    """A volume without a channel axis (or with a batch axis) is rejected, naming the key."""
    with pytest.raises(ValueError, match=r"'ct'.*channel-first 3D volume.*got shape"):
        make(keys="ct")({"ct": torch.zeros(shape)})


def test_input_not_channel_first_3d_names_file():
    """For a MetaTensor, the error names the file it came from."""
    volume = MetaTensor(torch.zeros(20, 20, 8), meta={"filename_or_obj": "/data/case_017.nii.gz"})
    with pytest.raises(ValueError, match=r"'image' of /data/case_017\.nii\.gz must be a channel-first 3D"):
        make()({"image": volume})


# ---------------------------------------------------------------- input types and channels


def test_numpy_torch_metatensor_inputs_agree():
    """numpy, torch and MetaTensor inputs of the same data give identical crops, labels and boxes."""
    data = np.random.default_rng(0).normal(size=(1, 50, 40, 20)).astype(np.float32)
    outs = [
        make(seed=6)({"image": value})
        for value in (data, torch.from_numpy(data.copy()), MetaTensor(torch.from_numpy(data.copy())))
    ]
    for out in outs:
        assert isinstance(out["image"], torch.Tensor)
        assert out["image"].shape == (N_BASE + 4, 1, 16, 16, 16)
        assert out["image"].dtype == torch.float32
    for key in ("image", "label", "voco_boxes"):
        assert torch.equal(outs[0][key], outs[1][key])
        assert torch.equal(outs[0][key], outs[2][key])


def test_numpy_input_with_negative_strides():
    """A flipped numpy view is valid numpy input and should crop like its contiguous copy."""
    data = np.random.default_rng(0).normal(size=(1, 50, 40, 20)).astype(np.float32)[:, ::-1]
    out = make(seed=6)({"image": data})
    assert torch.equal(out["image"], make(seed=6)({"image": data.copy()})["image"])


@pytest.mark.parametrize("shape", [(1, 50, 40, 20), (1, *SAMPLING)], ids=["resampled", "sliced"])
def test_int16_input_gives_float32(shape):
    """int16 input is converted: float32 output equal to that of the same volume given as float32."""
    data = np.random.default_rng(1).integers(-1000, 2000, size=shape).astype(np.int16)
    out = make(seed=2)({"image": data})
    ref = make(seed=2)({"image": data.astype(np.float32)})
    assert out["image"].dtype == torch.float32
    assert torch.equal(out["image"], ref["image"])


@pytest.mark.parametrize("shape", [(50, 40, 20), SAMPLING], ids=["resampled", "sliced"])
def test_multichannel_keeps_channels(shape):
    """C=2: each output channel equals the single-channel result of that channel (same seed)."""
    gen = torch.Generator().manual_seed(0)
    volume = torch.randn(2, *shape, generator=gen)
    out = make(seed=4, num_crops=5)({"image": volume})["image"]
    assert out.shape == (N_BASE + 5, 2, 16, 16, 16)
    for c in range(2):
        single = make(seed=4, num_crops=5)({"image": volume[c : c + 1]})["image"]
        torch.testing.assert_close(out[:, c : c + 1], single, atol=1e-6, rtol=0)
    assert not torch.allclose(out[:, 0], out[:, 1])


# ---------------------------------------------------------------- pipelines


def test_compose_and_dataloader_batches():
    """Inside Compose, Dataset and a batch-2 DataLoader: collated shapes and per-sample label rows sum to 1."""
    k = 3
    pipeline = Compose([VoCoCropd("image", num_crops=k, **SMALL)])
    pipeline.set_random_state(seed=0)
    items = [{"image": torch.rand(1, 40 + i, 36, 18)} for i in range(4)]
    loader = DataLoader(Dataset(items, transform=pipeline), batch_size=2, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["image"].shape == (2, N_BASE + k, 1, 16, 16, 16)
        assert batch["label"].shape == (2, k, N_BASE)
        assert batch["voco_boxes"].shape == (2, N_BASE + k, 3, 2)
        assert batch["label"].dtype == torch.float32
        torch.testing.assert_close(batch["label"].sum(dim=-1), torch.ones(2, k))
    # Compose.set_random_state seeds the crop transform: two pipelines with the same seed agree
    # (not checked through the DataLoader, which re-seeds the dataset's transforms itself)
    one, two = (Compose([VoCoCropd("image", num_crops=k, **SMALL)]) for _ in range(2))
    one.set_random_state(seed=0)
    two.set_random_state(seed=0)
    a, b = one(items[0]), two(items[0])
    assert torch.equal(a["voco_boxes"], b["voco_boxes"]) and torch.equal(a["image"], b["image"])


def test_negative_shift_offset_is_rejected():
    with pytest.raises(ValueError, match="shift_intensity_offset must be non-negative"):
        VoCoCropd("image", region_size=(32, 32, 16), grid=(2, 2, 1), roi_size=(8, 8, 8), shift_intensity_offset=-0.1)


# ---------------------------------------------------------------- 2D images (radiographs)

SMALL_2D = {"region_size": (96, 64), "grid": (4, 4), "roi_size": (16, 12)}  # sampling grid (64, 48)


def bilinear(image, u, v):
    """Reference sampler: ``image`` (X, Y) at continuous positions u (along X) and v (along Y), pixel centres at
    i + 0.5; positions beyond the outer pixel centres take the edge value. Loops over the points, numpy only."""
    out = np.empty((len(u), len(v)))
    for a, x in enumerate(u):
        for b, y in enumerate(v):
            fx = min(max(x - 0.5, 0.0), image.shape[0] - 1.0)
            fy = min(max(y - 0.5, 0.0), image.shape[1] - 1.0)
            x0, y0 = int(np.floor(fx)), int(np.floor(fy))
            x1, y1 = min(x0 + 1, image.shape[0] - 1), min(y0 + 1, image.shape[1] - 1)
            wx, wy = fx - x0, fy - y0
            out[a, b] = (
                (1 - wx) * (1 - wy) * image[x0, y0]
                + wx * (1 - wy) * image[x1, y0]
                + (1 - wx) * wy * image[x0, y1]
                + wx * wy * image[x1, y1]
            )
    return out


def reference_crop_2d(raw, box, config):
    """One crop computed on its own: the raw image resized to the sampling grid (reference sampler), then the
    crop's box sampled at ``roi_size`` points (reference sampler again; a box on whole sampling pixels of
    exactly ``roi_size`` pixels reads them as they are)."""
    sampling = [g * r for g, r in zip(config["grid"], config["roi_size"], strict=True)]
    centres = [(np.arange(s) + 0.5) * n / s for s, n in zip(sampling, raw.shape, strict=True)]
    grid_image = bilinear(raw, *centres)
    points = []
    for axis in range(2):
        scale = sampling[axis] / config["region_size"][axis]
        start, end = float(box[axis, 0]) * scale, float(box[axis, 1]) * scale
        roi = config["roi_size"][axis]
        points.append(start + (np.arange(roi) + 0.5) * (end - start) / roi)
    return bilinear(grid_image, *points)


@pytest.mark.parametrize("crop_size", [None, (30, 20), (20, 13)], ids=["one-cell", "larger", "smaller"])
@pytest.mark.parametrize("raw_shape", [(83, 70), (40, 30)], ids=["downsampled", "upsampled"])
def test_2d_crops_match_a_per_crop_reference(crop_size, raw_shape):
    """Every base and random crop of a random 2D image equals the crop computed on its own by a reference
    bilinear sampler, whether the image is shrunk or enlarged and whatever the random-crop size."""
    raw = np.random.default_rng(3).random(raw_shape)
    transform = VoCoCropd("image", num_crops=6, crop_size=crop_size, **SMALL_2D)
    transform.set_random_state(seed=8)
    out = transform({"image": torch.from_numpy(raw[None].astype(np.float32))})
    crops, boxes = out["image"], out["voco_boxes"].double()
    assert crops.shape == (16 + 6, 1, 16, 12) and boxes.shape == (22, 2, 2)
    for crop, box in zip(crops, boxes, strict=True):
        np.testing.assert_allclose(crop[0].double().numpy(), reference_crop_2d(raw, box, SMALL_2D), atol=2e-5)


@pytest.mark.parametrize("crop_size", [None, (30, 20)])
def test_2d_labels_are_area_fractions_of_the_reported_boxes(crop_size):
    """Labels against a per-pixel count over the boxes, on a grid six times finer than the region (a sampling
    pixel is 1.5 region units along x and 4/3 along y, so every box lies on whole fine pixels)."""
    k = 40
    transform = VoCoCropd("image", num_crops=k, crop_size=crop_size, **SMALL_2D)
    transform.set_random_state(seed=1)
    out = transform({"image": torch.zeros(1, 64, 48)})
    region, grid = np.asarray(SMALL_2D["region_size"]), np.asarray(SMALL_2D["grid"])
    fine = region * 6
    cell = fine // grid
    ix, iy = np.indices(tuple(fine))
    owner = (ix // cell[0]) * grid[1] + iy // cell[1]
    boxes = out["voco_boxes"][16:].double().numpy() * 6
    assert np.allclose(boxes, np.rint(boxes), atol=1e-3)
    expected = []
    for b in np.rint(boxes).astype(int):
        inside = owner[b[0, 0] : b[0, 1], b[1, 0] : b[1, 1]]
        expected.append(np.bincount(inside.ravel(), minlength=16) / inside.size)
    np.testing.assert_allclose(out["label"].numpy(), np.stack(expected), atol=1e-6)
    assert out["label"].shape == (k, 16)


def test_2d_uint8_and_augmentation():
    """uint8 images stay uint8 with their offsets in voco_shift; a flip on both axes and rot90 act on 2D crops."""
    config = {**SMALL_2D, "roi_size": (16, 16), "region_size": (64, 64)}  # sampling grid (64, 64)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 64, 64), dtype=np.uint8))
    plain = VoCoCropd("image", num_crops=3, **config)
    flipped = VoCoCropd("image", num_crops=3, flip_prob=1.0, shift_intensity_prob=1.0, **config)
    for t in (plain, flipped):
        t.set_random_state(seed=2)
    a, b = plain({"image": image}), flipped({"image": image})
    assert a["image"].dtype == b["image"].dtype == torch.uint8
    assert torch.equal(a["voco_boxes"], b["voco_boxes"])
    assert torch.equal(b["image"], torch.flip(a["image"], dims=(2, 3)))
    assert b["voco_shift"].shape == (19,) and bool((b["voco_shift"].abs() <= 0.1).all())
    turned = VoCoCropd("image", num_crops=3, rot90_prob=1.0, **config)
    turned.set_random_state(seed=2)
    c = turned({"image": image})["image"]
    for crop, base in zip(c, a["image"], strict=True):
        assert any(torch.equal(crop, torch.rot90(base, t, dims=(1, 2))) for t in (1, 2, 3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grid": (4, 4, 1)}, "grid must be 2 positive integers"),
        ({"roi_size": (16, 12, 8)}, "roi_size must be 2 positive integers"),
        ({"crop_size": (30, 20, 10)}, "crop_size must be 2 positive numbers"),
        ({"region_size": (96,)}, "region_size must be 2 or 3 positive integers"),
    ],
)
def test_2d_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VoCoCropd("image", **{**SMALL_2D, **kwargs})


def test_2d_transform_refuses_a_volume_naming_the_file():
    volume = MetaTensor(torch.zeros(1, 20, 20, 8), meta={"filename_or_obj": "/data/xray_007.png"})
    with pytest.raises(ValueError, match=r"'image' of /data/xray_007\.png must be a channel-first 2D image"):
        VoCoCropd("image", **SMALL_2D)({"image": volume})
