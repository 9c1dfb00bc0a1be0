"""Copy generated text into the docs' marked blocks: `make docs`.

Each block ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->`` holds a copy of one source: the device config
reference (configs/edge-default.yaml) or a benchmark's results (bench/results-*.md, written by `make bench`
and `make bench-edge`). Benchmarks never write the docs themselves, so a benchmark leaves `git status`
clean; run this when their results should be published.

    python tools/sync_docs.py          # rewrite the blocks; tests/test_docs.py fails when one is stale
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# doc -> the blocks it holds
BLOCKS = {
    "README.md": ("bench:models", "bench:edge"),
    "MODEL_CARD.md": ("bench:models", "bench:robustness"),
    "docs/BENCHMARKS.md": ("bench:models", "bench:robustness", "bench:edge"),
    "docs/CONFIG.md": ("config",),
}


def source(name: str, repo: Path = REPO) -> str:
    """The text block ``name`` holds."""
    if name == "config":
        return f"```yaml\n{(repo / 'configs' / 'edge-default.yaml').read_text()}```\n"
    if name.startswith("bench:"):
        return (repo / "bench" / f"results-{name.split(':', 1)[1]}.md").read_text()
    raise KeyError(name)


def replace_section(document: str, begin: str, end: str, text: str) -> str:
    """``document`` with what stands between the ``begin`` and ``end`` markers replaced by ``text``."""
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{text}{end}{tail}"


def render(doc: str, repo: Path = REPO) -> str:
    """``doc`` (a path relative to the repository) as `make docs` would write it."""
    text = (repo / doc).read_text()
    for name in BLOCKS[doc]:
        text = replace_section(text, f"<!-- {name}:begin -->", f"<!-- {name}:end -->", source(name, repo))
    return text


def main() -> int:
    for doc in BLOCKS:
        path = REPO / doc
        text = render(doc)
        if text != path.read_text():
            path.write_text(text)
            print(f"updated {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
