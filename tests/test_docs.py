"""The README's embedded config reference and deployment guide match their sources."""

import subprocess
import sys

from tools.sync_readme import render


def test_readme_embeds_the_current_config_and_deploy_guide(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert render(readme) == readme, "README is out of date: run python tools/sync_readme.py"


def test_readme_names_the_two_commands(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    ci = (repo_root / ".ci" / "run").read_text()
    assert "make test" in ci


def test_makefile_help_is_the_default_goal(repo_root):
    result = subprocess.run(["make", "-s", "-C", str(repo_root)], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert result.returncode == 0
    assert "make demo" in result.stdout and "make train" in result.stdout and "make test" in result.stdout
