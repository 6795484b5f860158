"""Tests of voco_components.data.dataset: a step-indexed sample stream and its resumable distributed sampler.

The volumes are tiny in-memory ramps whose entry carries its own id (``vid``), so every sample says which
volume it came from; expectations (volume coverage per pass, substitutions of bad volumes, rank partitions)
are computed in the tests from the datalist alone.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import MapTransform

from conftest import exception_chain, write_ct
from voco_components.data.dataset import ResumableDistributedSampler, VoCoStepDataset, sample_seed
from voco_components.transforms.crops import VoCoCropd
from voco_components.transforms.pipelines import ct_preprocessing
from voco_components.utils import VolumeError

SHAPE = (1, 16, 16, 8)  # already the sampling grid of CROP below: (2, 2, 1) cells of 8^3
CROP = {"region_size": (16, 16, 8), "grid": (2, 2, 1), "roi_size": (8, 8, 8), "num_crops": 2}
N_VOLUMES = 5


class BoomError(Exception):
    """An error that is not about a volume."""


class RampVolumed(MapTransform):
    """``{"image": v}`` -> a (1, 16, 16, 8) float ramp ``v * offset + voxel index`` (0 to 2047); other keys pass.

    Entries with ``bad == "volume"`` raise :class:`VolumeError` naming ``name``; ``bad == "other"`` raises
    :class:`BoomError`.
    """

    def __init__(self, keys="image", offset: float = 10000.0) -> None:
        super().__init__(keys)
        self.offset = offset

    def __call__(self, data):
        d = dict(data)
        if d.get("bad") == "volume":
            raise VolumeError(f"{d['name']}: truncated file")
        if d.get("bad") == "other":
            raise BoomError(f"{d['name']}: not a volume problem")
        ramp = torch.arange(int(np.prod(SHAPE)), dtype=torch.float32).reshape(SHAPE)
        d["image"] = float(d["image"]) * self.offset + ramp
        return d


def datalist(n=N_VOLUMES, bad=None):
    bad = bad or {}
    entries = [{"image": i, "vid": i, "name": f"volume_{i}.nii.gz"} for i in range(n)]
    for i, kind in bad.items():
        entries[i]["bad"] = kind
    return entries


def make_dataset(data=None, num_samples=4 * N_VOLUMES, seed=0, **kwargs):
    crops = VoCoCropd("image", flip_prob=0.5, **CROP)
    return VoCoStepDataset(
        data if data is not None else datalist(), RampVolumed(), crops, num_samples=num_samples, seed=seed, **kwargs
    )


def assert_same_sample(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert np.array_equal(a[key], b[key]), key


def samples_differ(a, b):
    return not (torch.equal(a["image"], b["image"]) and torch.equal(a["voco_boxes"], b["voco_boxes"]))


# ---------------------------------------------------------------------------------------------------- seeds


def test_sample_seed_is_deterministic_and_distinct():
    assert sample_seed(0, 5) == sample_seed(0, 5)
    seeds = {sample_seed(s, i) for s in range(4) for i in range(50)}
    assert len(seeds) == 200
    assert all(0 <= s < 2**32 for s in seeds)
    assert sample_seed(1, 0) != sample_seed(0, 1)


# ---------------------------------------------------------------------------------------- the sample stream


def test_a_sample_is_a_function_of_seed_and_index_only():
    first, second = make_dataset(), make_dataset()
    n = len(first)
    assert n == 4 * N_VOLUMES
    forward = [first[i] for i in range(n)]
    backward = {i: second[i] for i in reversed(range(n))}
    shuffled = {i: second[i] for i in np.random.default_rng(3).permutation(n).tolist()}
    for i in range(n):
        assert_same_sample(forward[i], backward[i])
        assert_same_sample(forward[i], shuffled[i])
        assert forward[i]["image"].shape == (6, 1, 8, 8, 8)  # 4 base + 2 random crops
        assert forward[i]["label"].shape == (2, 4)
    # the seed matters: the random crops differ between samples and between seeds
    assert any(samples_differ(forward[0], forward[i]) for i in range(1, n))
    other_seed = make_dataset(seed=1)
    assert any(samples_differ(forward[i], other_seed[i]) for i in range(n))


def test_the_crops_come_from_the_volume_of_the_entry():
    dataset = make_dataset()
    for i in range(N_VOLUMES):
        sample = dataset[i]
        # every crop voxel is a ramp value of volume vid: in [vid * 10000, vid * 10000 + 2048)
        low = sample["vid"] * 10000.0
        assert bool((sample["image"] >= low).all()) and bool((sample["image"] < low + 2048).all())


def test_each_pass_visits_every_volume_once_in_a_new_order():
    dataset = make_dataset(num_samples=6 * N_VOLUMES)
    vids = [dataset[i]["vid"] for i in range(len(dataset))]
    passes = [vids[p * N_VOLUMES : (p + 1) * N_VOLUMES] for p in range(6)]
    for order in passes:
        assert sorted(order) == list(range(N_VOLUMES))
    # 6 passes over 5 volumes: with 120 possible orders, a fresh shuffle per pass repeats rarely and keeps
    # the datalist order only by chance
    assert len({tuple(order) for order in passes}) >= 5
    assert sum(order == list(range(N_VOLUMES)) for order in passes) <= 1
    assert passes[0] == dataset.pass_order(0) and passes[3] == dataset.pass_order(3 * N_VOLUMES + 2)
    other_seed = make_dataset(seed=1, num_samples=6 * N_VOLUMES)
    assert [other_seed.pass_order(p * N_VOLUMES) for p in range(6)] != passes

    in_order = make_dataset(num_samples=2 * N_VOLUMES + 2, shuffle=False)
    assert [in_order[i]["vid"] for i in range(len(in_order))] == [*range(N_VOLUMES)] * 2 + [0, 1]


def test_a_partial_last_pass_follows_its_own_order():
    dataset = make_dataset(num_samples=N_VOLUMES + 3)
    tail = [dataset[i]["vid"] for i in range(N_VOLUMES, N_VOLUMES + 3)]
    assert len(set(tail)) == 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_data_loader_workers_do_not_change_the_stream(num_workers):
    dataset = make_dataset(num_samples=12)
    expected = [dataset[i] for i in range(12)]
    loader = DataLoader(make_dataset(num_samples=12), batch_size=3, shuffle=False, num_workers=num_workers)
    batches = list(loader)
    assert len(batches) == 4
    for b, batch in enumerate(batches):
        for j in range(3):
            sample = expected[3 * b + j]
            assert torch.equal(batch["image"][j], sample["image"])
            assert torch.equal(batch["label"][j], sample["label"])
            assert torch.equal(batch["voco_boxes"][j], sample["voco_boxes"])
            assert int(batch["vid"][j]) == sample["vid"]


def test_indices_outside_the_stream_raise():
    dataset = make_dataset(num_samples=7)
    dataset[0]
    dataset[6]
    for index in (-1, 7, 100):
        with pytest.raises(IndexError):
            dataset[index]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="at least one volume"):
        make_dataset(data=[])
    with pytest.raises(ValueError, match="on_bad_volume"):
        make_dataset(on_bad_volume="ignore")


# ------------------------------------------------------------------------------------------------ bad volumes


def expected_volume(order, position, bad):
    """The first good volume of the pass at or after ``position``, wrapping around."""
    rotated = order[position:] + order[:position]
    return next(v for v in rotated if v not in bad)


def test_skip_substitutes_the_next_volume_of_the_pass(caplog):
    dataset = make_dataset(data=datalist(bad={2: "volume"}), on_bad_volume="skip")
    substitutions = 0
    with caplog.at_level(logging.WARNING, logger="voco_components.data.dataset"):
        for i in range(len(dataset)):
            order = dataset.pass_order(i)
            position = i % N_VOLUMES
            vid = dataset[i]["vid"]
            assert vid == expected_volume(order, position, {2})
            if order[position] == 2:
                substitutions += 1
                assert vid == order[(position + 1) % N_VOLUMES]
    assert substitutions == 4  # once per pass
    assert dataset.bad_volumes == {2}
    warnings = [r.getMessage() for r in caplog.records if r.name == "voco_components.data.dataset"]
    assert len(warnings) == 1 and "volume_2.nii.gz" in warnings[0]


def test_skip_leaves_the_samples_of_good_volumes_unchanged():
    """A good sample keeps its seed: index i is the same whether or not other indices hit the bad volume."""
    skipping = make_dataset(data=datalist(bad={2: "volume"}), on_bad_volume="skip")
    clean = make_dataset()
    for i in range(len(clean)):
        if clean.pass_order(i)[i % N_VOLUMES] != 2:
            assert_same_sample(skipping[i], clean[i])


def test_raise_names_the_bad_volume():
    dataset = make_dataset(data=datalist(bad={2: "volume"}))
    index = dataset.pass_order(0).index(2)
    if index > 0:
        dataset[index - 1]  # a good volume is fine
    with pytest.raises(VolumeError, match="volume_2.nii.gz: truncated file"):
        dataset[index]
    assert dataset.bad_volumes == set()


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_other_errors_propagate_unchanged(mode):
    data = datalist(bad={2: "other"})
    transform = RampVolumed()
    with pytest.raises(Exception) as plain:  # what MONAI's own Dataset raises for that entry
        Dataset(data, transform)[2]
    crops = VoCoCropd("image", **CROP)
    dataset = VoCoStepDataset(data, transform, crops, num_samples=N_VOLUMES, on_bad_volume=mode)
    index = dataset.pass_order(0).index(2)
    with pytest.raises(Exception) as excinfo:
        dataset[index]
    assert type(excinfo.value) is type(plain.value) and str(excinfo.value) == str(plain.value)
    assert not isinstance(excinfo.value, VolumeError)
    assert any(isinstance(e, BoomError) and "volume_2.nii.gz" in str(e) for e in exception_chain(excinfo.value))
    assert dataset.bad_volumes == set()


def test_skip_with_only_bad_volumes_raises():
    dataset = make_dataset(data=datalist(n=3, bad={0: "volume", 1: "volume", 2: "volume"}), on_bad_volume="skip")
    with pytest.raises(VolumeError, match="all 3 volumes"):
        dataset[0]
    assert dataset.bad_volumes == {0, 1, 2}


# ------------------------------------------------------------------------------------------------- disk cache


def test_cache_is_keyed_by_the_preprocessing(tmp_path):
    data = [{"image": str(write_ct(tmp_path / f"ct{i}.nii.gz", shape=(32, 32, 8), seed=i))} for i in range(2)]
    cache = tmp_path / "cache"

    def stream(spacing, cache_dir):
        crops = VoCoCropd("image", **CROP)
        return VoCoStepDataset(data, ct_preprocessing(spacing=spacing), crops, num_samples=2, cache_dir=cache_dir)

    def cached_files():
        return {p.name for p in cache.iterdir()}

    coarse = [stream((3.0, 3.0, 5.0), cache)[i] for i in range(2)]
    files_coarse = cached_files()
    assert len(files_coarse) == 2
    uncached = [stream((3.0, 3.0, 5.0), None)[i] for i in range(2)]
    for a, b in zip(coarse, uncached, strict=True):
        assert_same_sample(a, b)

    again = [stream((3.0, 3.0, 5.0), cache)[i] for i in range(2)]  # same preprocessing: the cache is reused
    assert cached_files() == files_coarse
    for a, b in zip(coarse, again, strict=True):
        assert_same_sample(a, b)

    fine = [stream((3.0, 3.0, 2.5), cache)[i] for i in range(2)]  # changed spacing: new cache files
    files_all = cached_files()
    assert len(files_all) == 4 and files_coarse < files_all
    fine_uncached = [stream((3.0, 3.0, 2.5), None)[i] for i in range(2)]
    for a, b, c in zip(fine, fine_uncached, coarse, strict=True):
        assert_same_sample(a, b)
        assert not torch.equal(a["image"], c["image"])


def test_cache_is_keyed_by_a_transform_parameter(tmp_path):
    data = datalist(n=3)[1:]  # volumes 1 and 2

    def first_values(offset):
        crops = VoCoCropd("image", **CROP)
        dataset = VoCoStepDataset(
            data, RampVolumed(offset=offset), crops, num_samples=2, shuffle=False, cache_dir=tmp_path
        )
        return [float(dataset[i]["image"].min()) for i in range(2)]

    assert first_values(10000.0) == [10000.0, 20000.0]
    assert len(list(tmp_path.iterdir())) == 2
    assert first_values(-10000.0) == [-10000.0, -20000.0]  # not the stale +10000 volumes
    assert len(list(tmp_path.iterdir())) == 4
    assert first_values(10000.0) == [10000.0, 20000.0]
    assert len(list(tmp_path.iterdir())) == 4


# -------------------------------------------------------------------------------------------------- sampler


def test_resumable_sampler_partitions_each_step_across_ranks():
    dataset = list(range(24))
    samplers = [ResumableDistributedSampler(dataset, batch_size=2, num_replicas=3, rank=r) for r in range(3)]
    per_rank = [list(s) for s in samplers]
    assert [len(s) for s in samplers] == [8, 8, 8]
    assert per_rank[0] == [0, 3, 6, 9, 12, 15, 18, 21]
    assert sorted(i for indices in per_rank for i in indices) == list(range(24))
    for step in range(4):
        together = [i for indices in per_rank for i in indices[2 * step : 2 * step + 2]]
        assert sorted(together) == list(range(6 * step, 6 * step + 6))

    for sampler, indices in zip(samplers, per_rank, strict=True):
        sampler.set_start_step(2)
        assert list(sampler) == indices[4:]
        assert len(sampler) == 4
        sampler.set_start_step(0)
        assert list(sampler) == indices and len(sampler) == 8
        sampler.set_start_step(5)  # past the end
        assert list(sampler) == [] and len(sampler) == 0


@pytest.mark.parametrize("length", [24, 25, 29])
def test_resumable_sampler_follows_distributed_sampler_in_constant_memory(length):
    """Reference: DistributedSampler(shuffle=False, drop_last=True)'s list, minus the steps already done;
    a stream of 10^12 samples iterates at once (no list of its indices)."""
    from torch.utils.data import DistributedSampler

    for world in (1, 2, 3):
        for rank in range(world):
            reference = list(DistributedSampler(range(length), world, rank, shuffle=False, drop_last=True))
            sampler = ResumableDistributedSampler(range(length), batch_size=2, num_replicas=world, rank=rank)
            for step in (0, 1, 3):
                sampler.set_start_step(step)
                assert list(sampler) == reference[2 * step :] and len(sampler) == len(reference[2 * step :])
    huge = ResumableDistributedSampler(range(10**12), batch_size=4, num_replicas=8, rank=5)
    huge.set_start_step(10**9)
    assert next(iter(huge)) == 5 + 4 * 8 * 10**9


def test_resumable_sampler_in_a_loader_resumes_at_the_step():
    stream = list(range(24))
    sampler = ResumableDistributedSampler(stream, batch_size=2, num_replicas=3, rank=1)
    sampler.set_start_step(3)
    batches = [b.tolist() for b in DataLoader(stream, batch_size=2, sampler=sampler, num_workers=0)]
    assert batches == [[19, 22]]


def test_cache_key_follows_the_files_not_only_their_paths(tmp_path):
    """A label replaced under the same path gets a new cache key; an unchanged entry keeps its key."""
    import os

    from voco_components.data.dataset import hash_entry_and_files

    image, label = tmp_path / "a.nii.gz", tmp_path / "a_label.nii.gz"
    image.write_bytes(b"image")
    label.write_bytes(b"label")
    entry = {"image": str(image), "label": str(label), "fold": 1}
    first = hash_entry_and_files(entry)
    assert hash_entry_and_files(dict(entry)) == first
    label.write_bytes(b"a corrected label")
    os.utime(label, ns=(1, 1))
    assert hash_entry_and_files(entry) != first
    assert hash_entry_and_files({**entry, "fold": 2}) != hash_entry_and_files(entry)
