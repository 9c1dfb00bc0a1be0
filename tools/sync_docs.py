"""Copy the texts the README embeds from their sources (the device config, the deployment guide).

    python tools/sync_readme.py        # tests/test_docs.py fails when the README is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sections() -> dict[str, str]:
    config = (REPO / "configs" / "edge-default.yaml").read_text()
    return {
        "config": "Every key, its default and meaning (`configs/edge-default.yaml`; `fer-edge check-config` "
        "validates a file, checks what `run` would refuse before it opens the camera (the model, loaded and "
        "compared with its sidecar, the Haar "
        "cascade, a video file or image folder; a model not installed yet is only a warning) and prints it resolved; "
        "unknown keys are errors naming their path):\n\n"
        f"```yaml\n{config}```\n",
        "deploy": (REPO / "docs" / "DEPLOY.md").read_text(),
    }


def replace_section(document: str, begin: str, end: str, text: str) -> str:
    """``document`` with what stands between the ``begin`` and ``end`` markers replaced by ``text``."""
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{text}{end}{tail}"


def render(readme: str) -> str:
    for name, text in sections().items():
        readme = replace_section(readme, f"<!-- {name}:begin -->", f"<!-- {name}:end -->", text)
    return readme


def main() -> int:
    path = REPO / "README.md"
    path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
