"""The README and docs/: links resolve inside the repository, nothing points outside it,
and the README's set-up command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
#: [text](target) and [text]: target, outside code spans and code blocks.
INLINE = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")


def links(path: Path) -> list[str]:
    """Every link target in a Markdown file (code blocks and code spans left out)."""
    text = CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    return INLINE.findall(text) + REFERENCE.findall(text)


def test_there_are_docs_with_links() -> None:
    assert {p.name for p in DOCS} >= {
        "README.md",
        "protocol.md",
        "scenarios.md",
        "settings.md",
        "serial.md",
        "console.md",
    }
    assert sum(len(links(p)) for p in DOCS) >= 10


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    bad = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # an absolute URL (https:, mailto:) or an anchor in the same page
        rel = target.split("#", 1)[0]
        dest = (doc.parent / rel).resolve()
        if not dest.is_relative_to(ROOT) or not dest.exists():
            bad.append(target)
    assert bad == [], f"{doc.name}: links that do not resolve inside the repository: {bad}"


def test_nothing_refers_outside_the_repository() -> None:
    hits = []
    roots = [ROOT / "README.md", ROOT / "docs", ROOT / "pumpctl", ROOT / "firmware_profiles"]
    roots.append(ROOT / "examples")
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            if f.suffix not in (".md", ".py", ".toml", ".csv"):
                continue
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"DESIGN|shared/", line):
                    hits.append(f"{f.relative_to(ROOT)}:{n}")
    assert hits == []


def test_readme_set_up_commands_match_ci() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_command = next(line for line in ci.splitlines() if "pytest" in line)
    first_block = FENCE.search(readme)
    assert first_block is not None
    commands = [x for x in first_block.group(0).splitlines()[1:-1] if x.strip()]
    assert len(commands) == 2
    assert commands[1] == ci_command
    assert readme.startswith("# pumpctl\n")
    assert "Python 3.11" in readme
    for role in ("Pharmacy", "Biomed", "Nurse", "QA"):
        assert f"## {role}: the first five minutes" in readme
