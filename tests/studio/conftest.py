"""A workspace with a tiny model, data files and two finished runs; `tunelab studio` as a real
process on 127.0.0.1; a real headless Chromium (Debian's, at /usr/bin/chromium) driven by
Playwright."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from studio_helpers import fill_workspace, studio_process, train_in
from tunelab.studio.workspace import process_alive

CHROMIUM = Path(os.environ.get("TUNELAB_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "studio"


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with finished runs: generative (`labels`), a class head (`reviews`), both
    on a tiny random model, and the embedded SmolLM2 (`chat`), whose answers are words."""
    root = fill_workspace(tmp_path_factory.mktemp("workspace"))
    train_in(
        root,
        {
            "name": "labels",
            "data": {"train": str(root / "data/labels.jsonl"), "max_length": 64},
            "lora": {"r": 4, "alpha": 8},
            "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-2, "save_every": 3},
            "eval": {"generation": {"max_new_tokens": 3}, "max_rows": 8},
        },
    )
    train_in(
        root,
        {
            "name": "reviews",
            "task": "classify",
            "data": {"train": str(root / "data/reviews.jsonl"), "val_fraction": 0.25},
            "lora": {"r": 4, "alpha": 8},
            "train": {"max_steps": 4, "batch_size": 8, "save_every": 2},
            "eval": {"scoring": {"metric": "accuracy"}},
        },
    )
    train_in(
        root,
        {
            "name": "chat",
            "model": "smollm2-135m",
            "data": {"train": str(root / "data/labels.jsonl"), "max_length": 64},
            "lora": {"r": 4, "alpha": 8},
            "train": {"max_steps": 2, "batch_size": 4, "save_every": 2},
            "eval": {"generation": {"max_new_tokens": 2}, "max_rows": 2},
        },
    )
    return root


@pytest.fixture
def studio(workspace: Path) -> Iterator[int]:
    with studio_process(workspace) as port:
        yield port
    stop_launched(workspace)


def stop_launched(workspace: Path) -> None:
    """Kill what the studio launched and a failed test left running (each in its own
    session, so nothing else would stop it)."""
    for record in [*workspace.glob("runs/*/launch.json"), *workspace.glob("runs/*/jobs.json")]:
        found = json.loads(record.read_text())
        for entry in found.values() if record.name == "jobs.json" else [found]:
            if process_alive(entry.get("pid")):
                with suppress(ProcessLookupError):
                    os.killpg(entry["pid"], signal.SIGKILL)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Chromium; the tests are skipped with the reason where it is not installed."""
    if not CHROMIUM.is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `make test` installs it (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    one = context.new_page()
    errors: list[str] = []
    one.on("pageerror", lambda error: errors.append(str(error)))
    yield one
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def screenshot() -> Callable[..., None]:
    """Save the page's screenshot in docs/studio/ (the docs show what the tests saw)."""

    def take(page: Any, name: str, full_page: bool = False) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)

    return take
