"""The template is valid SAM and builds without a container (so `sam deploy` can use it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from infra.sam.template import REPO_ROOT, load_template

SAM = str(REPO_ROOT / ".venv" / "bin" / "sam")


def sam(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SAM_CLI_TELEMETRY="0", AWS_DEFAULT_REGION="us-east-1")
    return subprocess.run([SAM, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_sam_validate_lint() -> None:
    result = sam("validate", "--lint", "--template-file", "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_sam_build_without_container(tmp_path: Path) -> None:
    cache = REPO_ROOT / ".stack" / "sam-cache"
    result = sam("build", "--template-file", "template.yaml", "--build-dir", str(tmp_path / "build"),
                 "--cached", "--cache-dir", str(cache))
    assert result.returncode == 0, result.stdout + result.stderr
    built = tmp_path / "build"
    assert (built / "SharedLayer" / "python" / "payfn_shared" / "platform" / "config.py").is_file()
    assert (built / "SharedLayer" / "python" / "pymysql").is_dir()
    for function in load_template().functions():
        assert (built / function.logical_id).is_dir(), function.logical_id
