"""A full disk as a test can make one: a child process whose files may not grow past a limit (RLIMIT_FSIZE)."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path


def error_lines_under_file_size_limit(
    command: list[str], limit: int, cwd: Path, *, env: dict[str, str] | None = None, timeout: float = 300
) -> list[str]:
    """Run ``command`` where no file may grow past ``limit`` bytes; it must fail with exit status 1 and no
    traceback. Its ``error:`` lines."""

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout, preexec_fn=limit_file_size
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]
