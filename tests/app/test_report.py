"""The report writer: sections render through blocks into report.md and report.json,
and a failed or skipped section says why in its place while the rest still renders."""

import json
import os
from dataclasses import dataclass

import pytest

from modelsec_fast.app.report import (BulletList, Failed, FailedSection, Figure, Paragraph,
                                      ReportMeta, Section, Skipped, SkippedSection, Subheading,
                                      Table, build_section, write_report)
from modelsec_fast.app.report.markdown import render_markdown

META = ReportMeta(command="modelsec-fast test", version="0.0.0", created_utc="2000-01-01 00:00 UTC")


@dataclass
class _Note:
    """A minimal section: a paragraph, a table and a figure it writes."""

    text: str
    key: str = "note"
    title: str = "A note"

    def to_json(self) -> dict:
        return {"text": self.text, "values": [1.5, float("nan")]}

    def blocks(self, figure_dir: str):
        path = os.path.join(figure_dir, f"{self.key}.png")
        with open(path, "wb") as f:
            f.write(b"\x89PNG fake")
        return [Paragraph(self.text), Table(("name", "value"), [("a|b", "1.0")], align="lr"),
                Figure(path, "a figure")]


@dataclass
class _Renamed(_Note):
    """A second _Note whose figure file keeps the first one's name."""

    def blocks(self, figure_dir: str):
        return _Note.blocks(_Note(self.text), figure_dir)


@dataclass
class _Broken:
    key: str = "broken"
    title: str = "Broken"

    def to_json(self) -> dict:
        return {}

    def blocks(self, figure_dir: str):
        raise RuntimeError("the analysis\nfell over")


@dataclass
class _Unserialisable(_Note):
    def to_json(self) -> dict:
        return {"model": object()}


def test_sections_render_in_order_into_markdown_and_json(tmp_path):
    files = write_report(str(tmp_path), "Test report", META,
                         [_Note("first"), SkippedSection("later", "Later", "nothing to do")])
    text = open(files.markdown).read()
    assert text.startswith("# Test report\n\nCreated 2000-01-01 00:00 UTC by "
                           "`modelsec-fast test` (modelsec_fast 0.0.0).\n")
    assert text.index("## A note") < text.index("first") < text.index("## Later")
    assert "| name | value |\n|---|---:|\n| a\\|b | 1.0 |" in text
    assert "![a figure](note.png)" in text
    assert "## Later\n\n_Skipped: nothing to do_" in text
    report = json.load(open(files.json))
    assert report["title"] == "Test report" and report["meta"]["command"] == "modelsec-fast test"
    assert list(report["sections"]) == ["note", "later"]
    assert report["sections"]["note"] == {"title": "A note", "status": "ok",
                                          "figures": ["note.png"],
                                          "result": {"text": "first", "values": [1.5, None]}}
    assert report["sections"]["later"]["status"] == "skipped"
    assert report["sections"]["later"]["reason"] == "nothing to do"
    assert files.skipped == ("later",) and files.failed == ()
    assert files.figures == (os.path.join(str(tmp_path), "note.png"),)


@pytest.mark.parametrize("bad", [_Broken(), _Unserialisable("x", key="broken")])
def test_a_failing_section_reports_its_error_in_place_and_the_rest_renders(tmp_path, bad):
    files = write_report(str(tmp_path), "T", META, [_Note("before"), bad,
                                                    _Note("after", key="after", title="After")])
    assert files.failed == ("broken",)
    text = open(files.markdown).read()
    broken = text[text.index(f"## {bad.title}"):text.index("## After")]
    assert "**Failed:** " in broken
    if isinstance(bad, _Broken):
        assert "**Failed:** RuntimeError: the analysis fell over" in broken  # one line
    assert "before" in text and "after" in text
    entry = json.load(open(files.json))["sections"]["broken"]
    assert entry["status"] == "failed" and entry["result"] == {} and entry["error"]


def test_raise_errors_lets_a_section_error_through(tmp_path):
    with pytest.raises(RuntimeError, match="fell over"):
        write_report(str(tmp_path), "T", META, [_Broken()], raise_errors=True)


def test_section_keys_must_be_distinct(tmp_path):
    with pytest.raises(ValueError, match=r"distinct keys, repeated: \['note'\]"):
        write_report(str(tmp_path), "T", META, [_Note("a"), _Note("b")])
    assert not os.listdir(tmp_path)


def test_a_section_may_not_overwrite_another_sections_figure(tmp_path):
    with pytest.raises(ValueError, match="section 'second' wrote note.png, which section "
                                         "'note' had written"):
        write_report(str(tmp_path), "T", META,
                     [_Note("a"), _Renamed("b", key="second")])


def test_build_section_turns_an_error_into_a_failed_section():
    def boom():
        raise ValueError("no members")

    section = build_section("membership", "Membership", boom)
    assert isinstance(section, FailedSection) and isinstance(section, Section)
    assert section.error == "ValueError: no members"
    assert section.blocks("unused") == [Failed("ValueError: no members")]
    with pytest.raises(ValueError):
        build_section("membership", "Membership", boom, raise_errors=True)
    ok = _Note("fine")
    assert build_section("note", "A note", lambda: ok) is ok


def test_markdown_renders_every_block_kind(tmp_path):
    from modelsec_fast.app.report import RenderedSection

    blocks = (Paragraph("text"), BulletList(["one", "two"]), Subheading("part"),
              Table(["a", "b"], [["1", "2"]]), Figure(str(tmp_path / "f" / "x.png"), "cap"),
              Skipped("why"), Failed("what"))
    text = render_markdown("T", META, [RenderedSection("k", "K", "ok", blocks)], str(tmp_path))
    assert ("## K\n\ntext\n\n- one\n- two\n\n### part\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
            "![cap](f/x.png)\n\n_Skipped: why_\n\n**Failed:** what\n") in text


def test_table_rows_and_alignment_must_fit_the_header():
    with pytest.raises(ValueError, match="table row 1 has 1 cells, the header 2"):
        Table(("a", "b"), [("1", "2"), ("3",)])
    with pytest.raises(ValueError, match="align must be one 'l' or 'r' per column"):
        Table(("a", "b"), [], align="lrr")
    assert Table(("a", "b"), [(1, 2.5)]).rows == (("1", "2.5"),)
