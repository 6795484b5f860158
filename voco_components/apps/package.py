"""Package a MONAI bundle folder as a Model-Zoo-style release: a reproducible zip plus its large files.

Command line::

    python -m voco_components.apps.package BUNDLE_DIR --out dist/ [--weights-url BASE_URL] [--large-file-size BYTES]

writes ``dist/<name>_v<version>.zip``, where ``<name>`` is the bundle folder's name and ``<version>`` comes
from ``configs/metadata.json``. The zip holds one top folder ``<name>/`` with the bundle's files, sorted,
deflated and stamped with a fixed time, so the same bundle always gives the same bytes. Run outputs
(``outputs/``, ``eval/``, ``__pycache__/``, ``checkpoints/``, caches, hidden files) are left out.

``models/model.pt`` and every other file over ``--large-file-size`` bytes (default 1 MiB, the Model Zoo's
limit for a committed file) are not zipped: they are copied to the flat folder
``dist/<name>_v<version>_files/<file name>`` and listed in the zip's ``large_files.yml`` with their bundle
``path``, ``url`` = ``BASE_URL/<file name>`` and their sha256, the format that
``python -m monai.bundle download_large_files`` reads. The folder is flat so that it can be uploaded as it
is to hosts without folders (release assets); two large files with the same name are refused. Without
``--weights-url`` the URLs point at that local folder (``file://``), which suits local tests but not
publication.

The bundle is refused, with the file and the problem named, when ``configs/metadata.json`` is missing or
invalid, its ``version`` has no ``changelog`` entry, ``models/model.pt`` is missing, a JSON file is not
4-space indented with its key order kept (the Model Zoo's pre-commit format), or two large files share a
name. The whole flow is described in ``docs/model_zoo.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from voco_components.utils import atomic_write

__all__ = [
    "PackagingError",
    "LargeFile",
    "Package",
    "read_metadata",
    "check_json_format",
    "bundle_files",
    "split_large_files",
    "sha256_of",
    "large_files_yaml",
    "write_zip",
    "package_bundle",
]

MODEL_FILE = "models/model.pt"
LARGE_FILE_SIZE = 1024 * 1024
ZIP_TIMESTAMP = (2022, 5, 30, 0, 0, 0)  # the time the Model Zoo's release step stamps on every file
EXCLUDED_DIRS = frozenset({"outputs", "eval", "__pycache__", "checkpoints", "cache", "mlruns"})
EXCLUDED_SUFFIXES = frozenset({".pyc", ".tmp"})


class PackagingError(ValueError):
    """A bundle cannot be packaged; the message names the file and the problem."""


@dataclass(frozen=True)
class LargeFile:
    """A file kept out of the zip: its path in the bundle, download URL and sha256."""

    path: str
    url: str
    sha256: str


@dataclass(frozen=True)
class Package:
    """What :func:`package_bundle` wrote: the zip, the folder of large files and their entries."""

    zip_path: Path
    files_dir: Path
    large_files: tuple[LargeFile, ...]


def read_json(path: Path) -> object:
    """Parse ``path`` as JSON, or raise :class:`PackagingError` naming the file and the syntax error."""
    if not path.is_file():
        raise PackagingError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackagingError(f"{path}: not valid JSON ({err})") from err


def read_metadata(bundle: Path) -> dict:
    """``configs/metadata.json`` of ``bundle``, checked to have a ``version`` with a ``changelog`` entry."""
    path = bundle / "configs" / "metadata.json"
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise PackagingError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    version = meta.get("version")
    if not isinstance(version, str) or not version or "/" in version:
        raise PackagingError(f"{path}: 'version' must be a non-empty string without '/', found {version!r}")
    changelog = meta.get("changelog")
    if not isinstance(changelog, dict) or version not in changelog:
        raise PackagingError(f"{path}: version {version} has no entry in 'changelog'")
    return meta


def check_json_format(path: Path) -> None:
    """Refuse a JSON file that is not exactly ``json.dumps(..., indent=4)`` of itself plus a newline."""
    text = path.read_text(encoding="utf-8")
    if text != json.dumps(read_json(path), indent=4) + "\n":
        raise PackagingError(
            f"{path}: not 4-space indented with key order kept and a final newline "
            "(the Model Zoo's pretty-format-json --indent=4 --no-sort-keys)"
        )


def is_packaged(relative: Path) -> bool:
    """Whether a file at ``relative`` (to the bundle root) belongs in a release rather than to a run."""
    run_or_hidden = any(part in EXCLUDED_DIRS or part.startswith(".") for part in relative.parts)
    return not run_or_hidden and relative.suffix not in EXCLUDED_SUFFIXES


def bundle_files(bundle: Path) -> list[Path]:
    """The bundle's files to release, relative to ``bundle`` and sorted; ``large_files.*`` is rewritten."""
    found = []
    for path in bundle.rglob("*"):
        relative = path.relative_to(bundle)
        if path.is_file() and is_packaged(relative) and not relative.name.startswith("large_files."):
            found.append(relative)
    return sorted(found, key=lambda p: p.as_posix())


def split_large_files(bundle: Path, files: Sequence[Path], threshold: int) -> tuple[list[Path], list[Path]]:
    """Split ``files`` into (zipped, large): ``models/model.pt`` and files over ``threshold`` bytes are large."""
    zipped, large = [], []
    for relative in files:
        is_large = relative.as_posix() == MODEL_FILE or (bundle / relative).stat().st_size > threshold
        (large if is_large else zipped).append(relative)
    return zipped, large


def sha256_of(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def large_files_yaml(entries: Sequence[LargeFile]) -> str:
    """The ``large_files.yml`` text for ``entries``: path, url, hash_val and hash_type ``sha256`` each."""
    lines = [
        "# Files kept out of the bundle zip. Fetch them into the extracted bundle with",
        "#   python -m monai.bundle download_large_files --bundle_path <bundle folder>",
        "# which checks each file's sha256 and refuses a mismatch.",
        "large_files:",
    ]
    for entry in entries:  # JSON strings are valid YAML double-quoted scalars
        lines += [
            f"  - path: {json.dumps(entry.path)}",
            f"    url: {json.dumps(entry.url)}",
            f"    hash_val: {json.dumps(entry.sha256)}",
            '    hash_type: "sha256"',
        ]
    return "\n".join(lines) + "\n"


def zip_entry(name: str) -> zipfile.ZipInfo:
    """A zip member header that depends on ``name`` only: fixed time, Unix 0644 permissions, deflate."""
    info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = 0o100644 << 16
    return info


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    """Write ``members`` (archive name -> content) to ``path`` in name order, through a temporary file."""

    def write(handle) -> None:
        with zipfile.ZipFile(handle, "w") as archive:
            for name in sorted(members):
                archive.writestr(zip_entry(name), members[name], compresslevel=9)

    atomic_write(path, write, "wb")


def check_unique_names(bundle: Path, large: Sequence[Path]) -> None:
    """Refuse large files that share a file name, since they are served from one flat folder."""
    seen: dict[str, Path] = {}
    for relative in large:
        if relative.name in seen:
            raise PackagingError(
                f"{bundle / relative} and {bundle / seen[relative.name]}: large files must have distinct names"
            )
        seen[relative.name] = relative


def copy_large_files(bundle: Path, large: Sequence[Path], files_dir: Path, base_url: str) -> tuple[LargeFile, ...]:
    """Copy ``large`` into a fresh, flat ``files_dir`` (by file name) and describe each copy."""
    if files_dir.exists():
        shutil.rmtree(files_dir)
    files_dir.mkdir(parents=True)
    entries = []
    for relative in large:
        target = files_dir / relative.name
        shutil.copyfile(bundle / relative, target)
        url = f"{base_url.rstrip('/')}/{quote(relative.name)}"
        entries.append(LargeFile(path=relative.as_posix(), url=url, sha256=sha256_of(target)))
    return tuple(entries)


def package_bundle(
    bundle: str | Path, out: str | Path, weights_url: str | None = None, large_file_size: int = LARGE_FILE_SIZE
) -> Package:
    """Check ``bundle`` and write its release zip and large files under ``out`` (see the module docstring).

    Raises:
        PackagingError: naming the file and the problem when the bundle cannot be released as it is.
    """
    bundle, out = Path(bundle).resolve(), Path(out).resolve()
    if not bundle.is_dir():
        raise PackagingError(f"{bundle}: not a folder")
    if out.is_relative_to(bundle):
        raise PackagingError(f"{out}: the output folder must be outside the bundle {bundle}")
    name, version = bundle.name, read_metadata(bundle)["version"]
    if not (bundle / MODEL_FILE).is_file():
        raise PackagingError(f"{bundle / MODEL_FILE}: file not found; train or export the model first")
    files = bundle_files(bundle)
    for relative in files:
        if relative.suffix == ".json":
            check_json_format(bundle / relative)
    zipped, large = split_large_files(bundle, files, large_file_size)
    check_unique_names(bundle, large)

    stem = f"{name}_v{version}"
    files_dir = out / f"{stem}_files"
    entries = copy_large_files(bundle, large, files_dir, weights_url or files_dir.as_uri())
    members = {f"{name}/{p.as_posix()}": (bundle / p).read_bytes() for p in zipped}
    members[f"{name}/large_files.yml"] = large_files_yaml(entries).encode()
    zip_path = out / f"{stem}.zip"
    write_zip(zip_path, members)
    return Package(zip_path=zip_path, files_dir=files_dir, large_files=entries)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 when the bundle is refused)."""
    parser = argparse.ArgumentParser(prog="python -m voco_components.apps.package", description=__doc__.split("\n")[0])
    parser.add_argument("bundle_dir", help="the bundle folder; its name is the bundle's name")
    parser.add_argument("--out", default="dist", help="output folder (default: dist)")
    parser.add_argument("--weights-url", help="base URL where the large files will be served")
    parser.add_argument(
        "--large-file-size", type=int, default=LARGE_FILE_SIZE, help="files over this many bytes are large files"
    )
    args = parser.parse_args(argv)
    try:
        result = package_bundle(args.bundle_dir, args.out, args.weights_url, args.large_file_size)
    except PackagingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result.zip_path}  sha256 {sha256_of(result.zip_path)}")
    for entry in result.large_files:
        print(f"{result.files_dir / Path(entry.path).name}  sha256 {entry.sha256}  -> {entry.url}")
    if not args.weights_url:
        print("note: large file URLs point at the local folder; pass --weights-url to publish", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
