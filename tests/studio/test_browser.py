"""The studio in a real headless Chromium against a real `tunelab studio` process: what a
user does, end to end, on a tiny model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from studio_helpers import http, studio_process, wait_for
from tunelab.errors import TunelabError
from tunelab.run_dir import RunDir
from tunelab.studio.workspace import process_alive, run_status

pytestmark = pytest.mark.timeout(600)


def fill_form(page: Any, values: dict[str, str]) -> None:
    for key, value in values.items():
        page.fill(f"[id='field-{key}']", value)


def long_run(name: str) -> dict[str, str]:
    """A run of the tiny model that goes on until it is stopped."""
    return {
        "name": name,
        "model.name": "models/tiny",
        "data.train": "data/labels.jsonl",
        "data.max_length": "64",
        "lora.r": "4",
        "train.budget": "3m",  # ends by itself should a failing test leave it running
        "train.batch_size": "4",
        "train.save_every": "100000",
        "eval.generation.max_new_tokens": "2",
        "eval.max_rows": "4",
    }


def points(page: Any, chart: str) -> int:
    return int(page.get_attribute(f"#chart-{chart} svg", "data-points") or 0)


def test_launch_watch_stop_and_the_status_survives_reload_and_restart(
    workspace: Path, studio: int, page: Any, screenshot: Any
) -> None:
    page.goto(f"http://127.0.0.1:{studio}/#/new")
    fill_form(page, long_run("watched"))
    page.wait_for_function(
        "document.querySelector('#yaml-preview').textContent.includes('watched')"
    )
    assert "../../data/labels.jsonl" in page.text_content("#yaml-preview")
    screenshot(page, "new-run")
    page.click("#launch")
    page.wait_for_url("**/#/run/watched")
    page.wait_for_function("Number(document.querySelector('#chart-loss svg')?.dataset.points) >= 3")
    first = points(page, "loss")
    page.wait_for_function(
        f"Number(document.querySelector('#chart-loss svg').dataset.points) > {first + 5}"
    )
    assert page.text_content("h2 .status") == "running"
    screenshot(page, "run-training")
    page.click("#stop")
    page.wait_for_selector("h2 .status[data-status='interrupted']", timeout=120_000)
    assert "step-" in page.text_content("#checkpoints")
    run = RunDir(workspace / "runs" / "watched")
    assert run.list_checkpoints(), "the graceful stop saved a checkpoint"
    assert run.launch_config.is_file() and "interrupted" in run_status(run)["status"]
    page.reload()
    page.wait_for_selector("h2 .status[data-status='interrupted']")
    stopped_at = run.list_checkpoints()[-1].name
    with studio_process(workspace) as restarted:
        page.goto(f"http://127.0.0.1:{restarted}/#/runs")
        row = page.locator("#runs-table tr", has_text="watched")
        assert row.locator(".status").text_content() == "interrupted"
        page.goto(f"http://127.0.0.1:{restarted}/#/run/watched")
        page.click("#resume")
        page.wait_for_selector("h2 .status[data-status='running']", timeout=120_000)
        page.click("#stop")
        page.wait_for_selector("h2 .status[data-status='interrupted']", timeout=120_000)
    assert run.list_checkpoints()[-1].name > stopped_at, "resumed, trained on, saved again"
    assert json.loads(run.launch_record.read_text())["command"][-1] == "--resume"


def test_evaluate_and_merge_from_the_page(workspace: Path, studio: int, page: Any) -> None:
    shutil.copytree(workspace / "runs" / "labels", workspace / "runs" / "labels-2")
    page.goto(f"http://127.0.0.1:{studio}/#/run/labels-2")
    page.click("#evaluate")
    page.wait_for_selector("#eval-choice option[value='studio']", state="attached", timeout=180_000)
    assert (workspace / "runs/labels-2/eval/studio/metrics.json").is_file()
    page.click("#merge")
    merged = workspace / "runs/labels-2/merged/config.json"
    wait_for(merged.is_file, 180, "the merged model")


def test_a_bad_value_shows_the_cli_message(workspace: Path, studio: int, page: Any) -> None:
    from tunelab.config_file import load_config

    with pytest.raises(TunelabError) as cli:
        load_config(None, ["name=x", "train.learning_rate=-1"])
    cli_line = next(line for line in str(cli.value).splitlines() if "learning_rate" in line)
    page.goto(f"http://127.0.0.1:{studio}/#/new")
    fill_form(page, {"name": "bad", "data.train": "data/labels.jsonl"})
    page.fill("[id='field-train.learning_rate']", "-1")
    box = page.locator(".field[data-key='train.learning_rate']")
    box.locator(".field-error").filter(has_text="greater than 0").wait_for()
    assert "invalid" in box.get_attribute("class")
    shown = box.locator(".field-error").text_content()
    assert cli_line.strip() == f"train.learning_rate: {shown}"
    assert cli_line.strip() in page.text_content("#form-message")
    page.click("#launch")
    time.sleep(0.5)
    assert "#/new" in page.url and not (workspace / "runs" / "bad").exists()


def test_evaluation_shows_the_confusion_matrix_and_filters_predictions(
    workspace: Path, studio: int, page: Any, screenshot: Any
) -> None:
    page.goto(f"http://127.0.0.1:{studio}/#/run/reviews")
    page.wait_for_selector("#confusion")
    labels = json.loads((workspace / "runs/reviews/labels.json").read_text())["labels"]
    headers = page.locator("#confusion thead th").all_text_contents()[1:]
    assert headers == labels, "columns are the class names, and no '(invalid)' column"
    predictions = [
        json.loads(line)
        for line in (workspace / "runs/reviews/eval/final/predictions.jsonl")
        .read_text()
        .splitlines()
    ]
    screenshot(page, "run-evaluation", full_page=True)
    assert {"wrong", "correct"} <= {p["status"] for p in predictions}, "both kinds to filter"
    for status in ("wrong", "correct"):
        page.select_option("#status-filter", status)
        expected = sum(p["status"] == status for p in predictions)
        page.wait_for_function(
            f"document.querySelector('#prediction-count').textContent.startsWith('{expected} of')"
        )
        shown = page.locator("#predictions tbody tr")
        assert shown.count() == expected
        assert {shown.nth(i).get_attribute("data-status") for i in range(expected)} <= {status}


def test_chat_streams_the_answer_and_the_base_model_answers_beside_it(
    studio: int, page: Any, screenshot: Any
) -> None:
    page.goto(f"http://127.0.0.1:{studio}/#/chat/chat")
    page.evaluate(
        """() => { window.changes = 0; new MutationObserver(() => window.changes++)
            .observe(document.querySelector('#answer-run'),
                     {childList: true, characterData: true, subtree: true}); }"""
    )
    page.fill("#chat-prompt", "Name three colours.")
    page.fill("#chat-max-tokens", "12")
    page.click("#chat-send")
    page.wait_for_selector("#answer-run[data-state='done']", timeout=180_000)
    page.wait_for_selector("#answer-base[data-state='done']", timeout=180_000)
    assert page.evaluate("window.changes") >= 3, "the answer arrived in pieces"
    assert page.text_content("#answer-run").strip() != ""
    assert page.text_content("#answer-base").strip() != ""
    screenshot(page, "chat")


def test_data_page_renders_rows_rejects_and_token_lengths(
    studio: int, page: Any, screenshot: Any
) -> None:
    page.goto(f"http://127.0.0.1:{studio}/#/data")
    page.fill("#data-model", "models/tiny")
    page.select_option("#data-file", "data/broken.jsonl")
    page.wait_for_selector("#data-rejects")
    assert "format alpaca" in page.text_content("#data-summary")
    reasons = page.locator("#data-rejects tbody tr").all_text_contents()
    assert len(reasons) == 3 and all("data/broken.jsonl" in r for r in reasons)
    assert page.locator(".conversation").count() == 6
    assert int(page.get_attribute("#length-histogram svg", "data-bars")) > 0
    screenshot(page, "data", full_page=True)


def test_compare_overlays_curves_and_puts_metrics_side_by_side(
    studio: int, page: Any, screenshot: Any
) -> None:
    page.goto(f"http://127.0.0.1:{studio}/#/compare")
    page.check("#compare-runs input[value='labels']")
    page.check("#compare-runs input[value='reviews']")
    page.wait_for_function("document.querySelectorAll('#compare-table thead th').length === 3")
    assert int(page.get_attribute("#compare-loss svg", "data-points")) == 6 + 4
    assert "classify" in page.text_content("#compare-table")
    screenshot(page, "compare")


def test_closing_the_page_neither_stops_nor_blocks_the_run(
    workspace: Path, studio: int, browser: Any
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{studio}/#/new")
    settings = {**long_run("unwatched"), "train.budget": "", "train.max_steps": "60"}
    fill_form(page, settings)
    page.wait_for_function(
        "document.querySelector('#yaml-preview').textContent.includes('unwatched')"
    )
    page.click("#launch")
    page.wait_for_url("**/#/run/unwatched")
    page.wait_for_function("Number(document.querySelector('#chart-loss svg')?.dataset.points) >= 1")
    context.close()  # the page goes away while the run trains
    run = RunDir(workspace / "runs" / "unwatched")
    ended = lambda: run_status(run)["status"] not in ("running", "starting")  # noqa: E731
    wait_for(ended, 300, "the run to end")
    log = run.train_log.read_text()
    assert run_status(run)["status"] == "finished", log
    assert max(r.get("step", 0) for r in run.read_metrics()) == 60, log
    assert (run.root / "eval" / "final" / "metrics.json").is_file()
    pid = json.loads(run.launch_record.read_text())["pid"]
    wait_for(lambda: not process_alive(pid), 60, "the process to exit")
    assert "evaluation" in run.train_log.read_text(), "it printed its results to its log"


def test_the_runs_page_lists_every_run_with_status_and_baseline(
    studio: int, page: Any, screenshot: Any
) -> None:
    page.goto(f"http://127.0.0.1:{studio}/#/runs")
    row = page.locator("#runs-table tr", has_text="reviews")
    row.wait_for()
    assert row.locator(".status").text_content() == "finished"
    assert "classify" in row.text_content()
    screenshot(page, "runs")


def test_paths_out_of_the_workspace_are_refused(workspace: Path, studio: int) -> None:
    outside = workspace.parent / "outside.jsonl"
    outside.write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    link = workspace / "data" / "link.jsonl"
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    for path in ("../../etc/passwd", "/etc/passwd", "data/link.jsonl", "../outside.jsonl"):
        status, body = http(studio, f"/api/data?path={path}")
        assert status == 403, (path, body)
    status, _ = http(studio, "/api/runs/..%2F..%2Fetc")
    assert 400 <= status < 500
    form = {"name": "escape", "data.train": "../outside.jsonl"}
    status, body = http(studio, "/api/runs", {"values": form})
    assert status == 403 and not (workspace / "runs" / "escape").exists()
    status, body = http(studio, "/api/runs/labels/rm%20-rf", {})
    assert status in (400, 404)
