"""The wheel ships js/stop.js as actwidget/_static/stop.js, and widget/_stop.py finds it there."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel offline (no index, no build isolation) into a temp dir."""
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation"]
    cmd += ["--no-cache-dir", "-q", "-w", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("actwidget-*.whl")
    return whl


def test_wheel_contains_stop_js(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "actwidget/_static/stop.js" in names
        assert "actwidget/widget/_stop.py" in names
        assert zf.read("actwidget/_static/stop.js") == (ROOT / "js" / "stop.js").read_bytes()
    assert not any(name.endswith(".test.js") for name in names)


def test_installed_module_uses_packaged_js(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path)
    spec = importlib.util.spec_from_file_location(
        "_wheel_stop", tmp_path / "actwidget/widget/_stop.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert tmp_path / "actwidget" / "_static" / "stop.js" == module.ESM_PATH
