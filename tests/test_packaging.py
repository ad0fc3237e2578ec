"""The built wheel carries what an editable install hides: py.typed and the Lua."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_py_typed_and_every_lua_script(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "async_endpoints/py.typed" in names
    scripts = sorted(
        p.name for p in (ROOT / "async_endpoints/stores/redis/lua").glob("*.lua")
    )
    assert scripts, "no Lua scripts found in the source tree"
    for script in scripts:
        assert f"async_endpoints/stores/redis/lua/{script}" in names


LAYERS = {
    # module: the modules of the package it may not import (upper layers)
    "jobs": {"stores", "manager", "worker", "state", "extension", "views", "cli"},
    "stores": {"manager", "worker", "state", "extension", "views", "cli", "gunicorn"},
    "manager": {"worker", "state", "extension", "views", "cli", "gunicorn"},
    "worker": {"state", "extension", "views", "cli", "gunicorn"},
    "state": {"extension", "views", "cli", "gunicorn", "metrics"},
    "views": {"extension", "cli", "gunicorn"},
    "cli": {"extension", "views", "gunicorn"},
    "gunicorn": {"extension", "views", "cli"},
    "metrics": {"extension", "views", "cli", "gunicorn"},
}


def _imported_modules(path: pathlib.Path) -> set[str]:
    """The package's modules that ``path`` imports (at any depth of its code)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "async_endpoints" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_imports_run_one_way(layer: str) -> None:
    """Shell, then core, then stores, then the model: no module imports a layer
    above its own, so there is no import circle to break at run time."""
    package = pathlib.Path(__file__).resolve().parents[1] / "async_endpoints"
    target = package / layer
    files = (
        sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
    )
    for path in files:
        upward = _imported_modules(path) & LAYERS[layer]
        assert not upward, f"{path.relative_to(package)} imports {sorted(upward)}"
