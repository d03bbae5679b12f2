"""Download the public datasets of the pipelines: resumable, atomic, checksummed.

python -m hloc_hndesc.pipelines.download aachen_v1_1|inloc|eth DIR [--sha256 FILE=HEX ...] [--mirror URL]

Each file is downloaded to ``<file>.part`` (continued with an HTTP Range request after an
interruption), checked, then renamed, so a file under its final name is always complete. Its
size must equal the server's ``Content-Length``; its sha256 must equal the expected one:
given with ``--sha256 NAME=HEX`` (or ``--checksums FILE`` in ``sha256sum`` format), else the
one recorded in ``DIR/checksums.json`` by the first download (trust on first use; the hashes of
these archives are not published). A mismatch deletes the download and fails. Archives are then
unpacked into the dataset layout the pipeline reads (``--no-extract`` keeps them packed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .. import logger
from ..files import atomic_path

CHUNK = 1 << 20
MANIFEST = "checksums.json"
AACHEN = "https://data.ciirc.cvut.cz/public/projects/2020VisualLocalization/Aachen-Day-Night"
INLOC = "https://data.ciirc.cvut.cz/public/projects/2020VisualLocalization/InLoc"
INLOC_ALIGNMENTS = "http://www.ok.sc.e.titech.ac.jp/INLOC/materials"
ETH = "https://cvg-data.inf.ethz.ch/local-feature-evaluation-schoenberger2017"


class DownloadError(RuntimeError):
    """A download failed, was truncated, or does not match its checksum."""


@dataclass(frozen=True)
class Asset:
    """One file of a dataset: its URL, where it is stored under DIR, and where it unpacks to."""

    url: str
    path: str
    extract_to: str | None = None  # folder under DIR; None: keep the file as is


#: the files of each dataset, as hloc's READMEs and notebooks fetch them.
DATASETS: dict[str, tuple[Asset, ...]] = {
    "aachen_v1_1": (
        # database_and_query_images.zip holds images_upright/{db,query}; aachen_v1_1.zip adds the v1.1
        # images, 3D-models/aachen_v_1_1 and queries/*_time_queries_with_intrinsics.txt.
        Asset(f"{AACHEN}/images/database_and_query_images.zip", "downloads/database_and_query_images.zip", "."),
        Asset(f"{AACHEN}/aachen_v1_1.zip", "downloads/aachen_v1_1.zip", "."),
    ),
    "inloc": (
        Asset(f"{INLOC}/cutouts.tar.gz", "downloads/cutouts.tar.gz", "database"),
        Asset(f"{INLOC}/queries/iphone7.tar.gz", "downloads/iphone7.tar.gz", "query"),
        Asset(f"{INLOC_ALIGNMENTS}/DUC1align.zip", "downloads/DUC1align.zip", "database/alignments/DUC1"),
        Asset(f"{INLOC_ALIGNMENTS}/DUC2align.zip", "downloads/DUC2align.zip", "database/alignments/DUC2"),
    ),
    "eth": (
        Asset(f"{ETH}/Strecha-Fountain.zip", "downloads/Strecha-Fountain.zip", "."),
        Asset(f"{ETH}/Strecha-Herzjesu.zip", "downloads/Strecha-Herzjesu.zip", "."),
        Asset(f"{ETH}/South-Building.zip", "downloads/South-Building.zip", "."),
    ),
}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, str]:
    """Recorded sha256 per stored path (empty if none)."""
    path = root / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_manifest(root: Path, manifest: dict[str, str]) -> None:
    with atomic_path(root / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def fetch(url: str, target: Path, expected_sha256: str | None = None, timeout: float = 60.0) -> str:
    """Download ``url`` to ``target`` through ``target.part`` (resumed); returns the file's sha256.

    Raises :class:`DownloadError` when the transfer ends before ``Content-Length`` (the partial
    file is kept, the next call resumes it) or when ``expected_sha256`` does not match (the
    download is deleted). ``target`` only ever appears complete and verified.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the partial file is already complete
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"{url}: {error}") from None
    if response is not None:
        with response:
            resumed = start and response.status == 206
            if start and not resumed:
                logger.info("%s: the server ignores ranges, downloading again from the start", url)
                start = 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            written = start
            with open(part, "ab" if resumed else "wb") as handle, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=target.name
            ) as bar:
                try:
                    while block := response.read(CHUNK):
                        handle.write(block)
                        written += len(block)
                        bar.update(len(block))
                except (OSError, urllib.error.URLError) as error:
                    raise DownloadError(f"{url}: interrupted after {written} bytes ({error}); run again to resume") from None
            if total is not None and written < total:
                raise DownloadError(f"{url}: truncated, {written} of {total} bytes; run again to resume")
    digest = sha256_file(part)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 {digest} does not match the expected {expected_sha256}; the download was deleted")
    os.replace(part, target)
    return digest


def unpack(archive: Path, destination: Path) -> None:
    """Unpack a zip or tar archive into ``destination`` (through a temporary folder; no path escapes)."""
    tmp = destination.parent / f".{destination.name}.unpacking-{archive.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            for member in handle.namelist():
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise DownloadError(f"{archive}: unsafe member {member}")
            handle.extractall(tmp)
    else:
        with tarfile.open(archive) as handle:
            for member in handle.getmembers():
                if Path(member.name).is_absolute() or ".." in Path(member.name).parts or member.issym() or member.islnk():
                    raise DownloadError(f"{archive}: unsafe member {member.name}")
            handle.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    destination.mkdir(parents=True, exist_ok=True)
    for item in tmp.rglob("*"):
        if item.is_file():
            target = destination / item.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item, target)
    shutil.rmtree(tmp)


def download(
    name: str,
    root: str | Path,
    checksums: dict[str, str] | None = None,
    mirror: str | None = None,
    extract: bool = True,
) -> list[Path]:
    """Fetch (and unpack) every file of dataset ``name`` into ``root``; complete files are not fetched again.

    ``checksums``: expected sha256 by file name (overrides what the manifest recorded);
    ``mirror``: a base URL replacing the host part of every URL (the file name is kept).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    checksums = {k: v.lower() for k, v in (checksums or {}).items()}
    manifest = read_manifest(root)
    done = []
    for asset in DATASETS[name]:
        filename = Path(asset.path).name
        url = f"{mirror.rstrip('/')}/{filename}" if mirror else asset.url
        target = root / asset.path
        expected = checksums.get(filename, manifest.get(asset.path))
        if target.is_file():
            digest = sha256_file(target)
            if expected is not None and digest != expected:
                raise DownloadError(f"{target}: sha256 {digest} does not match the expected {expected}; delete it to download again")
            logger.info("%s: already downloaded", target)
        else:
            logger.info("Downloading %s", url)
            digest = fetch(url, target, expected)
        if asset.path not in manifest:
            logger.info("%s: sha256 %s recorded in %s", filename, digest, root / MANIFEST)
        manifest[asset.path] = digest
        _write_manifest(root, manifest)
        marker = root / f"{asset.path}.extracted"
        if extract and asset.extract_to is not None and not marker.is_file():
            logger.info("Unpacking %s into %s", target, root / asset.extract_to)
            unpack(target, root / asset.extract_to)
            marker.write_text(digest)
        done.append(target)
    return done


def parse_checksums(pairs: Sequence[str], files: Sequence[Path]) -> dict[str, str]:
    """``NAME=HEX`` options and ``sha256sum``-format files -> expected sha256 by file name."""
    out = {}
    for item in pairs:
        filename, sep, digest = item.partition("=")
        if not sep or len(digest) != 64:
            raise ValueError(f"--sha256 {item}: expected NAME=<64 hex digits>")
        out[filename] = digest
    for path in files:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                digest, filename = line.split(maxsplit=1)
                out[Path(filename.lstrip("*")).name] = digest
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit status 1 on a failed or mismatching download."""
    parser = argparse.ArgumentParser(prog="python -m hloc_hndesc.pipelines.download", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("root", type=Path, help="dataset folder (created)")
    parser.add_argument("--sha256", action="append", default=[], help="NAME=HEX expected checksum of a file (repeatable)")
    parser.add_argument("--checksums", action="append", default=[], type=Path, help="sha256sum-format file of expected checksums")
    parser.add_argument("--mirror", help="base URL serving the same file names")
    parser.add_argument("--no-extract", action="store_true", help="keep the archives packed")
    args = parser.parse_args(argv)
    try:
        checksums = parse_checksums(args.sha256, args.checksums)
        download(args.dataset, args.root, checksums, args.mirror, not args.no_extract)
    except (DownloadError, ValueError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
