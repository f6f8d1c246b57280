"""Publish a built bundle (`dist/`) to a folder or an S3-compatible bucket, versions side by side.

    python -m web_runtime.publish s3://bucket/prefix [--dist dist] [--dry-run] [--prune] [--public-url URL]
    python -m web_runtime.publish path/to/site [--public-url http://host/site]

Layout: `<prefix>/<version>/...` is a complete copy of the bundle (the runtime resolves every file relative to
the manifest URL), `<version>` = `<runtime version>-<12 hex of a digest of every file's path and sha256>`, so a
version folder never changes once written; `<prefix>/latest.json` (`version`, `manifest`, `module`) names the
current one. Upload order: model chunks, the other files, the version's manifest.json, its index.html, then
latest.json: an interrupted publish leaves the previous version and latest.json as they were, and a re-run
finishes the job (objects already present with the same sha256 and headers are skipped). Compressible files
are stored brotli-compressed (`Content-Encoding: br`) in a bucket, and get a `<name>.br` sibling in a folder.
After the upload every object is fetched back over HTTP(S) like a browser would, and checked.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import brotli
from tqdm import tqdm

from common.contract import BUNDLE_SCHEMA
from common.files import atomic_write_bytes, sha256_file
from models.weights import cache_dir
from web_runtime.build_bundle import (CACHE_IMMUTABLE, CACHE_SHORT, CROSS_ORIGIN_ISOLATION, CSP, MIME_TYPES,
                                      PUBLISHED_VERSION_RE, nginx_locations, nginx_types)

LATEST = "latest.json"
ENTRY_POINTS = ("manifest.json", "index.html")  # revalidated by browsers and CDNs; uploaded last, in this order
HOST_CONFIGS = {"_headers", "nginx.conf.snippet"}  # the flat bundle's host configs: wrong for a versioned layout
VERSION = re.compile(PUBLISHED_VERSION_RE)
DEFAULT_KEEP = 3

# brotli: wasm, JS, JSON, model chunks and text, window 2^24. Quality 5 by default: measured on IS-Net's bundle
# (CPU s per MB at 5 / 9, bytes saved at 5 / 9): fp32 chunks 0.26 / 2.9, 45.1 / 46.6 %; int8w 0.03 / 0.38, 12.7 %
# both; onnxruntime's wasm 0.06 / 0.79, 79.9 / 81.2 %. Results are cached by sha256: each file is compressed once.
BROTLI_SUFFIXES = {".wasm", ".js", ".mjs", ".json", ".bin", ".css", ".html", ".ts"}
BROTLI_QUALITY = 5
BROTLI_MIN_SAVING = 0.03  # below this the decode work is not worth it: the file is stored as it is

CONTENT_TYPES = {f".{ext}": mime for mime, exts in MIME_TYPES.items() for ext in exts}
CONTENT_TYPES[".html"] = "text/html; charset=utf-8"

# Bucket CORS: any page may fetch the bundle (GET/HEAD, no credentials) and read its length and encoding.
S3_CORS = {"CORSRules": [{
    "AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"], "AllowedHeaders": ["*"],
    "ExposeHeaders": ["Content-Length", "Content-Encoding", "Content-Type", "ETag"], "MaxAgeSeconds": 86400,
}]}


class PublishError(RuntimeError):
    """The bundle cannot be published to this destination; the message says why and what to do."""


def content_type(key: str) -> str:
    return CONTENT_TYPES.get(PurePosixPath(key).suffix, "application/octet-stream")


def cache_control(key: str) -> str:
    """`no-cache` for latest.json and each version's entry points; everything else in a version is immutable."""
    return CACHE_SHORT if key == LATEST or key.split("/", 1)[-1] in ENTRY_POINTS else CACHE_IMMUTABLE


KINDS = {".wasm": "wasm", ".js": "js", ".mjs": "js", ".json": "json", ".bin": "chunks"}


def kind(key: str) -> str:
    """The row of the brotli report a file counts in: wasm, js, json, chunks, text (html, css, d.ts)."""
    return "chunks" if "/chunks/" in f"/{key}" else KINDS.get(PurePosixPath(key).suffix, "text")


@dataclass(frozen=True)
class Item:
    """One object of a publish: `key` relative to the destination's prefix, its bytes in `source` or `data`."""
    key: str
    bytes: int
    sha256: str
    source: Path | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        return self.data if self.data is not None else self.source.read_bytes()


@dataclass
class Bundle:
    root: Path
    manifest: dict
    version: str
    items: list[Item]  # the version's objects in upload order

    @property
    def latest(self) -> Item:
        data = (json.dumps({"version": self.version, "manifest": f"{self.version}/manifest.json",
                            "module": f"{self.version}/{self.manifest['runtime']['module']}"}, indent=1) + "\n").encode()
        return Item(LATEST, len(data), hashlib.sha256(data).hexdigest(), data=data)


def _rank(rel: str) -> int:
    """Upload order inside a version: content-addressed chunks, the other files, then the entry points."""
    if rel in ENTRY_POINTS:
        return 2 + ENTRY_POINTS.index(rel)
    return 0 if rel.startswith("chunks/") else 1


def listed_files(manifest: dict) -> dict[str, dict]:
    """Every file the bundle manifest lists with its bytes and sha256: runtime and onnxruntime files, model chunks."""
    listed = dict(manifest.get("files", {}))
    for variant in manifest.get("variants", {}).values():
        listed.update({c["path"]: c for c in variant_chunks(variant)})
    return listed


def variant_chunks(variant: dict) -> list[dict]:
    """A bundle variant's chunks in order: its one graph's (or coded container's), or each stage's in turn."""
    return [c for part in variant.get("stages") or [variant] for c in part.get("chunks") or []]


def read_bundle(root: Path) -> Bundle:
    """The bundle in `root`, every file the manifest lists checked against its size and sha256."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise PublishError(f"{root} is not a folder: build the bundle first (`make bundle`, or `--dist DIR`)")
    if not manifest_path.is_file():
        raise PublishError(f"{manifest_path} missing: {root} is not a ClearCut bundle; run `make bundle` first")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise PublishError(f"{manifest_path} is not valid JSON ({err}): rebuild it with `make bundle`") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != BUNDLE_SCHEMA or "runtime" not in manifest:
        raise PublishError(f"{manifest_path} is not a {BUNDLE_SCHEMA} manifest: rebuild it with `make bundle`")
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in HOST_CONFIGS or rel.endswith(".br") or any(part.startswith(".") for part in rel.split("/")):
            continue
        items.append((rel, path, path.stat().st_size, sha256_file(path)))
    found = {rel: (size, digest) for rel, _, size, digest in items}
    for rel, entry in listed_files(manifest).items():
        if rel not in found:
            raise PublishError(f"{root / rel} missing (listed in {manifest_path}): rebuild with `make bundle`")
        if found[rel] != (entry["bytes"], entry["sha256"]):
            raise PublishError(f"{root / rel}: {found[rel][0]} bytes, sha256 {found[rel][1]}; {manifest_path} lists "
                               f"{entry['bytes']} bytes, sha256 {entry['sha256']}: rebuild with `make bundle`")
    digest = hashlib.sha256("".join(f"{rel}\t{sha}\n" for rel, _, _, sha in items).encode()).hexdigest()
    runtime = re.sub(r"[^0-9A-Za-z.+_]", "_", str(manifest.get("versions", {}).get("clearcut-runtime", "bundle")))
    version = f"{runtime}-{digest[:12]}"
    ordered = sorted(items, key=lambda it: (_rank(it[0]), it[0]))
    return Bundle(root, manifest, version, [Item(f"{version}/{rel}", size, sha, source=path)
                                            for rel, path, size, sha in ordered])


class Compressor:
    """Stored body and Content-Encoding per item: brotli when it saves at least 3 %, cached by sha256 on disk."""

    def __init__(self, quality: int | None, cache: Path | None = None):
        self.quality = quality
        self.cache = (cache or cache_dir()) / "brotli"

    def _cached(self, item: Item) -> Path | None:
        if self.quality is None or PurePosixPath(item.key).suffix not in BROTLI_SUFFIXES or item.bytes < 256:
            return None
        stem = self.cache / f"{item.sha256}.q{self.quality}"
        br, raw = stem.with_suffix(stem.suffix + ".br"), stem.with_suffix(stem.suffix + ".raw")
        if not br.exists() and not raw.exists():
            packed = brotli.compress(item.read(), quality=self.quality, lgwin=24)
            # an empty `.raw` remembers that compressing this file is not worth it
            path, data = (br, packed) if len(packed) <= item.bytes * (1 - BROTLI_MIN_SAVING) else (raw, b"")
            try:
                atomic_write_bytes(path, data)
            except OSError as err:
                raise PublishError(f"cannot write the brotli cache {self.cache}: {err}; point CLEARCUT_CACHE at a "
                                   "writable folder") from None
        return br if br.exists() else None

    def size(self, item: Item) -> tuple[int, str | None]:
        packed = self._cached(item)
        return (packed.stat().st_size, "br") if packed else (item.bytes, None)

    def body(self, item: Item) -> tuple[bytes, str | None]:
        packed = self._cached(item)
        return (packed.read_bytes(), "br") if packed else (item.read(), None)


# ---- destinations ------------------------------------------------------------------------------------------

class Folder:
    """A local folder for any static host; a compressed body goes to a `<name>.br` sibling."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.name = str(self.root)
        self.default_public_url = None  # verified from the disk unless a server in front is named

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise PublishError(f"{self.root} exists and is not a folder: choose another destination")

    def present(self, item: Item, encoding: str | None) -> bool:
        path = self.root / item.key
        return (path.is_file() and path.stat().st_size == item.bytes and sha256_file(path) == item.sha256
                and (encoding is None or path.with_name(path.name + ".br").is_file()))

    def put(self, item: Item, body: bytes, encoding: str | None) -> None:
        path = self.root / item.key
        if encoding:  # the sibling first: a present plain file means both are complete
            self._write(path.with_name(path.name + ".br"), body)
        self._write(path, body if encoding is None else item.read())

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        atomic_write_bytes(path, data)
        path.chmod(0o644)

    def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except OSError:
            return None

    def donors(self) -> dict[str, tuple[str, str]]:
        return {}  # a local copy costs what writing from the bundle costs

    def versions(self) -> dict[str, float | None]:
        """Version folders and when their manifest was written (None: no manifest, an unfinished publish)."""
        if not self.root.is_dir():
            return {}
        return {d.name: (d / "manifest.json").stat().st_mtime if (d / "manifest.json").is_file() else None
                for d in self.root.iterdir() if d.is_dir() and VERSION.fullmatch(d.name)}

    def delete_version(self, version: str) -> None:
        shutil.rmtree(self.root / version)

    def finish(self, manifest: dict) -> None:
        """Host configs for the versioned layout at the folder's root (nginx snippet, Netlify/Pages `_headers`)."""
        self._write(self.root / "nginx.conf.snippet", (NGINX_BROTLI_NOTE + nginx_types()
                                                        + nginx_locations(manifest["runtime"]["ort_dir"])).encode())
        self._write(self.root / "_headers", published_headers_file(sorted(self.versions())).encode())


NGINX_BROTLI_NOTE = (
    "# Include inside a `server {}` whose root is this folder. To serve the <name>.br siblings to browsers that\n"
    "# accept br (Debian: apt-get install libnginx-mod-http-brotli-static), add to that server block:\n"
    "#     brotli_static on;  gzip_vary on;\n")


def published_headers_file(versions: list[str]) -> str:
    """Netlify / Cloudflare Pages `_headers` for a published folder: one splat per rule, one Cache-Control per path."""
    rules = [("/*", dict(CROSS_ORIGIN_ISOLATION)), (f"/{LATEST}", {"Cache-Control": CACHE_SHORT}),
             ("/*.wasm", {"Content-Type": "application/wasm"})]
    page = {"Cache-Control": CACHE_SHORT, "Content-Security-Policy": CSP}
    for v in versions:
        rules += [(f"/{v}/", page), (f"/{v}/index.html", page), (f"/{v}/manifest.json", {"Cache-Control": CACHE_SHORT}),
                  (f"/{v}/chunks/*", {"Cache-Control": CACHE_IMMUTABLE, "Content-Type": "application/octet-stream"}),
                  (f"/{v}/ort-*", {"Cache-Control": CACHE_IMMUTABLE})]
        rules += [(f"/{v}/*.{ext}", {"Cache-Control": CACHE_IMMUTABLE}) for ext in ("js", "css", "ts")]
    return "".join(f"{path}\n" + "".join(f"  {k}: {val}\n" for k, val in headers.items()) for path, headers in rules)


class Bucket:
    """An S3-compatible bucket through boto3 (AWS S3, Cloudflare R2, MinIO, SeaweedFS, ...)."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None):
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ProfileNotFound

        self.bucket, self.prefix = bucket, prefix.strip("/")
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        try:
            session = boto3.Session(profile_name=profile or None)
        except ProfileNotFound as err:
            raise PublishError(f"{err}: name a profile from ~/.aws/config or set AWS_ACCESS_KEY_ID") from None
        # boto3 >= 1.36 sends CRC32 trailers by default, which R2 and MinIO reject: checksums only on request,
        # and each PUT carries its own SHA-256.
        config = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required",
                        connect_timeout=10, read_timeout=120, retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"} if endpoint_url else None)
        try:
            self.client = session.client("s3", endpoint_url=endpoint_url or None, config=config,
                                         region_name=region or session.region_name or "us-east-1")
        except (BotoCoreError, ValueError) as err:
            raise PublishError(f"cannot create an S3 client for endpoint {endpoint_url}: {err}") from None
        self.endpoint = self.client.meta.endpoint_url.rstrip("/")
        self.name = f"s3://{bucket}/{self.prefix}"
        self.default_public_url = "/".join(p for p in (self.endpoint, bucket, self.prefix) if p)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, operation: str, **kwargs):
        """One S3 call with its failures turned into messages that name the bucket, endpoint and remedy."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, \
            ConnectTimeoutError, ReadTimeoutError

        where = f"bucket {self.bucket} at endpoint {self.endpoint}"
        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except NoCredentialsError:
            raise PublishError(f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                               "or AWS_PROFILE / --profile") from None
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as err:
            raise PublishError(f"cannot reach the S3 endpoint {self.endpoint}: {err}; check --endpoint-url / "
                               "AWS_ENDPOINT_URL_S3 and the network") from None
        except ClientError as err:
            error = err.response.get("Error", {})
            code, status = error.get("Code", "?"), err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = f"{code}: {error.get('Message') or status}"
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                        "AccessDenied", "InvalidClientTokenId", "403", "Forbidden", "Unauthorized"):
                raise PublishError(f"S3 refused the credentials for {where}: {detail} (key id, secret and "
                                   f"permissions: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)") from None
            if code == "NoSuchBucket":
                raise PublishError(f"{where} does not exist ({detail}): create it first, or check the name") from None
            raise PublishError(f"S3 {operation} on {where} failed: {detail}") from None

    def check(self) -> None:
        self._call("list_objects_v2", Prefix=self._key(""), MaxKeys=1)

    def _head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            return self._call("head_object", Key=self._key(key))  # raises with the explained error

    def present(self, item: Item, encoding: str | None) -> bool:
        head = self._head(item.key)
        return bool(head) and head.get("Metadata", {}).get("sha256") == item.sha256 and \
            head.get("ContentType") == content_type(item.key) and head.get("CacheControl") == cache_control(item.key)

    def put(self, item: Item, body: bytes, encoding: str | None) -> None:
        extra = {"ContentEncoding": encoding} if encoding else {}
        self._call("put_object", Key=self._key(item.key), Body=body, ContentType=content_type(item.key),
                   CacheControl=cache_control(item.key), Metadata={"sha256": item.sha256},
                   ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(), **extra)

    def read(self, key: str) -> bytes | None:
        """The object's bytes, decoded when it is stored brotli-compressed."""
        if self._head(key) is None:
            return None
        response = self._call("get_object", Key=self._key(key))
        body = response["Body"].read()
        return brotli.decompress(body) if response.get("ContentEncoding") == "br" else body

    def donors(self) -> dict[str, tuple[str, str]]:
        """`rel -> (key, sha256)` of the files the current version (latest.json's) lists: a new version's
        unchanged model chunks and onnxruntime files are copied from there inside the store, not uploaded."""
        try:
            version = json.loads(self.read(LATEST) or b"{}").get("version", "")
            manifest = json.loads(self.read(f"{version}/manifest.json") or b"{}") if VERSION.fullmatch(version) else {}
        except (ValueError, AttributeError, brotli.error):
            return {}  # no usable previous version: everything is uploaded
        return {rel: (f"{version}/{rel}", entry["sha256"]) for rel, entry in listed_files(manifest).items()}

    def copy(self, source: str, item: Item, encoding: str | None) -> bool:
        """Server-side copy of `source` to `item.key` when `source` holds the same bytes with the same headers."""
        head = self._head(source)
        if not head or head.get("Metadata", {}).get("sha256") != item.sha256 or head.get("ContentEncoding") != encoding \
                or (head.get("ContentType"), head.get("CacheControl")) != (content_type(item.key), cache_control(item.key)):
            return False
        self._call("copy_object", Key=self._key(item.key), CopySource={"Bucket": self.bucket, "Key": self._key(source)},
                   MetadataDirective="COPY")
        return True

    def _keys(self, prefix: str) -> list[dict]:
        objects, token = [], None
        while True:
            page = self._call("list_objects_v2", Prefix=self._key(prefix), **({"ContinuationToken": token} if token else {}))
            objects += page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not token:
                return objects

    def versions(self) -> dict[str, float | None]:
        found: dict[str, float | None] = {}
        for obj in self._keys(""):
            parts = obj["Key"][len(self._key("")):].split("/", 1)
            if len(parts) == 2 and VERSION.fullmatch(parts[0]):
                stamp = obj["LastModified"].timestamp() if parts[1] == "manifest.json" else None
                found[parts[0]] = stamp if stamp is not None else found.get(parts[0])
        return found

    def delete_version(self, version: str) -> None:
        keys = [{"Key": o["Key"]} for o in self._keys(f"{version}/")]
        for start in range(0, len(keys), 1000):
            self._call("delete_objects", Delete={"Objects": keys[start:start + 1000], "Quiet": True})

    def set_cors(self) -> None:
        self._call("put_bucket_cors", CORSConfiguration=S3_CORS)

    def finish(self, manifest: dict) -> None:
        pass  # headers live on each object


def open_destination(dest: str, endpoint_url: str | None = None, region: str | None = None,
                     profile: str | None = None) -> Folder | Bucket:
    if dest.startswith("s3://"):
        bucket, _, prefix = dest[len("s3://"):].partition("/")
        if not bucket:
            raise PublishError(f"{dest}: no bucket name; use s3://bucket/prefix")
        return Bucket(bucket, prefix, endpoint_url, region, profile)
    if "://" in dest:
        raise PublishError(f"{dest}: unsupported destination; use s3://bucket/prefix or a folder path")
    return Folder(Path(dest))


# ---- verification --------------------------------------------------------------------------------------------

def fetch(url: str, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """GET like a browser: br/gzip accepted and decoded; returns status, lower-cased headers, decoded body."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "br, gzip", "Origin": "https://example.org"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, body = response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, b""
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding == "br":
        body = brotli.decompress(body)
    elif encoding == "gzip":
        body = gzip.decompress(body)
    return status, headers, body


def _content_problems(where: str, item: Item, data: bytes) -> list[str]:
    digest = hashlib.sha256(data).hexdigest()
    if len(data) == item.bytes and digest == item.sha256:
        return []
    return [f"{where}: {len(data)} bytes, sha256 {digest[:16]}…; expected {item.bytes} bytes, sha256 "
            f"{item.sha256[:16]}… (altered or damaged: re-publish with --force)"]


def check_response(item: Item, status: int, headers: dict[str, str], body: bytes, encoding: str | None) -> list[str]:
    """What is wrong with one object as served (empty when nothing is)."""
    if status != 200:
        return [f"{item.key}: HTTP {status}"]
    problems = _content_problems(item.key, item, body)
    served_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if served_type != content_type(item.key).split(";")[0]:
        problems.append(f"{item.key}: Content-Type {headers.get('content-type')!r}, expected {content_type(item.key)!r}")
    served_cache = ", ".join(p.strip() for p in headers.get("cache-control", "").split(","))
    if served_cache != cache_control(item.key):
        problems.append(f"{item.key}: Cache-Control {headers.get('cache-control')!r}, expected {cache_control(item.key)!r}")
    if encoding and headers.get("content-encoding") != encoding:
        problems.append(f"{item.key}: Content-Encoding {headers.get('content-encoding')!r}, expected {encoding!r}")
    return problems


def verify_http(base_url: str, planned: list[tuple[Item, str | None]]) -> tuple[list[str], list[str]]:
    """Fetch every object back from `base_url` (latest.json last in `planned`); returns (problems, warnings).
    Checking the version's manifest (by sha256) and every other object of the version checks every object the
    manifest lists."""
    base = base_url.rstrip("/") + "/"
    warnings = []

    def one(entry: tuple[Item, str | None]) -> tuple[int | None, list[str]]:
        item, encoding = entry
        try:
            status, headers, body = fetch(base + item.key)
        except (OSError, brotli.error, EOFError, ValueError) as err:
            return None, [f"{item.key}: cannot fetch {base + item.key}: {err}"]
        if item.key == LATEST and status == 200 and "access-control-allow-origin" not in headers:
            warnings.append(f"{base}{LATEST}: no Access-Control-Allow-Origin: pages on other origins cannot fetch "
                            "the bundle (apply the CORS rules: --set-cors, or --print-cors)")
        return status, check_response(item, status, headers, body, encoding)

    status, problems = one(planned[-1])
    if status in (401, 403):  # one message, not one per object
        return [f"{base}{LATEST}: HTTP {status}: this URL is not publicly readable; pass the URL browsers use with "
                "--public-url (R2: the r2.dev URL or the bucket's custom domain), or --no-verify"], warnings
    with ThreadPoolExecutor(4) as pool:
        problems += [p for _, found in pool.map(one, planned[:-1]) for p in found]
    return problems, warnings


def verify_folder(folder: Folder, planned: list[tuple[Item, str | None]]) -> list[str]:
    """Without a server in front: every file and `.br` sibling on disk decodes to the published bytes."""
    problems = []
    for item, encoding in planned:
        path = folder.root / item.key
        variants = [(path, lambda b: b)] + ([(path.with_name(path.name + ".br"), brotli.decompress)] if encoding else [])
        for file, decode in variants:
            try:
                data = decode(file.read_bytes())
            except (OSError, brotli.error) as err:
                problems.append(f"{file}: {err}")
                continue
            problems += _content_problems(str(file), item, data)
    return problems


# ---- publish -------------------------------------------------------------------------------------------------

@dataclass
class Report:
    version: str
    destination: str
    public_url: str | None = None
    module: str = "clearcut.js"
    uploaded: int = 0
    uploaded_bytes: int = 0
    copied: int = 0  # server-side copies from the previous version: no bytes sent
    copied_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    verified: int = 0
    pruned: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    brotli: dict[str, list[int]] = field(default_factory=dict)  # kind -> [raw bytes, stored bytes]
    seconds: float = 0.0

    def urls(self, base: str) -> dict[str, str]:
        base = base.rstrip("/")
        return {"module": f"{base}/{self.version}/{self.module}", "manifestUrl": f"{base}/{self.version}/manifest.json",
                "latest": f"{base}/{LATEST}", "demo": f"{base}/{self.version}/index.html"}


def prune_versions(target: Folder | Bucket, current: str, keep: int) -> list[str]:
    """Delete every version folder but the current one (latest.json's) and the `keep` most recently published;
    a folder without a manifest (an unfinished publish) is not a published version and goes too."""
    versions = target.versions()
    published = sorted((v for v, stamp in versions.items() if stamp is not None), key=lambda v: versions[v], reverse=True)
    kept = {current, *published[:keep]}
    doomed = sorted(v for v in versions if v not in kept)
    for version in doomed:
        target.delete_version(version)
    return doomed


@dataclass
class Step:
    """What a publish does with one object."""
    item: Item
    stored: int  # bytes as stored: brotli-compressed when `encoding` is "br"
    encoding: str | None
    present: bool  # already at the destination with the same sha256 and headers: skipped
    copy_from: str | None = None  # a key in the bucket holding the same bytes: copied there, not uploaded

    @property
    def action(self) -> str:
        return "skip" if self.present else "copy" if self.copy_from else "upload"


def plan(bundle: Bundle, target: Folder | Bucket, compressor: Compressor, force: bool = False) -> list[Step]:
    """One step per object in upload order, latest.json last. `force`: every byte from the bundle."""
    donors = {} if force else target.donors()
    steps = []
    for item in bundle.items + [bundle.latest]:
        stored, encoding = compressor.size(item)
        donor = donors.get(item.key.split("/", 1)[-1])
        steps.append(Step(item, stored, encoding, not force and target.present(item, encoding),
                          donor[0] if donor and donor[1] == item.sha256 and donor[0] != item.key else None))
    return steps


def brotli_savings(steps: list[Step]) -> dict[str, list[int]]:
    """kind -> [raw bytes, stored bytes] over the compressible files."""
    rows: dict[str, list[int]] = {}
    for step in steps:
        if step.encoding or PurePosixPath(step.item.key).suffix in BROTLI_SUFFIXES:
            row = rows.setdefault(kind(step.item.key), [0, 0])
            row[0] += step.item.bytes
            row[1] += step.stored
    return rows


def plan_lines(steps: list[Step]) -> list[str]:
    lines = [f"{step.action:<6} {step.item.key}  {step.item.bytes:>11,} B"
             + (f" -> {step.stored:>11,} B br" if step.encoding else " " * 17) + f"  {cache_control(step.item.key)}"
             for step in steps]
    count = {action: [s for s in steps if s.action == action] for action in ("upload", "copy", "skip")}
    return lines + [f"dry run: {len(count['upload'])} objects ({sum(s.stored for s in count['upload']):,} bytes) to "
                    f"upload, {len(count['copy'])} to copy inside the store, {len(count['skip'])} already present; "
                    "nothing was written"]


def upload(steps: list[Step], target: Folder | Bucket, compressor: Compressor, report: Report, manifest: dict,
           on_object: Callable[[Item], None] | None = None) -> None:
    """Carry out the steps in order; the destination's host configs are written just before latest.json."""
    with tqdm(total=sum(s.stored for s in steps if not s.present), unit="B", unit_scale=True,
              desc=f"publish {report.version}", disable=None, leave=False) as bar:
        for step in steps:
            item = step.item
            if item.key == LATEST:
                target.finish(manifest)
            if step.present:
                report.skipped += 1
                report.skipped_bytes += step.stored
                continue
            if step.copy_from and target.copy(step.copy_from, item, step.encoding):
                report.copied += 1
                report.copied_bytes += step.stored
            else:
                body, encoding = compressor.body(item)
                try:
                    target.put(item, body, encoding)
                except (OSError, PublishError) as err:
                    raise PublishError(f"writing {item.key} to {target.name} failed: {err}; re-run to finish "
                                       "(the previous version and latest.json are untouched)") from None
                report.uploaded += 1
                report.uploaded_bytes += len(body)
            bar.update(step.stored)
            if on_object:
                on_object(item)


def publish(dist: Path, dest: str, *, dry_run: bool = False, prune: bool = False, keep: int = DEFAULT_KEEP,
            public_url: str | None = None, verify: bool = True, brotli_quality: int | None = BROTLI_QUALITY,
            force: bool = False, set_cors: bool = False, s3: dict | None = None,
            on_object: Callable[[Item], None] | None = None, log: Callable[[str], None] = print) -> Report:
    """Publish the bundle in `dist` to `dest` (a folder or s3://bucket/prefix); see the module docstring."""
    started = time.monotonic()
    bundle = read_bundle(Path(dist))
    target = open_destination(dest, **(s3 or {}))
    target.check()
    if set_cors and not isinstance(target, Bucket):
        raise PublishError("--set-cors applies to s3:// destinations; a folder's CORS headers are in _headers / nginx")
    report = Report(bundle.version, target.name, public_url or target.default_public_url,
                    module=bundle.manifest["runtime"]["module"])
    compressor = Compressor(brotli_quality)
    steps = plan(bundle, target, compressor, force)
    report.brotli = brotli_savings(steps)
    if dry_run:
        for line in plan_lines(steps):
            log(line)
    else:
        if set_cors:
            target.set_cors()
        upload(steps, target, compressor, report, bundle.manifest, on_object)
        if prune:
            report.pruned = prune_versions(target, bundle.version, keep)
            if report.pruned:
                target.finish(bundle.manifest)
        if verify:
            planned = [(s.item, s.encoding) for s in steps]
            if report.public_url:
                # A bucket stores the encoding with the object; a server in front of a folder picks its own.
                expect = isinstance(target, Bucket)
                report.problems, report.warnings = verify_http(report.public_url, [
                    (item, encoding if expect else None) for item, encoding in planned])
            else:
                report.problems = verify_folder(target, planned)
            report.verified = len(planned)
    report.seconds = time.monotonic() - started
    return report


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def summary(report: Report) -> list[str]:
    lines = [f"published {report.version} to {report.destination} in {report.seconds:.1f} s: "
             f"{report.uploaded} objects uploaded ({_mb(report.uploaded_bytes)}), "
             + (f"{report.copied} copied inside the store ({_mb(report.copied_bytes)}), " if report.copied else "")
             + f"{report.skipped} already present "
             f"({_mb(report.skipped_bytes)}), {report.verified} verified"
             + (f" over {report.public_url}" if report.public_url and report.verified else "")]
    saved = [f"{k} {_mb(raw)} -> {_mb(stored)} (-{1 - stored / raw:.0%})" for k, (raw, stored) in
             sorted(report.brotli.items()) if raw]
    if saved:
        lines.append("brotli: " + ", ".join(saved))
    if report.pruned:
        lines.append(f"pruned {len(report.pruned)} old version(s): {', '.join(report.pruned)}")
    if report.public_url:
        lines += [f"  {name:<12} {url}" for name, url in report.urls(report.public_url).items()]
    else:
        lines += [f"  {name:<12} {url}  (relative to the URL the folder is served at)"
                  for name, url in report.urls(".").items()]
    lines += [f"warning: {w}" for w in report.warnings]
    return lines


def main(argv: list[str] | None = None, prog: str = "web_runtime.publish") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("dest", nargs="?", help="s3://bucket/prefix or a folder")
    parser.add_argument("--dist", default="dist", help="the bundle folder (default: dist)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan with byte counts; write nothing")
    parser.add_argument("--prune", action="store_true",
                        help="delete versions other than the new one and the --keep most recent")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP, help=f"versions --prune keeps (default {DEFAULT_KEEP})")
    parser.add_argument("--public-url", help="where browsers fetch the destination "
                        "(default: the endpoint's path-style URL for s3://; the files on disk for a folder)")
    parser.add_argument("--no-verify", action="store_true", help="skip fetching everything back after the upload")
    parser.add_argument("--force", action="store_true", help="upload even objects that are already present")
    parser.add_argument("--brotli-quality", type=int, default=BROTLI_QUALITY, help="0-11 (default %(default)s)")
    parser.add_argument("--no-brotli", action="store_true", help="store every file uncompressed")
    parser.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / AWS)")
    parser.add_argument("--region", help="S3 region (default: AWS_REGION / the profile's / us-east-1)")
    parser.add_argument("--profile", help="AWS profile (default: AWS_PROFILE)")
    parser.add_argument("--set-cors", action="store_true", help="apply the CORS rules to the bucket (PutBucketCors)")
    parser.add_argument("--print-cors", action="store_true", help="print the bucket CORS rules (S3/R2 JSON) and exit")
    args = parser.parse_args(argv)
    if args.print_cors:
        print(json.dumps(S3_CORS, indent=2))
        return 0
    if not args.dest:
        parser.error("a destination is required: s3://bucket/prefix or a folder")
    if not 0 <= args.brotli_quality <= 11:
        parser.error("--brotli-quality must be 0..11")
    try:
        report = publish(Path(args.dist), args.dest, dry_run=args.dry_run, prune=args.prune, keep=args.keep,
                         public_url=args.public_url, verify=not args.no_verify, force=args.force,
                         brotli_quality=None if args.no_brotli else args.brotli_quality, set_cors=args.set_cors,
                         s3={"endpoint_url": args.endpoint_url, "region": args.region, "profile": args.profile})
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.dry_run:
        return 0
    print("\n".join(summary(report)))
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.problems:
        print(f"error: {len(report.problems)} problem(s) in what {report.public_url or report.destination} serves",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
