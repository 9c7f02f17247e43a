"""Where the package's data files (config/, models/, launch/) are, whether run from a checkout, a pip install or a
colcon install."""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Union

PACKAGE = "ovs_ros"


@lru_cache(maxsize=1)
def share_dir() -> Path:
    """The folder holding `config/`, `models/` and `launch/`."""
    checkout = Path(__file__).resolve().parent.parent
    candidates = [checkout, Path(sys.prefix) / "share" / PACKAGE]
    try:  # a colcon/ament install
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # not a ROS install, or the package is not in the ament index
        pass
    for candidate in candidates:
        if (candidate / "config").is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find the {PACKAGE} data files (config/) in any of {candidates}")


def resolve_data_path(value: Union[str, Path], subdir: str, suffix: str = ".yaml") -> Path:
    """A user-given file: an existing path as is, else a bare name looked up in `<share>/<subdir>/<name><suffix>`."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    named = share_dir() / subdir / (path.name if path.suffix else f"{path.name}{suffix}")
    if named.is_file():
        return named
    relative = share_dir() / path
    if relative.is_file():
        return relative
    raise FileNotFoundError(f"{value}: no such file (also looked for {named})")
