"""The documentation stands alone and stays true.

- ``docs/api-reference.md`` is what ``python -m api.reference`` generates from the app today;
- README, docs, tests and scripts name no path outside the repository and no absolute path
  (a user who clones the repository has only the repository);
- every relative link of README and docs leads to a file (and heading) that exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.reference import COMMAND, build_schema, render

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("README.md", "docs", "tests", "scripts")
# Built from pieces so that this file does not match its own patterns.
_OUTSIDE = re.compile(
    re.escape(".." + "/shared")
    + r"|(?<![\w.~-])/(?:"
    + "|".join(("work", "tmp", "farm"))
    + r")(?![\w-])"
)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _text_files() -> Iterator[Path]:
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for p in candidates:
            if p.is_file() and "__pycache__" not in p.parts:
                yield p


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_api_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "api-reference.md").read_text(encoding="utf-8")
    generated = render(build_schema())
    assert generated == committed, (
        f"docs/api-reference.md is out of date with the app's routes; regenerate it: {COMMAND}"
    )


def test_api_reference_lists_every_route() -> None:
    schema = build_schema()
    text = (ROOT / "docs" / "api-reference.md").read_text(encoding="utf-8")
    for path, item in schema["paths"].items():
        for method in item:
            assert f"### `{method.upper()} {path}`" in text, (method, path)


def test_nothing_points_outside_the_repository() -> None:
    found = []
    for path in _text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binary files
        for n, line in enumerate(text.splitlines(), 1):
            for m in _OUTSIDE.finditer(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r} in {line.strip()!r}")
    assert not found, "paths outside the repository or absolute paths:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "see " + ".." + "/shared/spec/x.md",
        "data in /" + "tmp/cw",
        "sqlite:///" + "work/main/x.db",
        "cd /" + "farm",
    ],
)
def test_the_outside_pattern_catches(line: str) -> None:
    assert _OUTSIDE.search(line)


@pytest.mark.parametrize(
    "line", ["GET /v1/trips", "https://example.org/" + "tmp/x", "docs/" + "work.md", "/" + "tmpx"]
)
def test_the_outside_pattern_spares(line: str) -> None:
    assert not _OUTSIDE.search(line)


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rules) gives a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_relative_links_lead_somewhere() -> None:
    broken = []
    for md in _markdown_files():
        text = md.read_text(encoding="utf-8")
        # Links inside code blocks and code spans are examples, not links.
        text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
        text = re.sub(r"`[^`\n]*`", "", text)
        for m in _LINK.finditer(text):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (md.parent / file_part).resolve() if file_part else md
            where = f"{md.relative_to(ROOT)}: {target}"
            if not dest.is_relative_to(ROOT):
                broken.append(f"{where} (leaves the repository)")
            elif not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_names_the_user_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in ("devices", "api", "api-reference", "rules", "alerts", "operations"):
        assert f"(docs/{doc}.md)" in readme, f"README does not link docs/{doc}.md"
    assert readme.count("bash scripts/demo.sh") >= 1 and "bash scripts/test.sh" in readme
