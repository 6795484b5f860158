"""The prepared volume cache: quantisation, files, manifest, prepare (kill, resume, parts) and the training streams."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import CACHE_SETTINGS as SETTINGS
from conftest import PRETRAIN_TINY, bundle_workflow, run_bundle_cli, write_ct
from voco_components.apps.demo import DEMO_DATALIST
from voco_components.data.dataset import PreparedVolumes, ResumableDistributedSampler, VoCoStepDataset
from voco_components.data.prepare import Preparer
from voco_components.data.volume_cache import (
    CacheMismatchError,
    LoadCachedVolumed,
    VolumeCache,
    entry_text,
    load_manifest,
    open_cache,
    part_of,
    quantise,
    read_volume,
    write_volume,
)
from voco_components.engines.workflow import VoCoPrepareBatch
from voco_components.transforms.crops import VoCoCropd
from voco_components.transforms.pipelines import ct_preprocessing
from voco_components.utils import VolumeError

HALF_STEP = 1 / 510


def small_cts(folder: Path, count: int) -> list[dict[str, str]]:
    """``count`` small CT-like NIfTI files and their datalist entries."""
    return [{"image": str(write_ct(folder / f"ct{i}.nii.gz", shape=(40, 40, 12), seed=i))} for i in range(count)]


def crops(**kwargs) -> VoCoCropd:
    """VoCo crops on the 32×32×16 grid of ``SETTINGS`` (2×2×1 cells of 16³), seeded."""
    transform = VoCoCropd(keys="image", region_size=(64, 64, 32), grid=(2, 2, 1), roi_size=(16, 16, 16), **kwargs)
    return transform.set_random_state(seed=3)


# --------------------------------------------------------------------------------------- format and values


def test_uint8_round_trip_is_within_half_a_step():
    values = np.concatenate([np.random.default_rng(0).random(100_000), [0.0, 1.0, 0.5, 1 / 510, 1 - 1 / 510]])
    q = quantise(values.astype(np.float32), "uint8")
    assert q.dtype == np.uint8
    reference = np.round(values.astype(np.float32).astype(np.float64) * 255)  # round(x * 255)
    differ = q != reference
    ties = np.abs(np.modf(values.astype(np.float32) * 255.0)[0] - 0.5) < 1e-4  # float32 may round a tie the other way
    assert not (differ & ~ties).any() and np.abs(q - reference).max() <= 1
    assert np.abs(q / 255.0 - values).max() <= HALF_STEP + 1e-7
    half = quantise(values, "float16")
    assert half.dtype == np.float16 and np.abs(half.astype(np.float64) - values).max() <= 2**-12


def test_volume_file_round_trip_and_damage_is_named(tmp_path):
    array = quantise(np.random.default_rng(1).random((1, 20, 18, 6)), "uint8")
    path = tmp_path / "ab" / "abc.vol"
    size, checksum = write_volume(path, array, {"source": "/data/ct.nii.gz", "affine": np.diag([2, 3, 4, 1]).tolist()})
    assert size == path.stat().st_size and checksum == hashlib.sha1(path.read_bytes()).hexdigest()
    assert not list(path.parent.glob(".*tmp"))
    back, header = read_volume(path, checksum)
    np.testing.assert_array_equal(back, array)
    assert header["dtype"] == "uint8" and header["shape"] == [1, 20, 18, 6]

    loaded = LoadCachedVolumed("image")({"image": str(path), "image_checksum": checksum})["image"]
    assert loaded.dtype == torch.uint8 and torch.equal(loaded.as_tensor(), torch.from_numpy(array))
    torch.testing.assert_close(loaded.affine, torch.diag(torch.tensor([2.0, 3, 4, 1], dtype=torch.float64)))
    assert loaded.meta["filename_or_obj"] == "/data/ct.nii.gz"

    with pytest.raises(VolumeError, match="checksum") as info:
        read_volume(path, "0" * 40)
    assert str(path) in str(info.value)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(VolumeError, match="damaged") as info:
        read_volume(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("crop_size", [None, (24, 24, 24)], ids=["sliced", "resampled"])
def test_crops_of_the_uint8_cache_match_the_float_volume(crop_size):
    """Same seed, same augmentation: uint8 crops made float on the 'device' equal the float crops within 1/510
    (1/255 when random crops are resampled and rounded back), boxes and labels identical."""
    volume = torch.rand(1, 32, 32, 16, generator=torch.Generator().manual_seed(0))
    q = torch.from_numpy(quantise(volume.numpy(), "uint8"))
    settings = {"num_crops": 6, "crop_size": crop_size, "flip_prob": 0.5, "rot90_prob": 0.5}
    settings |= {"shift_intensity_prob": 0.5, "shift_intensity_offset": 0.1}
    reference = crops(**settings)({"image": volume})
    cached = crops(**settings)({"image": q})
    assert cached["image"].dtype == torch.uint8
    assert torch.equal(cached["label"], reference["label"]) and torch.equal(
        cached["voco_boxes"], reference["voco_boxes"]
    )
    shifts = cached["voco_shift"]
    assert shifts.shape == (4 + 6,) and (shifts != 0).any()  # some crops are shifted, so the test covers it

    batch = {key: value[None] for key, value in cached.items()}  # a collated batch of one
    inputs, labels = VoCoPrepareBatch()(batch, device="cpu")
    assert inputs.dtype == torch.float32 and inputs.shape == (10, 1, 16, 16, 16)
    by_hand = cached["image"].float() / 255 + shifts[:, None, None, None, None]
    torch.testing.assert_close(inputs, by_hand)
    tolerance = HALF_STEP if crop_size is None else 2 * HALF_STEP
    assert (inputs - reference["image"]).abs().max() <= tolerance + 1e-6


def test_float16_cache_gives_float32_crops():
    volume = torch.rand(1, 32, 32, 16, generator=torch.Generator().manual_seed(1))
    half = torch.from_numpy(quantise(volume.numpy(), "float16"))
    out = crops(num_crops=3, shift_intensity_prob=1.0)({"image": half})["image"]
    ref = crops(num_crops=3, shift_intensity_prob=1.0)({"image": half.float()})["image"]
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_parts_come_from_a_stable_hash_of_the_entry():
    entries = [{"image": f"/data/ct{i}.nii.gz", "site": i % 3} for i in range(200)]
    for entry in entries:  # reference: sha1 of the sorted, compact JSON
        digest = hashlib.sha1(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        assert part_of(entry, 7) == int(digest[:15], 16) % 7
    counts = np.bincount([part_of(e, 4) for e in entries], minlength=4)
    assert counts.min() > 20  # spread over the parts


# -------------------------------------------------------------------------------------------------- prepare


KILL_SCRIPT = """
import json, os, signal, sys
from voco_components.data.prepare import Preparer
from voco_components.data.volume_cache import ManifestWriter, VolumeCache
append, count = ManifestWriter.append, [0]
def killing_append(self, record):
    count[0] += 1
    if count[0] == {kill_at}:  # die in the middle of a manifest line
        line = json.dumps(record)
        self.handle.write(line[: len(line) // 2]); self.handle.flush(); os.kill(os.getpid(), signal.SIGKILL)
    append(self, record)
ManifestWriter.append = killing_append
Preparer(VolumeCache({root!r}, {settings!r}), {data!r}, workers={workers}, progress=False).run()
"""


def raw_lines(cache: VolumeCache) -> list[dict]:
    """Every complete line of every manifest part file."""
    lines = []
    for path in sorted((cache.folder / "manifest").glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def assert_complete(cache: VolumeCache, data: list[dict]) -> None:
    """Every entry has one done record, once, whose file loads, matches its checksum and the pipeline."""
    records = cache.records()
    assert set(records) == {entry_text(e) for e in data}
    pipeline = ct_preprocessing(**SETTINGS)
    for entry in data:
        record = records[entry_text(entry)]
        assert record["status"] == "done"
        array, _ = read_volume(cache.folder / record["file"], record["checksum"])
        expected = np.round(pipeline(dict(entry))["image"].numpy() * 255)
        np.testing.assert_array_equal(array, expected)
        assert record["original_shape"] == [40, 40, 12] and record["original_spacing"] == [1.5, 1.5, 5.0]
    assert not list(cache.folder.rglob("*.tmp"))


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_prepare_resumes_without_partial_or_duplicate_entries(tmp_path, workers):
    """SIGKILL in the middle of the third manifest line (with 2 workers: they die with it, nothing hangs)."""
    data = small_cts(tmp_path / "cts", 5)
    root = tmp_path / "cache"
    script = KILL_SCRIPT.format(root=str(root), settings=SETTINGS, data=data, kill_at=3, workers=workers)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cache = VolumeCache(root, SETTINGS)
    part_file = next((cache.folder / "manifest").glob("*.jsonl"))
    assert not part_file.read_bytes().endswith(b"\n")  # the killed writer left a torn line
    assert len(load_manifest(cache.folder / "manifest")) == 2  # which loading ignores

    summary = Preparer(cache, data, workers=0, progress=False).run()
    assert summary["done"] == 3 and summary["skipped"] == 2 and summary["failed"] == {}
    assert_complete(cache, data)
    assert sorted(r["entry"] for r in raw_lines(cache)) == sorted(entry_text(e) for e in data)  # no duplicates

    again = Preparer(cache, data, workers=0, progress=False).run()
    assert (again["done"], again["skipped"]) == (0, 5)


def test_a_changed_source_is_prepared_again(tmp_path):
    data = small_cts(tmp_path / "cts", 3)
    cache = VolumeCache(tmp_path / "cache", SETTINGS)
    Preparer(cache, data, workers=0, progress=False).run()
    before = cache.records()[entry_text(data[1])]
    write_ct(Path(data[1]["image"]), shape=(40, 40, 12), seed=99)  # new content under the same path
    os.utime(data[1]["image"], ns=(1, 1))
    summary = Preparer(cache, data, workers=0, progress=False).run()
    assert (summary["done"], summary["skipped"]) == (1, 2)
    after = cache.records()[entry_text(data[1])]
    assert after["checksum"] != before["checksum"] and after["source"][0][2] == 1
    assert_complete(cache, data)


def test_a_failed_volume_is_recorded_named_and_refused_by_training(tmp_path, caplog):
    data = small_cts(tmp_path / "cts", 2)
    broken = tmp_path / "cts" / "broken.nii.gz"
    broken.write_bytes(Path(data[0]["image"]).read_bytes()[:300])
    data.append({"image": str(broken)})
    cache = VolumeCache(tmp_path / "cache", SETTINGS)
    summary = Preparer(cache, data, workers=2, progress=False).run()
    assert summary["done"] == 2 and list(summary["failed"]) == [str(broken)]
    assert "cannot be read" in summary["failed"][str(broken)]
    record = cache.records()[entry_text(data[2])]
    assert record["status"] == "failed" and str(broken) in record["error"]

    transform = crops()
    with pytest.raises(VolumeError, match="not in the prepared cache") as info:
        VoCoStepDataset(data, None, transform, num_samples=4, volume_cache=cache)
    assert str(broken) in str(info.value) and str(cache.folder) in str(info.value)
    skipping = VoCoStepDataset(data, None, transform, num_samples=6, volume_cache=cache, on_bad_volume="skip")
    assert skipping.bad_volumes == {2} and str(broken) in caplog.text
    sources = {skipping[i]["image"].shape for i in range(6)}
    assert sources == {(4 + 4, 1, 16, 16, 16)}


def test_missing_volumes_refuse_training_unless_skip(tmp_path, caplog):
    data = small_cts(tmp_path / "cts", 3)
    cache = VolumeCache(tmp_path / "cache", SETTINGS)
    Preparer(cache, data[:2], workers=0, progress=False).run()
    with pytest.raises(VolumeError, match="1 of 3 volumes are not in the prepared cache") as info:
        VoCoStepDataset(data, None, crops(), num_samples=3, volume_cache=cache)
    assert data[2]["image"] in str(info.value) and "not in the manifest" in str(info.value)
    stream = VoCoStepDataset(data, None, crops(), num_samples=3, volume_cache=cache, on_bad_volume="skip")
    assert stream.bad_volumes == {2} and "skipping 1 volumes not in the prepared cache" in caplog.text


def test_a_stream_from_the_cache_equals_the_stream_from_its_files(tmp_path):
    """Sample i depends on (seed, i) only; the cached stream is the lazy stream within the quantisation."""
    data = small_cts(tmp_path / "cts", 3)
    cache = VolumeCache(tmp_path / "cache", SETTINGS)
    Preparer(cache, data, workers=0, progress=False).run()
    cached = VoCoStepDataset(data, None, crops(num_crops=2), num_samples=7, seed=5, volume_cache=cache)
    lazy = VoCoStepDataset(data, ct_preprocessing(**SETTINGS), crops(num_crops=2), num_samples=7, seed=5)
    loader = DataLoader(cached, batch_size=1, num_workers=2, sampler=ResumableDistributedSampler(cached, 1, 1, 0))
    for i, batch in enumerate(loader):
        inputs, _ = VoCoPrepareBatch()(batch)
        expected = lazy[i]
        assert torch.equal(batch["label"][0], expected["label"])
        assert (inputs - expected["image"]).abs().max() <= HALF_STEP + 1e-6


def test_a_mismatched_cache_is_refused_naming_it(tmp_path):
    data = small_cts(tmp_path / "cts", 1)
    cache = VolumeCache(tmp_path / "cache", SETTINGS)
    Preparer(cache, data, workers=0, progress=False).run()
    assert open_cache(tmp_path / "cache", SETTINGS).folder == cache.folder
    as_ints = {**SETTINGS, "hu_range": [-175, 250], "spacing": (3, 3, 5)}  # the same numbers, other types
    assert open_cache(tmp_path / "cache", as_ints).folder == cache.folder
    other = {**SETTINGS, "spacing": [2.0, 2.0, 5.0]}
    with pytest.raises(CacheMismatchError) as info:
        open_cache(tmp_path / "cache", other)
    assert str(cache.folder) in str(info.value) and "[3.0, 3.0, 5.0] -> [2.0, 2.0, 5.0]" in str(info.value)
    assert open_cache(tmp_path / "cache", other, mode="lazy") is None
    with pytest.raises(FileNotFoundError, match="run the bundle's prepare"):
        open_cache(tmp_path / "empty", SETTINGS, mode="prepared")
    assert open_cache(tmp_path / "empty", SETTINGS) is None  # nothing prepared: lazy

    settings_file = cache.folder / "settings.json"  # a folder whose settings do not match its name
    settings_file.write_text(settings_file.read_text().replace('"uint8"', '"float16"'))
    with pytest.raises(CacheMismatchError, match="other settings") as info:
        open_cache(tmp_path / "cache", SETTINGS)
    assert str(cache.folder) in str(info.value)


def test_job_array_parts_cover_every_volume_once(tmp_path):
    data = small_cts(tmp_path / "cts", 6)
    cache = VolumeCache(tmp_path / "cache", SETTINGS)
    summaries = [Preparer(cache, data, workers=0, part=p, num_parts=3, progress=False).run() for p in range(3)]
    assert sum(s["done"] for s in summaries) == 6
    manifest = cache.folder / "manifest"
    for p in range(3):  # a part with volumes has its own file; one without has none, or an empty one
        path = manifest / f"part-0000{p}-of-00003.jsonl"
        assert path.is_file() if summaries[p]["volumes"] else not path.is_file() or not path.read_text()
    assert len(list(manifest.glob("*.jsonl"))) <= 3
    for path in (cache.folder / "manifest").glob("*.jsonl"):
        part = int(path.name[5:10])
        assert all(part_of(json.loads(r["entry"]), 3) == part for r in map(json.loads, path.read_text().splitlines()))
    assert_complete(cache, data)
    with pytest.raises(ValueError, match="prepare_part"):
        Preparer(cache, data, part=3, num_parts=3)


@pytest.mark.slow
def test_torchrun_ranks_prepare_disjoint_parts_of_the_bundle_datalist(tmp_path):
    """`prepare` under torchrun with 2 processes: each rank its own manifest file, every volume exactly once."""
    data = small_cts(tmp_path / "cts", 6)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": data[:5], "validation": data[4:]}))  # one volume in both
    overrides = {**PRETRAIN_TINY, "bundle_root": str(tmp_path), "datalist": str(datalist), "prepare_workers": 1}
    result = run_bundle_cli("voco_pretrain", ["train.json"], overrides, processes=2, run_id="prepare", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = next((tmp_path / "outputs" / "cache").glob("voco-*"))
    parts = {
        p.name: [json.loads(line)["entry"] for line in p.read_text().splitlines()] for p in folder.glob("manifest/*")
    }
    assert sorted(parts) == ["part-00000-of-00002.jsonl", "part-00001-of-00002.jsonl"]
    everything = [entry for entries in parts.values() for entry in entries]
    assert sorted(everything) == sorted(entry_text(e) for e in data)  # each volume once, over both ranks
    assert "6 volumes" not in result.stdout and "done" in result.stdout  # each rank reports its own part


def test_the_bundle_prepares_and_then_trains_on_the_cache(tmp_path):
    settings = {**PRETRAIN_TINY, "bundle_root": str(tmp_path), "prepare_workers": 0, "max_steps": 2}
    first = bundle_workflow("voco_pretrain", **settings).parser.get_parsed_content("preparer").run()
    demo = json.loads(DEMO_DATALIST.read_text())
    assert (first["done"], first["failed"]) == (len(demo["training"]) + len(demo["validation"]), {})
    wf = bundle_workflow("voco_pretrain", **settings)
    for stream in ("train", "validate"):
        dataset = wf.parser.get_parsed_content(f"{stream}#dataset")
        assert isinstance(dataset.volumes, PreparedVolumes) and dataset[0]["image"].dtype == torch.uint8
    wf.run()
    assert (tmp_path / "models" / "model.pt").is_file()
    lazy = bundle_workflow("voco_pretrain", **{**settings, "cache_mode": "lazy"})
    assert not isinstance(lazy.parser.get_parsed_content("train#dataset").volumes, PreparedVolumes)


# ----------------------------------------------------------------------------------------------- start-up


def test_a_200k_volume_manifest_reaches_the_first_batch_in_seconds(tmp_path, monkeypatch):
    """200,000 entries, one of them real: the first batch needs no stat, listing or read of the others."""
    n, seed = 200_000, 4
    entries = [{"image": f"/nonexistent/ct{i:06d}.nii.gz"} for i in range(n)]
    first = int(np.random.default_rng([seed, 0]).permutation(n)[0])  # the first volume of the first pass
    real = small_cts(tmp_path / "cts", 1)[0]
    entries[first] = real
    cache = VolumeCache(tmp_path / "cache", SETTINGS)
    Preparer(cache, [real], workers=0, progress=False).run()
    with open(cache.folder / "manifest" / "part-00001-of-00002.jsonl", "w") as handle:  # the other part
        for entry in entries[:first] + entries[first + 1 :]:
            record = {"entry": entry_text(entry), "status": "done", "file": "00/none.vol", "checksum": "0", "time": 0}
            handle.write(json.dumps(record) + "\n")

    touched: list[str] = []
    real_stat = os.stat

    def counting_stat(path, *args, **kwargs):
        if "nonexistent" in str(path) or "none.vol" in str(path):
            touched.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    start = time.perf_counter()
    dataset = VoCoStepDataset(
        entries, None, crops(), num_samples=10**12, seed=seed, volume_cache=VolumeCache(tmp_path / "cache", SETTINGS)
    )
    loader = DataLoader(
        dataset, batch_size=1, sampler=ResumableDistributedSampler(dataset, batch_size=1, num_replicas=1, rank=0)
    )
    batch = next(iter(loader))
    elapsed = time.perf_counter() - start
    assert batch["image"].shape == (1, 4 + 4, 1, 16, 16, 16) and batch["image"].dtype == torch.uint8
    assert touched == []
    print(f"first batch of a {n}-volume stream after {elapsed:.2f} s")
    assert elapsed < 30, f"first batch after {elapsed:.1f} s"
