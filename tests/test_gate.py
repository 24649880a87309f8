"""The gate is one thing: pre-commit runs exactly the commands CI runs, and the dev extra pins the
versions of the tools that are installed."""
from __future__ import annotations

import re
import subprocess
import sys

import yaml

from .helpers import ROOT


def _ci_lines() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.split("  #")[0].strip() for line in lines if line.strip() and not line.startswith("#")]


def test_pre_commit_runs_what_ci_runs():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert [h["id"] for h in hooks] == ["ruff", "mypy", "docs"]
    ci = _ci_lines()
    for hook in hooks:
        assert hook["entry"] in ci, f"pre-commit hook {hook['id']} runs {hook['entry']!r}, which .ci/run does not"
        assert hook.get("pass_filenames") is False, f"{hook['id']} must check the whole tree, as CI does"
    gate = [line for line in ci if line.startswith(".venv/bin/") or line.startswith("bash scripts/build_docs")]
    assert sorted(gate) == sorted(h["entry"] for h in hooks), "a CI gate command has no pre-commit hook"


def test_ci_sets_up_once():
    assert sum("scripts/setup.sh" in line for line in _ci_lines()) == 1


def test_dev_extra_pins_the_installed_gate_tools():
    text = (ROOT / "pyproject.toml").read_text()
    dev = re.search(r"^dev = \[(.*?)\]", text, re.M)
    assert dev is not None
    pins = dict(re.findall(r'"([a-z]+)==([0-9.]+)"', dev.group(1)))
    assert set(pins) == {"ruff", "mypy"}, dev.group(0)
    bin_dir = ROOT / ".venv" / "bin" if (ROOT / ".venv" / "bin").exists() else None
    for tool, version in pins.items():
        exe = str(bin_dir / tool) if bin_dir else tool
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
        except FileNotFoundError:
            out = subprocess.run([sys.executable, "-m", tool, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
        assert out.split()[1] == version, f"{tool} {out.strip()} installed, the dev extra pins {version}"
