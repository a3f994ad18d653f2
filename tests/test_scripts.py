"""scripts/bootstrap.sh, which demo.sh and test.sh both run: one install record, so that neither reinstalls
because the other ran last (issue 14). pip is replaced by a stub that logs what it was asked to install."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts" / "bootstrap.sh")
    for name in ("requirements.txt", "requirements-dev.txt", "setup.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "pip").write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/../../pip.log"\n')
    for stub in ("python", "pip"):
        (bin_dir / stub).chmod(0o755)
    return tmp_path


def _bootstrap(checkout: Path, *args: str) -> list[str]:
    """Run bootstrap.sh; the requirement files pip was asked for in this run."""
    log = checkout / "pip.log"
    before = log.read_text().splitlines() if log.exists() else []
    env = {"PATH": "/usr/bin:/bin", "RADTRIAGE_BOOTSTRAP_SYSTEM": "skip"}
    done = subprocess.run(
        ["bash", "scripts/bootstrap.sh", *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "No such file" not in done.stderr
    after = log.read_text().splitlines() if log.exists() else []
    return [line.split("-r ")[1] for line in after[len(before) :] if "-r " in line]


def test_demo_and_test_share_one_install_record(checkout: Path) -> None:
    assert _bootstrap(checkout) == ["requirements.txt"]  # demo.sh, first run
    assert _bootstrap(checkout, "--dev") == ["requirements-dev.txt"]  # test.sh needs the larger set once
    assert _bootstrap(checkout) == []  # demo.sh after test.sh: nothing
    assert _bootstrap(checkout, "--dev") == []  # test.sh after demo.sh: nothing
    assert _bootstrap(checkout) == []
    assert (checkout / ".venv" / ".installed").read_text().split()[1] == "dev"


def test_changed_requirements_install_again_once(checkout: Path) -> None:
    assert _bootstrap(checkout, "--dev") == ["requirements-dev.txt"]
    assert _bootstrap(checkout) == []
    with (checkout / "requirements.txt").open("a") as fh:
        fh.write("# a new pin\n")
    assert _bootstrap(checkout) == ["requirements.txt"]
    assert _bootstrap(checkout) == []
    assert _bootstrap(checkout, "--dev") == ["requirements-dev.txt"]  # the dev set was not refreshed yet
    assert _bootstrap(checkout, "--dev") == [] and _bootstrap(checkout) == []
