"""The self-contained report.html: escaped text, figures embedded as data:image/png, no
external URL; and the scan's report rendered in headless Chromium (Debian's
``chromium``; CI installs it, the tests skip without it)."""

import base64
import io
import os
import re
import shutil
import subprocess

import pytest

from modelsec_fast.app.report import (Figure, Paragraph, RenderedSection, ReportMeta, Table,
                                      write_report)
from modelsec_fast.app.report.html import render_html

META = ReportMeta(command="modelsec-fast test <x>", version="0.0.0",
                  created_utc="2000-01-01 00:00 UTC")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(apt-get install chromium; CI installs it)")
_URL_ATTRIBUTES = re.compile(r"""(?:src|href|action|poster|data)\s*=\s*["']([^"']*)["']""", re.I)


def _png(path):
    from PIL import Image

    Image.new("RGB", (4, 3), (200, 30, 30)).save(path)
    return str(path)


def _external_urls(page: str) -> list[str]:
    """Every URL the page would load or link to that is not embedded or in-page."""
    urls = _URL_ATTRIBUTES.findall(page) + re.findall(r"url\(([^)]*)\)", page)
    return [u for u in urls if not (u.startswith("data:") or u.startswith("#"))]


def test_html_escapes_text_and_embeds_figures(tmp_path):
    figure = _png(tmp_path / "f.png")
    section = RenderedSection("k", "A <b>title</b>", "ok", (
        Paragraph("1 < 2 & 3 > 2"), Table(("a", "b"), [("x", "1")], align="lr"),
        Figure(figure, "a \"red\" figure")))
    page = render_html("Report & co", META, [section])
    assert "A &lt;b&gt;title&lt;/b&gt;" in page and "1 &lt; 2 &amp; 3 &gt; 2" in page
    assert "modelsec-fast test &lt;x&gt;" in page
    with open(figure, "rb") as f:
        assert f'src="data:image/png;base64,{base64.b64encode(f.read()).decode()}"' in page
    assert 'alt="a &quot;red&quot; figure"' in page and '<td class="r">1</td>' in page
    assert _external_urls(page) == []


def test_write_report_writes_report_html_too(tmp_path):
    """So the demo, which writes through write_report, gets the HTML report as well."""
    files = write_report(str(tmp_path), "T", META, [])
    assert files.html == str(tmp_path / "report.html") and os.path.getsize(files.html) > 500


def _chromium(*args, timeout=90):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run",
                           "--disable-background-networking", *args],
                          capture_output=True, text=True, timeout=timeout)


@needs_chromium
def test_scan_report_renders_in_headless_chromium(exported_scan, tmp_path):
    import numpy as np
    from PIL import Image

    status, _, _, _, out, report = exported_scan
    assert status == 0
    page_path = os.path.join(out, "report.html")
    url = "file://" + os.path.abspath(page_path)
    shot = tmp_path / "shot.png"
    done = _chromium(f"--screenshot={shot}", "--window-size=1100,1400", url)
    assert shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1400, 1100)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # text and tables, not blank

    dom = _chromium("--dump-dom", url).stdout
    for key, section in report["sections"].items():
        assert f'id="{key}"' in dom, key
        assert f'class="section {section["status"]}"' in dom, key
    # The query-based attacks' rows, and a verdict for every section that has a rule.
    assert "Query-based attacks: the check for gradient masking" in dom
    assert "<td>SPSA</td>" in dom and "<td>HopSkipJump</td>" in dom
    assert "<td>evasion (distances)</td>" in dom and "<td>explanations</td>" in dom
    images = re.findall(r"<img [^>]*src=\"([^\"]*)\"", dom)
    assert len(images) == sum(len(s["figures"]) for s in report["sections"].values()) >= 2
    for src in images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    page = open(page_path, encoding="utf-8").read()
    assert _external_urls(page) == [] and _external_urls(dom) == []
    assert "http://" not in page and "https://" not in page
