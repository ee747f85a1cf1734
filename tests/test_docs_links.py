"""Every relative link of the README and the docs leads to a file that exists, and to a heading it names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped (word characters, hyphens and
    spaces kept), spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    found, seen, in_code = set(), {}, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"^#{1,6}\s+(.*)", line)
        if heading:
            anchor = heading_anchor(heading.group(1))
            repeats = seen.get(anchor, 0)
            seen[anchor] = repeats + 1
            found.add(anchor if repeats == 0 else f"{anchor}-{repeats}")   # GitHub numbers repeated headings
    return found


def broken_links(markdown_file: Path, root: Path = REPO_ROOT) -> list[str]:
    text = markdown_file.read_text(encoding="utf-8")
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (markdown_file.parent / path).resolve() if path else markdown_file
        where = f"{markdown_file.relative_to(root)}:{text.count(chr(10), 0, match.start()) + 1}"
        if not linked.exists():
            broken.append(f"{where}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{where}: {target} (no such heading)")
    return broken


def test_heading_anchors_follow_github():
    assert heading_anchor("The CPU recipe on real images: `ham10000_cpu`") == "the-cpu-recipe-on-real-images-ham10000_cpu"
    assert anchors("# Results\n```\n# not a heading\n```\n## Results\n") == {"results", "results-1"}


def test_every_relative_link_of_the_docs_resolves(tmp_path):
    (tmp_path / "a.md").write_text("# Here\n[ok](#here) [gone](b.md) [no heading](#there)\n")
    assert broken_links(tmp_path / "a.md", tmp_path) == ["a.md:2: b.md (no such file)",   # the check itself
                                                         "a.md:2: #there (no such heading)"]
    files = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md")),
             *sorted((REPO_ROOT / "benchmarks").rglob("*.md"))]
    assert len(files) > 10
    assert [line for file in files for line in broken_links(file)] == []

