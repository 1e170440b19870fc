"""The CPU tritonserver's environment: its embedded interpreter must not find a venv's python."""

from __future__ import annotations

from pathlib import Path

from k2trt.triton_repo.cpu_server import stub_search_path


def test_venv_bin_dirs_are_dropped_and_the_system_comes_first(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /opt/other-python/bin\n")
    plain = tmp_path / "tools"
    plain.mkdir()
    path = f"{venv / 'bin'}:{plain}:/usr/bin:/bin"
    assert stub_search_path(path) == f"/usr/bin:{plain}:/bin"
