"""dvt_runtime's core must import and work with torch unimportable (device installs have none)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test ({name})")
    sys.meta_path.insert(0, _Block())
    """
)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": f"{ROOT / 'runtime'}", "PATH": "/usr/bin:/bin"},
    )


def test_blocker_really_blocks_torch():
    r = run_without_torch("import torch")
    assert r.returncode != 0 and "blocked" in r.stderr


def test_runtime_core_imports_without_torch():
    r = run_without_torch(
        """
        import numpy as np
        import dvt_runtime
        from dvt_runtime.preprocess import Preprocess
        x = Preprocess().apply(np.zeros((40, 30, 3), np.uint8))
        assert x.shape == (1, 28, 28) and x.dtype == np.float32
        assert "torch" not in sys.modules
        print("ok", dvt_runtime.__version__)
        """
    )
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_executorch_without_torch_names_torch_and_its_pin():
    """executorch declares no torch requirement: a missing torch is named, with the pin, not a bare 'install the extra'."""
    r = run_without_torch(
        """
        import importlib.abc, sys
        class _NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, _NoTorch())
        from dvt_runtime.backends import BackendUnavailable, import_backend
        try:
            import_backend("executorch")
        except BackendUnavailable as e:
            print("MSG", e)
        """
    )
    assert r.returncode == 0, r.stderr
    assert "needs torch" in r.stdout and "torch==2.13.0" in r.stdout and "pip install executorch==1.5.1 torch==2.13.0" in r.stdout
    assert "pip install './runtime[executorch]'" in r.stdout, r.stdout


def test_runtime_extra_for_executorch_pins_the_torch_it_needs():
    import tomllib

    extras = tomllib.loads((ROOT / "runtime" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = [d for d in main if d.startswith("torch")]
    assert torch_pin == ["torch==2.13.0"] and torch_pin[0] in extras["executorch"], extras
    # the packages an error names for each extra are the extra's (dvt-runtime is not on an index: the extra alone fails)
    from dvt_runtime.backends import EXTRAS

    assert {k: list(v) for k, v in EXTRAS.items()} == extras


def test_runtime_imports_and_runs_without_posix_only_modules(onnx_bundle, tmp_path):
    """A Windows laptop has no ``resource``, ``fcntl``, ``pwd`` or ``termios``: ``import resource`` at the top of
    dvt_runtime.device had made every ``import dvt_runtime`` fail there. Blocked here, every module imports, a bundle
    answers and a profile is taken (no peak memory recorded; no locks held)."""
    r = run_without_torch(f"""
        import importlib.abc, pkgutil
        class _Posix(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name in ("resource", "fcntl", "pwd", "grp", "termios"):
                    raise ImportError(f"no module named {{name!r}} (blocked: Windows has none)")
        sys.meta_path.insert(0, _Posix())
        for m in ("resource", "fcntl", "pwd", "grp", "termios"):
            sys.modules.pop(m, None)
        import numpy as np
        import dvt_runtime
        for info in pkgutil.iter_modules(dvt_runtime.__path__):
            if info.name != "__main__":  # that one runs the command
                importlib.import_module("dvt_runtime." + info.name)
        from dvt_runtime import Bundle
        from dvt_runtime.profile import profile_bundle
        b = Bundle.open({str(onnx_bundle)!r})
        p = b.predict(np.zeros((28, 28), np.uint8))
        prof = profile_bundle(b, warmup=1, runs=8, progress=False)
        prof.save({str(tmp_path / "p.json")!r})
        assert "resource" not in sys.modules and "fcntl" not in sys.modules
        print("ok", p.class_name, prof.peak_rss_mb)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ok" in r.stdout and r.stdout.strip().endswith("None")


def test_names_moved_to_console_still_import_from_io_with_a_warning():
    import warnings

    import dvt_runtime.console as console
    import dvt_runtime.io as dio

    with pytest.warns(DeprecationWarning, match=r"dvt_runtime\.io\.run_cli moved to dvt_runtime\.console\.run_cli"):
        from dvt_runtime.io import run_cli
    assert run_cli is console.run_cli
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from dvt_runtime.io import atomic_write  # noqa: F401  (still io's own: no warning)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        dio.nothing  # noqa: B018


def test_dvt_edge_help_and_the_webcam_need_no_torch():
    """``dvt-edge --help`` and ``dvt-edge webcam`` (a torch-free demo) imported torch through ``dvt_edge/__init__`` (1.2 s of
    a 2 s --help): its model and checkpoint names now load on first use. `dvt-edge help train` gives train's help; usage
    lines name the command as typed."""
    code = f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from dvt_edge.cli import main
        import dvt_edge
        assert dvt_edge.__version__ and "DVT" in dir(dvt_edge)
        for argv in (["--help"], ["webcam", "--help"]):
            try:
                main(argv)
            except SystemExit as e:
                assert e.code == 0, (argv, e.code)
        assert "torch" not in sys.modules
        try:
            dvt_edge.create_model
        except ImportError as e:
            print("lazy:", e)
    """
    r = run_without_torch(code)
    assert r.returncode == 0 and "usage: dvt-edge webcam " in r.stdout and "lazy: torch is blocked" in r.stdout, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "dvt_edge", "help", "zoo"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: dvt-edge zoo [-h]"), (r.stdout[:300], r.stderr[-1000:])
    r = subprocess.run([sys.executable, "-m", "dvt_edge", "evaluate", "--nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "dvt-edge evaluate: error: the following arguments are required" in r.stderr, r.stderr[-1000:]
    # the README's form: dvt_edge.models.register_model(...) after `import dvt_edge` (its submodules load on first use)
    r = subprocess.run([sys.executable, "-c", "import dvt_edge; print(dvt_edge.models.register_model.__name__, 'models' in dir(dvt_edge))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["register_model", "True"], r.stderr[-1000:]
