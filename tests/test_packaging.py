"""The wheel carries the export recipes: targets are found from an installed package, not only a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.xdist_group("packaging")
def test_recipes_found_from_installed_wheel(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("dvt_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for t in ("executorch", "onnx", "ort", "coreml"):
        assert f"dvt_edge/recipes/{t}.toml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (f"import dvt_edge.export.targets as T; assert str(T.recipe_dir()).startswith({str(site)!r}), T.recipe_dir(); "
            "print(sorted(T.TARGETS))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": f"{site}:{ROOT / 'runtime'}", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "['coreml', 'executorch', 'onnx', 'ort']" in r.stdout
