"""The published encoders that ``--pretrained`` takes by name: list them and the weights cache, or download them.

``python -m voco_components.apps.weights list`` lists every name with its file, the SwinUNETR settings it needs, its
digest and whether it is in the cache; ``python -m voco_components.apps.weights download voco_b [--cache DIR]``
downloads (and hash-checks) files into the cache, e.g. on a machine with internet access whose cache folder is
then copied to one without.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from voco_components.networks.pretrained_registry import default_weights_cache, fetch_pretrained, pretrained_entries

__all__ = ["describe", "main"]


def describe(cache_dir: str | Path | None = None) -> str:
    """One line per registered name (settings, digest, cache state), after a line naming the cache folder."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_weights_cache()
    lines = [f"weights cache: {folder}"]
    for name, entry in sorted(pretrained_entries().items()):
        cached = "cached" if (folder / entry.file_name).is_file() else "not cached"
        digest = f"{entry.hash_type} {entry.hash_val}" if entry.hash_val else "no published digest"
        settings = ", ".join(f"{key} {value}" for key, value in entry.architecture.items())
        lines.append(f"{name}: {entry.file_name} ({cached}); {settings}; {digest}; {entry.url}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``list [--cache DIR]`` or ``download NAME [NAME ...] [--cache DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m voco_components.apps.weights", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list the names, their settings and the cache")
    download = commands.add_parser("download", help="download and hash-check files into the cache")
    download.add_argument("names", nargs="+", choices=sorted(pretrained_entries()), metavar="NAME")
    for command in (listing, download):
        command.add_argument("--cache", help=f"the weights cache folder (default: {default_weights_cache()})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "download":
        for name in args.names:
            print(fetch_pretrained(name, args.cache))
    else:
        print(describe(args.cache))


if __name__ == "__main__":
    main()
