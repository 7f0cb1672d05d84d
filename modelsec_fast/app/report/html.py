"""Self-contained HTML rendering of a report: one ``report.html`` readable offline.

Figures are embedded as ``data:image/png;base64`` URIs and the style sheet is
inline, so the page loads nothing: no script, no font, no external URL. Block
text is escaped. Each section is a ``<section id="KEY" class="section STATUS">``
with its title as ``<h2>``; a contents list links to them.
"""

from __future__ import annotations

import base64
import html
from typing import Sequence

from .document import (Block, BulletList, Failed, Figure, Paragraph, RenderedSection,
                       ReportMeta, Skipped, Subheading, Table)

__all__ = ["render_html"]

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
 color:#1d2330;background:#f6f7f9;line-height:1.45}
main{max-width:1040px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:0 0 10px;
 border-bottom:2px solid #e3e6eb;padding-bottom:4px}h3{font-size:1.05em;margin:14px 0 6px}
.meta{color:#5b6475;font-size:.9em;margin-bottom:16px}
nav ul{display:flex;flex-wrap:wrap;gap:6px 14px;padding:0;list-style:none;font-size:.9em}
nav a{color:#2456a6;text-decoration:none}
section{margin:22px 0;padding:14px 16px;border:1px solid #e3e6eb;border-radius:6px}
section.skipped{background:#fafafa;color:#5b6475}section.failed{border-color:#d33;
 background:#fff5f5}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #d9dde3;padding:4px 8px;vertical-align:top}th{background:#eef1f5}
td.r{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:10px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#5b6475}
.status{font-size:.75em;padding:1px 6px;border-radius:8px;margin-left:8px;
 vertical-align:middle;background:#e3e6eb}
.failed .status{background:#d33;color:#fff}.skipped .status{background:#ccd}
td.verdict-at-risk{color:#b00;font-weight:600}td.verdict-no-finding{color:#176b2c}
"""


def render_html(title: str, meta: ReportMeta, sections: Sequence[RenderedSection]) -> str:
    """The whole report as one HTML page (figures read from their PNG files and
    embedded). Raises ``OSError`` when a figure file cannot be read."""
    made = (f"Created {meta.created_utc} by <code>{_e(meta.command)}</code> (modelsec_fast "
            f"{_e(meta.version)})")
    if meta.total_time_s is not None:
        made += f" in {meta.total_time_s:.0f} s"
    contents = "".join(f'<li><a href="#{_e(s.key)}">{_e(s.title)}</a></li>' for s in sections)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>", f'<div class="meta">{made}.</div>',
        f"<nav><ul>{contents}</ul></nav>",
    ]
    for section in sections:
        status = "" if section.status == "ok" else \
            f'<span class="status">{_e(section.status)}</span>'
        parts.append(f'<section id="{_e(section.key)}" class="section {_e(section.status)}">'
                     f"<h2>{_e(section.title)}{status}</h2>")
        parts += [_block(b) for b in section.blocks]
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _png_data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _cell(text: str, align: str) -> str:
    classes = ["r"] if align == "r" else []
    if text in ("at risk", "no finding"):
        classes.append("verdict-" + text.replace(" ", "-"))
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<td{attr}>{_e(text)}</td>"


def _block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{_e(block.text)}</p>"
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Subheading):
        return f"<h3>{_e(block.text)}</h3>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_e(h)}</th>" for h in block.header)
        rows = "".join("<tr>" + "".join(_cell(c, a) for c, a in zip(row, block.align)) + "</tr>"
                       for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(block, Figure):
        return (f'<figure><img src="{_png_data_uri(block.path)}" alt="{_e(block.caption)}">'
                f"<figcaption>{_e(block.caption)}</figcaption></figure>")
    if isinstance(block, Skipped):
        return f"<p><em>Skipped: {_e(block.reason)}</em></p>"
    if isinstance(block, Failed):
        return f"<p><strong>Failed:</strong> {_e(block.error)}</p>"
    raise TypeError(f"not a report block: {type(block).__name__}")
