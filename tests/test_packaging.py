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
        p.name for p in (ROOT / "async_endpoints/stores/lua").glob("*.lua")
    )
    assert scripts, "no Lua scripts found in the source tree"
    for script in scripts:
        assert f"async_endpoints/stores/lua/{script}" in names
