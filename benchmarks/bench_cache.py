#!/usr/bin/env python
"""Benchmark the prepared volume cache against the lazy float32 ``PersistentDataset`` cache, in one process.

Run from the repository root::

    python benchmarks/bench_cache.py                      # 6 synthetic CTs + the 2 demo CTs, a few minutes
    python benchmarks/bench_cache.py --volumes 4 --repeats 5 --json results.json

Paper-size settings throughout: spacing 1.5 mm, HU window [-175, 250], the 384×384×64 region stored at
its 256×256×64 sampling grid (grid 4×4×1, roi 64), VoCo crops with k = 4 and the training augmentation.
Sources: ``--volumes`` synthetic CT-like int16 volumes (body, lungs, bones, vessels, 15 HU noise,
``--shape`` voxels at 0.8×0.8×2.5 mm) and the two embedded real CTs (``voco_components.apps.demo.DEMO_DIR``).

1. ``bytes``: one volume's cache file. Today: the ``PersistentDataset`` torch file of the float32
   volume (what ``cache_dir`` holds in lazy mode). Ours: the prepared cache's file (uint8 and float16).
   Target: at least 4× smaller, stretch 8×. Codecs for the uint8 array are compared on the same data
   (blosc2 zstd at levels 1/3/5, blosc2 lz4, zlib level 6, numpy ``savez_compressed``): size, compress
   and decompress time.
2. ``load``: read one cached volume and cut its VoCo crops, the data-loader worker's work. Ours also
   reports, separately, the uint8 -> float ``/255 + shift`` of the crops that the training device does
   (``VoCoPrepareBatch``; timed here on the CPU). Median of ``--repeats``, both sides
   interleaved, files warm in the page cache, one torch thread (as in a data-loader worker). Target: ours not slower.
3. ``prepare``: volumes per second preprocessed into the cache by ``Preparer`` at 1 and 2 worker
   processes, next to filling today's lazy cache serially (the same pipeline + ``torch.save``).
4. ``manifest``: loading a synthetic manifest of ``--manifest-entries`` records (the start-up cost of a
   corpus of that size) and looking every datalist entry up in it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import blosc2
import monai
import nibabel as nib
import numpy as np
import torch
from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from voco_components.apps.demo import DEMO_DIR  # noqa: E402
from voco_components.data.dataset import PreparedVolumes, hash_entry_and_files  # noqa: E402
from voco_components.data.prepare import Preparer  # noqa: E402
from voco_components.data.volume_cache import VolumeCache, entry_text, load_manifest, read_volume  # noqa: E402
from voco_components.engines.workflow import VoCoPrepareBatch  # noqa: E402
from voco_components.transforms.crops import VoCoCropd  # noqa: E402
from voco_components.transforms.pipelines import ct_preprocessing  # noqa: E402

SETTINGS = {
    "spacing": [1.5, 1.5, 1.5],
    "hu_range": [-175.0, 250.0],
    "foreground_threshold": 0.0,
    "min_foreground_size": [64, 64, 16],
    "spatial_size": [256, 256, 64],
    "allow_non_finite": False,
}
FLOAT32_ENTRY = 256 * 256 * 64 * 4


def synthetic_ct(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """A CT-like int16 NIfTI at 0.8×0.8×2.5 mm: air, a body ellipse, lungs, a spine, vessels, 15 HU noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s, dtype=np.float32) for s in shape), indexing="ij")
    volume = np.full(shape, -1000.0, dtype=np.float32)
    body = (x / (0.8 + 0.05 * rng.random())) ** 2 + (y / 0.65) ** 2 < 1
    volume[body] = 40.0 + 20.0 * z[body]
    for cx in (-0.38, 0.38):
        volume[((x - cx) / 0.28) ** 2 + ((y + 0.05) / 0.42) ** 2 < 1] = -850.0
    volume[(x**2 + ((y + 0.5) / 0.1) ** 2 < 0.012) & body] = 700.0
    for _ in range(12):  # vessels in the lungs
        cx, cy, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.4, 0.3), rng.uniform(0.01, 0.03)
        volume[((x - cx) ** 2 + (y - cy) ** 2 < r**2) & body] = 60.0
    volume += rng.normal(0, 15, size=shape).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    return path


def crops() -> VoCoCropd:
    """The paper's crops with the training augmentation (bundle defaults)."""
    return VoCoCropd(keys="image", num_crops=4, flip_prob=0.2, rot90_prob=0.2, shift_intensity_prob=0.1)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def codec_table(array: np.ndarray, repeats: int) -> list[dict[str, Any]]:
    """Size and (median) compress / decompress time of one uint8 volume under several codecs."""
    raw = array.tobytes()

    def blosc(codec, clevel):
        kw = {"codec": codec, "clevel": clevel, "filters": [blosc2.Filter.NOFILTER], "typesize": 1, "nthreads": 1}
        return (lambda: blosc2.compress2(raw, **kw)), blosc2.decompress2

    def npz():
        def pack():
            buffer = io.BytesIO()
            np.savez_compressed(buffer, image=array)
            return buffer.getvalue()

        return pack, lambda blob: np.load(io.BytesIO(blob))["image"]

    candidates = {
        "blosc2 zstd 1 (ours)": blosc(blosc2.Codec.ZSTD, 1),
        "blosc2 zstd 3": blosc(blosc2.Codec.ZSTD, 3),
        "blosc2 zstd 5": blosc(blosc2.Codec.ZSTD, 5),
        "blosc2 lz4 5": blosc(blosc2.Codec.LZ4, 5),
        "zlib 6": ((lambda: zlib.compress(raw, 6)), zlib.decompress),
        "numpy savez_compressed": npz(),
    }
    rows = []
    for name, (pack, unpack) in candidates.items():
        blob = pack()
        rows.append(
            {
                "codec": name,
                "bytes": len(blob),
                "compress_ms": median_ms(pack, repeats),
                "decompress_ms": median_ms(lambda blob=blob, unpack=unpack: unpack(blob), repeats),
            }
        )
    return rows


def persistent_entries(data: list[dict], folder: Path) -> tuple[PersistentDataset, list[int]]:
    """Today's lazy cache filled for ``data``: the dataset and each entry's file size."""
    dataset = PersistentDataset(
        data=data,
        transform=ct_preprocessing(**SETTINGS),
        cache_dir=folder,
        hash_func=hash_entry_and_files,
        hash_transform=pickle_hashing,
    )
    before = set(folder.glob("*.pt"))
    sizes = []
    for i in range(len(data)):
        dataset[i]
        new = set(folder.glob("*.pt")) - before
        sizes.append(sum(p.stat().st_size for p in new))
        before |= new
    return dataset, sizes


def bench_manifest(folder: Path, count: int) -> dict[str, float]:
    """Seconds to load a ``count``-record manifest and to look ``count`` entries up in it."""
    entries = [{"image": f"/data/corpus/ct{i:06d}.nii.gz"} for i in range(count)]
    path = folder / "manifest" / "part-00000-of-00001.jsonl"
    path.parent.mkdir(parents=True)
    with open(path, "w") as handle:
        for entry in entries:
            record = {
                "entry": entry_text(entry),
                "key": "0" * 40,
                "source": [[entry["image"], 123456789, 1796160837956300000]],
                "status": "done",
                "file": "00/" + "0" * 40 + ".vol",
                "bytes": 2_000_000,
                "checksum": "0" * 40,
                "shape": [1, 256, 256, 64],
                "original_shape": [512, 512, 300],
                "original_spacing": [0.7, 0.7, 1.0],
                "foreground_box": [[0, 300], [20, 280], [0, 200]],
                "time": 0.0,
            }
            handle.write(json.dumps(record, separators=(",", ":")) + "\n")
    start = time.perf_counter()
    records = load_manifest(path.parent)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    found = sum(entry_text(e) in records for e in entries)
    assert found == count
    return {"load_s": loaded, "lookup_s": time.perf_counter() - start, "mb": path.stat().st_size / 1e6}


def prepare_rate(data: list[dict], root: Path, workers: int) -> float:
    """Volumes per second of a fresh ``prepare`` of ``data`` with ``workers`` processes."""
    cache = VolumeCache(root, SETTINGS)
    start = time.perf_counter()
    summary = Preparer(cache, data, workers=workers, progress=False).run()
    assert summary["done"] == len(data), summary
    return len(data) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=6, help="synthetic CT-like volumes")
    parser.add_argument("--shape", type=int, nargs=3, default=[400, 400, 96], help="synthetic volume shape")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--manifest-entries", type=int, default=200_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a data-loader worker, where this work runs during training
    load = os.getloadavg()[0]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"MONAI {monai.__version__}, blosc2 {blosc2.__version__}, load average {load:.1f}"
    )
    if load > (os.cpu_count() or 1) * 0.75:
        print(
            f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: "
            "other processes share the CPUs, timings are noisy"
        )
    results: dict[str, Any] = {"settings": SETTINGS, "load_average": load}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = [
            {"image": str(synthetic_ct(tmp / "src" / f"ct{i}.nii.gz", tuple(args.shape), i))}
            for i in range(args.volumes)
        ]
        demo = [{"image": str(DEMO_DIR / name)} for name in ("lung1_image.nii.gz", "lung2_image.nii.gz")]
        everything = data + demo
        source_mvox = [np.prod(nib.load(e["image"]).shape) / 1e6 for e in everything]

        # 3. prepare throughput (also fills the caches the other sections read)
        rates = {w: prepare_rate(everything, tmp / f"prepared-{w}", w) for w in (1, 2)}
        start = time.perf_counter()
        persistent, today_bytes = persistent_entries(everything, tmp / "persistent")
        today_rate = len(everything) / (time.perf_counter() - start)
        half_cache = VolumeCache(tmp / "prepared-half", SETTINGS, dtype="float16")
        Preparer(half_cache, everything, workers=1, progress=False).run()

        # 1. bytes per volume
        cache = VolumeCache(tmp / "prepared-1", SETTINGS)
        half = {e["entry"]: e["bytes"] for e in half_cache.records().values()}
        records = cache.records()
        rows = []
        for entry, today in zip(everything, today_bytes, strict=True):
            record = records[entry_text(entry)]
            rows.append(
                {
                    "volume": Path(entry["image"]).name,
                    "today": today,
                    "uint8": record["bytes"],
                    "float16": half[entry_text(entry)],
                }
            )
        print("\n1. bytes per volume (256x256x64 sampling grid); today = PersistentDataset float32 torch file")
        print(f"{'volume':<22}{'today MB':>10}{'uint8 MB':>10}{'ratio':>8}{'float16 MB':>12}{'ratio':>8}")
        for r in rows:
            print(
                f"{r['volume']:<22}{r['today'] / 1e6:>10.2f}{r['uint8'] / 1e6:>10.2f}{r['today'] / r['uint8']:>7.1f}x"
                f"{r['float16'] / 1e6:>12.2f}{r['today'] / r['float16']:>7.1f}x"
            )
        for group, subset in (("synthetic", rows[: len(data)]), ("demo CTs", rows[len(data) :])):
            today_mean = np.mean([r["today"] for r in subset])
            ours_mean = np.mean([r["uint8"] for r in subset])
            print(
                f"mean {group}: today {today_mean / 1e6:.2f} MB,"
                f" uint8 {ours_mean / 1e6:.2f} MB ({today_mean / ours_mean:.1f}x smaller)"
            )
            results[f"bytes_{group.split()[0]}"] = {
                "today": today_mean,
                "uint8": ours_mean,
                "float16": np.mean([r["float16"] for r in subset]),
            }
        results["bytes"] = rows

        first = records[entry_text(demo[0])]
        array, _ = read_volume(cache.folder / first["file"])
        print(
            f"\ncodecs on the uint8 volume of {Path(demo[0]['image']).name} ({array.nbytes / 1e6:.2f}"
            f" MB raw), median of {args.repeats}"
        )
        print(f"{'codec':<26}{'MB':>8}{'compress ms':>14}{'decompress ms':>16}")
        results["codecs"] = codec_table(array, args.repeats)
        for r in results["codecs"]:
            print(f"{r['codec']:<26}{r['bytes'] / 1e6:>8.2f}{r['compress_ms']:>14.1f}{r['decompress_ms']:>16.1f}")

        # 2. load + crops
        prepared = PreparedVolumes(everything, cache)
        today_crops, our_crops, to_float = crops(), crops(), VoCoPrepareBatch()

        def today(i):
            return today_crops(persistent[i])

        def ours(i):
            return our_crops(prepared[i])

        collated = {}

        def device(i):
            return to_float(collated[i])

        per_volume = {"today": [], "ours": [], "device": []}
        for i in range(len(everything)):
            today(i), ours(i)  # warm-up: page cache
            collated[i] = {k: v[None] for k, v in ours(i).items()}
            for _ in range(args.repeats):
                for side, fn in (("today", today), ("ours", ours), ("device", device)):
                    start = time.perf_counter()
                    fn(i)
                    per_volume[side].append(time.perf_counter() - start)
        t_today, t_ours, t_device = (1e3 * statistics.median(per_volume[s]) for s in ("today", "ours", "device"))
        print(
            f"\n2. load + VoCo crops per volume, in the data-loader worker (median of {args.repeats} x "
            f"{len(everything)} volumes, one torch thread)"
        )
        print(
            f"today (torch.load float32 + crops): {t_today:.1f} ms; "
            f"ours (blosc2 uint8 + checksum + crops, uint8 out): {t_ours:.1f} ms; ours/today {t_ours / t_today:.2f}"
        )
        print(
            f"ours, on the training device: uint8 crops -> float32 /255 + shift: {t_device:.1f} ms here on the CPU "
            "(a GPU does it in microseconds, after a 4x smaller host-to-device copy)"
        )
        results["load_ms"] = {"today": t_today, "ours": t_ours, "device_side_on_cpu": t_device}

        mean_mvox = float(np.mean(source_mvox))
        print(f"\n3. prepare throughput over {len(everything)} volumes (mean source {mean_mvox:.1f} Mvoxel)")
        print(f"today, lazy PersistentDataset fill in one process: {today_rate:.2f} volumes/s")
        for w, rate in rates.items():
            print(
                f"ours, prepare with {w} worker{'s' if w > 1 else ''}: {rate:.2f} volumes/s "
                f"({rate * mean_mvox / w:.1f} source Mvoxel/s per worker)"
            )
        results["prepare"] = {"today_per_s": today_rate, "workers_per_s": rates, "mean_source_mvoxel": mean_mvox}

        # 4. manifest start-up
        m = bench_manifest(tmp / "manifest-bench", args.manifest_entries)
        print(
            f"\n4. manifest of {args.manifest_entries} records ({m['mb']:.0f} MB): load {m['load_s']:.2f} s, "
            f"look up every entry {m['lookup_s']:.2f} s"
        )
        results["manifest"] = m
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
