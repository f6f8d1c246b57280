"""The runtime's TypeScript declarations as an integrator's compiler sees them: `tsc --noEmit` (TypeScript from
web_runtime's devDependencies, strict, moduleResolution bundler) on tests/types/consumer.ts, which uses the
documented API and marks what must not compile (e.g. `cut(file)` is a Blob, not ImageData)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TSC = REPO / "web_runtime" / "node_modules" / ".bin" / "tsc"


@pytest.mark.skipif(not TSC.exists(), reason="TypeScript is not installed in web_runtime/node_modules (run `make setup-web`)")
@pytest.mark.parametrize("resolution", ["bundler", "nodenext"])
def test_the_declarations_type_a_consumer(resolution, tmp_path):
    config = tmp_path / "tsconfig.json"
    module = "nodenext" if resolution == "nodenext" else "esnext"
    config.write_text(f'{{"extends": "{REPO / "tests" / "types" / "tsconfig.json"}", '
                      f'"compilerOptions": {{"module": "{module}", "moduleResolution": "{resolution}"}}, '
                      f'"files": ["{REPO / "tests" / "types" / "consumer.ts"}"]}}')
    done = subprocess.run([str(TSC), "-p", str(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
