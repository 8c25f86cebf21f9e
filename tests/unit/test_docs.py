"""The documentation holds together: every relative link in README.md, docs/ and
bench/README.md names a file that exists (and, with `#anchor`, a heading in it), and the
README links every page under docs/, so a newcomer starting there can reach all of them."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: `[text](target)` and `![alt](target)`, target up to the first space or closing paren.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
CODE_SPAN = re.compile(r"`+[^`]*`+")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def pages() -> list[Path]:
    return [README, ROOT / "bench" / "README.md", *sorted(DOCS.rglob("*.md"))]


def prose_lines(path: Path) -> list[str]:
    """The lines of `path` outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def links(path: Path) -> list[str]:
    """Every link target in `path`'s prose (not in code blocks or code spans)."""
    found = []
    for line in prose_lines(path):
        found.extend(LINK.findall(CODE_SPAN.sub("", line)))
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to
    hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of `path`'s headings, with GitHub's -1, -2... for repeated ones."""
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target) is not None


def broken_links(path: Path) -> list[str]:
    """`path`'s relative links that name no file, or no heading in it."""
    broken = []
    for target in links(path):
        if is_external(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading #{anchor} in {destination.name})")
    return broken


def linked_pages(path: Path) -> set[Path]:
    """The existing files `path` links to, resolved."""
    result = set()
    for target in links(path):
        file_part = target.partition("#")[0]
        if file_part and not is_external(target):
            result.add((path.parent / unquote(file_part)).resolve())
    return result


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_an_existing_file_and_heading(page: Path) -> None:
    assert page.exists()
    assert broken_links(page) == []


def test_the_readme_links_every_page_under_docs_and_the_bench_readme() -> None:
    linked = linked_pages(README)
    expected = {p.resolve() for p in [*DOCS.rglob("*.md"), ROOT / "bench" / "README.md"]}
    assert sorted(str(p.relative_to(ROOT)) for p in expected - linked) == []


def test_the_link_checker_sees_a_missing_file_a_missing_heading_and_skips_code(
    tmp_path: Path,
) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A `settle` heading: yes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md) [ok](other.md#a-settle-heading-yes) [ok](#page)"
        " [web](https://example.com/x.md)\n"
        "[gone](missing.md) [no heading](other.md#nowhere)\n"
        "`[in a span](missing-too.md)`\n"
        "```\n[in a block](missing-three.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#nowhere (no heading #nowhere in other.md)",
    ]


def test_the_readme_stays_a_front_door_of_about_two_hundred_lines() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 220
