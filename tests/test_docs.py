"""The docs: generated blocks up to date, links that resolve, a short README, no insiders' words."""

import re
import subprocess
import sys

import pytest

from tools.sync_docs import BLOCKS, render

# written alongside this layout; a link to one of them may dangle until it exists, and only then
NOT_YET_WRITTEN: set[str] = set()
LINK = re.compile(r"\]\(([^)\s]+)\)")


def documents(repo_root):
    return [repo_root / "README.md", repo_root / "MODEL_CARD.md", *sorted((repo_root / "docs").glob("*.md"))]


def anchors(markdown: str) -> set[str]:
    """GitHub's ids for a document's headings."""
    ids = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            ids.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return ids


@pytest.mark.parametrize("doc", sorted(BLOCKS))
def test_generated_blocks_match_their_sources(repo_root, doc):
    assert render(doc) == (repo_root / doc).read_text(), f"{doc} is out of date: run make docs"


def test_every_link_between_the_docs_resolves(repo_root):
    broken = []
    for doc in documents(repo_root):
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            shown = resolved.relative_to(repo_root).as_posix() if resolved.is_relative_to(repo_root) else target
            if not resolved.exists():
                if shown not in NOT_YET_WRITTEN:
                    broken.append(f"{doc.name}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken


def test_readme_is_short_and_names_the_two_commands(repo_root):
    readme = (repo_root / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme and "docs/demo-frame.png" in readme
    ci = (repo_root / ".ci" / "run").read_text()
    assert "make test" in ci


def test_the_docs_use_no_insiders_words(repo_root):
    words = re.compile(r"\bissue \d|\bleases?\b|\blent\b|\bprobe found", re.IGNORECASE)
    found = [f"{doc.name}: {m.group(0)}" for doc in documents(repo_root) for m in words.finditer(doc.read_text())]
    assert not found


def test_makefile_help_is_the_default_goal(repo_root):
    result = subprocess.run(
        ["make", "-s", "-C", str(repo_root)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert result.returncode == 0
    for target in ("make demo", "make test ", "make test-edge", "make train", "make docs"):
        assert target in result.stdout


def test_the_docs_name_no_config_key_by_its_old_name(repo_root):
    from fer_edge.config.device import RENAMED, RETIRED

    old_names = [key for key in RENAMED if key not in RETIRED]  # a retired key is documented as such
    found = []
    for doc in documents(repo_root):
        text = doc.read_text()
        for key in old_names:
            for name in (key, key.split(".", 1)[1]):
                if f"`{name}`" in text or f"`{name}:" in text:
                    found.append(f"{doc.name}: {name}")
    assert not found


def test_every_repository_file_the_docs_name_exists(repo_root):
    tracked = subprocess.run(
        ["git", "-C", str(repo_root), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # folders that hold tracked files only: runs/ and out/ are made by commands, so the docs name paths there freely
    top_folders = "|".join(sorted({path.split("/", 1)[0] for path in tracked if "/" in path and path[0] != "."}))
    named = re.compile(rf"`((?:{top_folders})/[\w./@-]+)`")
    missing = [
        f"{doc.name}: {path}"
        for doc in documents(repo_root)
        for path in named.findall(doc.read_text())
        if not (repo_root / path).exists()
    ]
    assert not missing
