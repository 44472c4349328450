"""The layer rules of docs/ARCHITECTURE.md, checked by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("bot", "handlers", "storage", "sandbox")


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(where / "pyproject.toml"), "--no-cache"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the packages and the contracts, to break on purpose."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        ("handlers/leak.py", "from storage.db import Database\n", "never touch the database"),
        ("handlers/leak.py", "import sqlalchemy\n", "never touch the database"),
        ("bot/leak.py", "from slack_sdk import WebClient\n", "The domain speaks no Slack"),
        ("storage/leak.py", "from bot import policy\n", "Storage knows nothing above it"),
        ("bot/leak.py", "from handlers import messages\n", "Layers"),
        ("bot/leak.py", "import sandbox\n", "The sandbox is tooling"),
    ],
)
def test_a_deliberate_violation_fails(tree: Path, module: str, source: str, contract: str) -> None:
    (tree / module).write_text(f'"""A deliberate violation."""\n\n{source}')
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN") or "BROKEN (" in line]
    assert any(contract in line for line in broken), result.stdout
