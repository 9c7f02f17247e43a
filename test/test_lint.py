"""Code style, like the linter tests of ros2/examples packages: pyflakes + pycodestyle through ruff."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.linter
def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff not installed (pip install -e '.[dev]')")
    paths = ["ovs_ros", "test", "tools", "launch", "training"]
    result = subprocess.run([ruff, "check", "--output-format", "concise", *paths], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
