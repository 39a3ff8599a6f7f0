"""The docs: generated references match the code, every relative link resolves, and the
Python API example runs."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def load_generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["config-reference.md", "cli-reference.md"])
def test_the_generated_references_match_the_code(page: str) -> None:
    generator = load_generator()
    committed = (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert committed == generator.PAGES[page](), f"docs/{page} is stale: run `make docs`"


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors: headings lowercased, punctuation dropped, spaces as dashes."""
    anchors = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_every_relative_link_resolves() -> None:
    broken = []
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            checked += 1
            if not resolved.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert checked > 20 and not broken, broken


def test_the_python_api_example_runs(tiny_run: Path, class_run: Path) -> None:
    text = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(example.strip().splitlines()) <= 12
    code = example.replace('"runs/sentiment-classifier"', repr(str(class_run)))
    code = code.replace('"runs/sentiment"', repr(str(tiny_run)))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "python-api.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert lines[0].startswith("sft ") and str(tiny_run / "adapter") in lines[0]
    assert lines[1].startswith("['") and "正面" in lines[-1] and "负面" in lines[-1]
