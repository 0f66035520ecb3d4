"""The wheel carries the export recipes and the shipped assets: targets and the reference model are found from
an installed package, not only a checkout; the build raises no setuptools deprecation warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_copy(dst: Path) -> Path:
    """What the wheel is built from, copied without build outputs."""
    dst.mkdir()
    for f in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy2(ROOT / f, dst / f)
    for d in ("dvt_edge", "export", "apps"):
        shutil.copytree(ROOT / d, dst / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    return dst


@pytest.mark.xdist_group("packaging")
def test_recipes_found_from_installed_wheel(tmp_path):
    src = _source_copy(tmp_path / "src")  # a build/ left in the checkout would hide files the wheel no longer gets
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # setuptools warns before it drops things: e.g. a data folder missing from `packages` (assets)
    assert "BuildBackendWarning" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    wheel = next(tmp_path.glob("dvt_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for t in ("executorch", "onnx", "ort", "coreml"):
        assert f"dvt_edge/recipes/{t}.toml" in names
    # every file of the data folders, whatever its type (package-data patterns silently drop the rest)
    shipped = [f"dvt_edge/{pkg}/{f.name}" for pkg, d in (("assets", "dvt_edge/assets"), ("recipes", "export"))
               for f in sorted((ROOT / d).iterdir()) if f.is_file()]
    assert "dvt_edge/assets/dvt_small_cifar.pt" in shipped and "dvt_edge/assets/MODEL_CARD_dvt_small_cifar.md" in shipped
    assert [f for f in shipped if f not in names] == []
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)  # Apache-2.0 asks for its text with the code
    # one top-level package: the webcam demo is dvt_edge.apps (a top-level "apps" collides with a project's own)
    assert sorted({n.split("/")[0] for n in names if not n.startswith("dvt_edge-")}) == ["dvt_edge"]
    assert [f"dvt_edge/apps/{f.name}" for f in sorted((ROOT / "apps").glob("*.py")) if f"dvt_edge/apps/{f.name}" not in names] == []
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (f"import dvt_edge.export.targets as T; assert str(T.recipe_dir()).startswith({str(site)!r}), T.recipe_dir(); "
            "from dvt_edge.references import DEFAULT_REFERENCE as R; assert R.checkpoint.is_file() and R.card.is_file(), R; "
            f"assert str(R.checkpoint).startswith({str(site)!r}), R.checkpoint; print(sorted(T.TARGETS))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": f"{site}:{ROOT / 'runtime'}", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "['coreml', 'executorch', 'onnx', 'ort']" in r.stdout
    proj = tmp_path / "proj"  # the user's project, with its own apps package
    (proj / "apps").mkdir(parents=True)
    (proj / "apps" / "__init__.py").write_text("")
    r = subprocess.run([sys.executable, "-m", "dvt_edge", "webcam", "--help"], cwd=proj, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": f"{site}:{ROOT / 'runtime'}", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.startswith("usage: dvt-edge webcam ") and "--camera" in r.stdout, r.stderr[-2000:]


@pytest.mark.xdist_group("packaging")
def test_runtime_wheel_is_typed_and_its_hints_resolve(tmp_path):
    """A user's mypy skipped dvt_runtime (no py.typed) and get_type_hints(Bundle.use_calibration) raised NameError
    (Calibration imported for type checkers only)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "runtime", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    site = tmp_path / "site"
    zipfile.ZipFile(next(tmp_path.glob("dvt_runtime-*.whl"))).extractall(site)
    assert (site / "dvt_runtime" / "py.typed").is_file()
    [info] = site.glob("dvt_runtime-*.dist-info")
    meta = (info / "METADATA").read_text()
    assert (info / "licenses" / "LICENSE").is_file() and "Description-Content-Type: text/markdown" in meta and "# dvt-runtime" in meta
    code = ("import inspect, typing, dvt_runtime as R; "
            "[typing.get_type_hints(f) for c in (R.Bundle, R.Calibration, R.LatencyProfile, R.Manifest) "
            " for _, f in inspect.getmembers(c, inspect.isfunction) if not f.__name__.startswith('_')]; "
            "assert inspect.getdoc(R.Bundle.use_profile); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
