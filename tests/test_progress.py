"""Progress bars: live on a terminal, a few plain lines in files and pipes."""

from __future__ import annotations

import io

from common.core.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_terminal_writes_whole_lines_only(monkeypatch):
    monkeypatch.setenv("MVSS_PROGRESS_INTERVAL", "0")
    out = io.StringIO()
    assert list(progress(range(4), desc="inference", unit="img", stream=out)) == [0, 1, 2, 3]
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("inference: 0/4 img") and lines[-1].startswith("inference: 4/4 img")


def test_off_terminal_lines_are_rate_limited(monkeypatch):
    monkeypatch.delenv("MVSS_PROGRESS_INTERVAL", raising=False)
    out = io.StringIO()
    for _ in progress(range(5000), desc="evaluating", unit="img", stream=out):
        pass
    lines = out.getvalue().splitlines()
    assert 1 <= len(lines) <= 3  # the first and the last, not one per item
    assert lines[-1].startswith("evaluating: 5000/5000 img")


def test_terminal_keeps_the_live_bar():
    out = _Terminal()
    for _ in progress(range(3), desc="x", stream=out):
        pass
    assert "\r" in out.getvalue()


def test_disabled_writes_nothing():
    out = io.StringIO()
    assert sum(progress(range(3), desc="x", stream=out, disable=True)) == 3
    assert out.getvalue() == ""


def test_postfix_updates_wait_for_the_next_line(monkeypatch):
    monkeypatch.delenv("MVSS_PROGRESS_INTERVAL", raising=False)
    out = io.StringIO()
    bar = progress(range(200), desc="epoch 1/1", unit="batch", stream=out)
    for i in bar:
        bar.set_postfix(loss=f"{i:.1f}")
    lines = out.getvalue().splitlines()
    assert len(lines) <= 3 and lines[-1].endswith("loss=199.0]")
