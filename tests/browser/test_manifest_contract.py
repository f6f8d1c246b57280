"""The bundle manifest is one contract: what `make bundle` writes parses back into common/manifest_schema.py
unchanged, and a manifest that does not fit is refused with the field named."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from common import manifest_schema
from common.manifest_schema import ManifestError, parse_bundle_manifest, to_json

from .conftest import REPO


@pytest.fixture(scope="module")
def tiny_manifest(web_root) -> dict:
    return json.loads((web_root / "tiny" / "manifest.json").read_text())


def test_written_manifest_round_trips(tiny_manifest):
    contract = parse_bundle_manifest(tiny_manifest)
    assert to_json(contract) == tiny_manifest
    assert list(to_json(contract)) == list(tiny_manifest)  # field order as written
    assert contract.variants[contract.default_variant].chunks


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.pop("preprocessing"), r"missing field 'preprocessing'"),
    (lambda m: m["preprocessing"].update(mean="0.5"), r"preprocessing\.mean: expected a list"),
    (lambda m: m["variants"]["fp32"]["chunks"][0].update(bytes="12"), r"variants\.fp32\.chunks\[0\]\.bytes"),
    (lambda m: m.update(schema="clearcut.bundle/0"), r"schema 'clearcut.bundle/0'"),
    (lambda m: m.update(default_variant="int4"), r"default_variant 'int4'"),
    (lambda m: m["variants"]["fp32"].update(stages=[]), r"either chunks .* or stages"),
    (lambda m: m["variants"]["fp32"].update(coded={"format": "ccw9", "bytes": 1, "sha256": "0" * 64}),
     r"variants\.fp32: coded\.format 'ccw9' is not one of \['ccw1'\]"),
    (lambda m: m["output"].update(extra=1), r"output: unknown field\(s\) \['extra'\]"),
])
def test_a_manifest_that_does_not_fit_is_refused_with_the_field_named(tiny_manifest, damage, message):
    broken = json.loads(json.dumps(tiny_manifest))
    damage(broken)
    with pytest.raises(ManifestError, match=message):
        parse_bundle_manifest(broken, "manifest.json")


def _typescript_interfaces(text: str) -> dict[str, dict[str, bool]]:
    """`interface Name { field?: type; }` → {Name: {field: optional}} (one field per line, as the file keeps it)."""
    interfaces = {}
    for name, body in re.findall(r"export interface (\w+) \{\n(.*?)\n\}", text, re.S):
        fields = re.findall(r"^\s+'?([\w-]+)'?(\??):", body, re.M)
        interfaces[name] = {field: bool(optional) for field, optional in fields}
    return interfaces


def test_manifest_d_ts_declares_the_python_contract():
    declared = _typescript_interfaces((REPO / "web_runtime" / "src" / "manifest.d.ts").read_text())
    contract_classes = [c for c in vars(manifest_schema).values()
                        if dataclasses.is_dataclass(c) and c.__module__ == manifest_schema.__name__]
    assert {c.__name__ for c in contract_classes} <= set(declared), "manifest.d.ts lacks an interface"
    for cls in contract_classes:
        python = {f.name: bool(f.metadata.get("omit_if_none")) for f in dataclasses.fields(cls)}
        assert declared[cls.__name__] == python, cls.__name__


def test_the_demo_zip_writer_ships_as_a_listed_file(web_root, tiny_manifest):
    """fflate (npm, pinned in package.json and the lockfile) is copied into the bundle as `runtime.zip`, listed
    in `files` with its hashes like the runtime, and loaded by the demo page with that integrity."""
    import hashlib

    from web_runtime.build_bundle import ZIP_MODULE, ZIP_PACKAGE

    path = tiny_manifest["runtime"]["zip"]
    data = (web_root / "tiny" / path).read_bytes()
    assert data == (ZIP_PACKAGE / ZIP_MODULE[0]).read_bytes()
    entry = tiny_manifest["files"][path]
    assert (entry["bytes"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert f'href="{path}" integrity="{entry["integrity"]}"' in (web_root / "tiny" / "index.html").read_text()
    package = json.loads((REPO / "web_runtime" / "package.json").read_text())
    lock = json.loads((REPO / "web_runtime" / "package-lock.json").read_text())
    version = tiny_manifest["versions"]["fflate"]
    assert package["devDependencies"]["fflate"] == lock["packages"]["node_modules/fflate"]["version"] == version
