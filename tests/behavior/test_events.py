"""Activity-log sources: the text log (all six actions), event tables, ActivityWatch exports."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tunelab.behavior.events import (
    EventColumns,
    parse_line,
    read_activitywatch_export,
    read_event_table,
    read_events,
    read_text_log,
)
from tunelab.behavior.sources import synthetic_desktop_lines
from tunelab.errors import TunelabError

LINES = {
    "切换到窗口": (
        "2025-05-27 20:58:33 - 切换到窗口: 2025.5 qq_crawler - JupyterLab (应用: msedge.exe)"
    ),
    "关闭应用": "2025-05-27 20:58:34 - 关闭应用: msedge.exe",
    "启动应用": "2025-05-28 08:07:00 - 启动应用: QQ.exe",
    "访问文件": r"2025-05-28 08:07:11 - 访问文件: CODH (位于 D:\25 spring)",
    "访问网站": "2025-05-27 08:42:37 - 访问网站 github.com 的页面 'Repository search results'",
    "使用应用": "2025-05-28 08:21:09 - 使用应用: msedge.exe (时长: 5.26秒)",
}


@pytest.mark.parametrize(
    ("action", "target", "details", "app"),
    [
        ("切换到窗口", "2025.5 qq_crawler - JupyterLab", "应用: msedge.exe", "msedge.exe"),
        ("关闭应用", "msedge.exe", "", "msedge.exe"),
        ("启动应用", "QQ.exe", "", "QQ.exe"),
        ("访问文件", "CODH", r"位于: D:\25 spring", None),
        ("访问网站", "github.com", "页面: Repository search results", None),
        ("使用应用", "msedge.exe", "时长: 5.26秒", "msedge.exe"),
    ],
)
def test_every_action_kind_parses(action: str, target: str, details: str, app: str) -> None:
    event = parse_line(LINES[action], user="u1")
    assert (event.action, event.target, event.details, event.app) == (action, target, details, app)
    assert event.user == "u1" and event.time.year == 2025
    assert event.answer.startswith(f"{action} | {target}")


def test_malformed_and_unknown_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    log = tmp_path / "me.log"
    log.write_text(
        "\n".join(
            [
                LINES["启动应用"],
                "2025-05-28 08:07 - 启动应用: QQ.exe",  # no seconds
                "2025-05-28 08:07:05 - 打印文件: a.pdf",  # unknown action
                "",
                "just some text",
                LINES["使用应用"].replace("秒)", ")"),  # duration without unit
                LINES["关闭应用"],
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    read = read_text_log(log)
    assert [e.action for e in read.events] == ["启动应用", "关闭应用"]
    assert read.read == 6 and {e.user for e in read.events} == {"me"}
    assert [r.source.line for r in read.rejects] == [2, 3, 5, 6]
    assert "打印文件" in read.rejects[1].reason and "expected one of" in read.rejects[1].reason
    assert "YYYY-MM-DD HH:MM:SS" in read.rejects[0].reason


def test_event_tables_with_named_columns_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "ts,who,act,obj\n"
        "2025-05-01T08:00:00,a,启动应用,QQ.exe\n"
        "2025-05-01T08:05:00Z,a,关闭应用,\n"
        "yesterday,b,启动应用,Code.exe\n"
        "2025-05-01 09:00:00,b,访问网站,github.com\n",
        encoding="utf-8",
    )
    columns = EventColumns(time="ts", action="act", target="obj", user="who", details=None)
    read = read_event_table(path, columns)
    assert [(e.user, e.target, e.app) for e in read.events] == [
        ("a", "QQ.exe", "QQ.exe"),
        ("b", "github.com", None),
    ]
    assert [(r.source.line, r.field) for r in read.rejects] == [(3, "obj"), (4, "ts")]


def test_activitywatch_export_window_web_and_afk_buckets(tmp_path: Path) -> None:
    export = {
        "buckets": {
            "aw-watcher-window_pc": {
                "id": "aw-watcher-window_pc",
                "type": "currentwindow",
                "hostname": "pc",
                "events": [
                    {
                        "timestamp": "2025-05-27T12:58:33.000000+00:00",
                        "duration": 5.0,
                        "data": {"app": "Code.exe", "title": "main.py - Visual Studio Code"},
                    },
                    {"timestamp": "2025-05-27T12:59:00+00:00", "duration": 1, "data": {}},
                ],
            },
            "aw-watcher-web_pc": {
                "type": "web.tab.current",
                "hostname": "pc",
                "events": [
                    {
                        "timestamp": "2025-05-27T13:00:00+00:00",
                        "duration": 3,
                        "data": {"url": "https://github.com/a/b", "title": "a/b"},
                    }
                ],
            },
            "aw-watcher-afk_pc": {
                "type": "afkstatus",
                "events": [{"timestamp": "2025-05-27T13:00:00+00:00", "data": {}}],
            },
        }
    }
    path = tmp_path / "aw-export.json"
    path.write_text(json.dumps(export), encoding="utf-8")
    read = read_events([path])
    assert [(e.action, e.target, e.app) for e in read.events] == [
        ("切换到窗口", "main.py - Visual Studio Code", "Code.exe"),
        ("访问网站", "github.com", None),
    ]
    assert read.events[0].time == datetime(2025, 5, 27, 12, 58, 33)
    assert len(read.rejects) == 1 and read.rejects[0].field == "data.app"
    assert read.rejects[0].source.row == 2
    broken = tmp_path / "broken.json"
    broken.write_text('{"buckets": 3}', encoding="utf-8")
    with pytest.raises(TunelabError, match="'buckets' object"):
        read_activitywatch_export(broken)


def test_synthetic_days_parse_without_rejects(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.log"
    path.write_text("\n".join(synthetic_desktop_lines(days=3, seed=1)), encoding="utf-8")
    read = read_text_log(path)
    assert not read.rejects and len(read.events) > 60
    assert {e.action for e in read.events} == set(LINES)


def test_unknown_file_kind_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(TunelabError, match="unknown event file kind"):
        read_events([path])
