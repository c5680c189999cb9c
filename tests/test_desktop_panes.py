"""The reasoning pane: a finished answer reads as a report of its analysis (labelled sections,
regions ruled out with their reasons, the conclusion), the raw text one click away, and text
streams live into the raw view. Real widgets, offscreen."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")

from desktop.panes import ReasoningPane  # noqa: E402
from geolocsft import protocol  # noqa: E402

ANALYSIS = {
    "regional_25km": {"terrain": "flat river valley", "climate": "temperate, <wet>",
                      "development": "dense city"},
    "micro_1km": {"road": "cobbled, right-hand traffic", "architecture": "Haussmann blocks",
                  "vegetation": "plane trees"},
    "eliminated": [{"region": "Brussels", "why": "no bilingual signs"},
                   {"region": "Lyon", "why": "no hills behind"}],
    "conclusion": "Paris & its inner suburbs",
}


def test_a_finished_answer_reads_as_a_report_with_the_raw_text_one_click_away(qtbot):
    pane = ReasoningPane()
    qtbot.addWidget(pane)
    text = protocol.format_target(ANALYSIS, protocol.Answer(48.85, 2.35, "Paris", "France"))
    pane.show_text("/p.jpg", "p.jpg", text, protocol.parse_output(text).analysis,
                   note="The consensus of 3 guesses; the raw text has them all.")
    assert pane.showing_report() and pane.raw_button.isEnabled()
    report = pane.report_text()
    # Sections in the prompt's order, each with its content; the model's words escaped.
    order = [report.index(t) for t in ("Regional clues (~25 km)", "Local clues (~1 km)",
                                        "Ruled out", "Conclusion")]
    assert order == sorted(order)
    assert "temperate, <wet>" in report and "Haussmann blocks" in report
    assert "Brussels: no bilingual signs" in report and "Lyon: no hills behind" in report
    assert report.rstrip().endswith("Paris & its inner suburbs")
    assert "consensus of 3 guesses" in report
    pane.raw_button.click()
    assert not pane.showing_report() and pane.plain_text() == text
    pane.raw_button.click()
    assert pane.showing_report()


def test_streaming_is_live_in_the_raw_view_and_no_analysis_means_no_report(qtbot):
    pane = ReasoningPane()
    qtbot.addWidget(pane)
    pane.show_text("/a.jpg", "a.jpg", "done", ANALYSIS)
    pane.start("/b.jpg", "b.jpg")  # the next photo starts streaming
    assert not pane.showing_report() and pane.report_text() == ""
    for piece in ('{"regional', '_25km": {', '"terrain": "fl'):
        pane.append(piece)
        assert pane.plain_text().endswith(piece)
    assert not pane.raw_button.isEnabled()  # nothing to switch to yet
    pane.show_text("/c.jpg", "c.jpg", "I cannot tell.", None)  # unparsed: the raw text only
    assert not pane.showing_report() and pane.plain_text() == "I cannot tell."
