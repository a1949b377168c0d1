"""The rendered page: a Report (sections of blocks, figures as PNG bytes, the JSON numbers) and
its three renderings, HTML (self-contained: CSS inline, figures as data: URIs, no network),
Markdown (PNG files beside it) and JSON (NaN -> null)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from analysis.table import clean

__all__ = ["Report"]


@dataclass
class Report:
    """A rendered-ready report: sections of blocks, figures (PNG bytes) and the JSON numbers.

    Blocks: ("p", text), ("list", [text, ...]), ("table", header, rows),
    ("figure", name, caption), ("code", text).
    """

    title: str
    sections: list[tuple[str, str, str, list[tuple]]]  # (id, title, question, blocks)
    figures: dict[str, bytes]
    numbers: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(clean(self.numbers), indent=2, allow_nan=False)

    def to_markdown(self, *, figure_path: Callable[[str], str] = lambda n: f"{n}.png") -> str:
        out = [f"# {self.title}", ""]
        for i, (_, title, question, blocks) in enumerate(self.sections, 1):
            out += [f"## {i}. {title}", "", f"*{question}*", ""]
            for b in blocks:
                if b[0] == "p":
                    out += [b[1], ""]
                elif b[0] == "list":
                    out += [f"- {item}" for item in b[1]] + [""]
                elif b[0] == "code":
                    out += ["```", b[1], "```", ""]
                elif b[0] == "table":
                    header, rows = b[1], b[2]
                    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
                    out += ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
                    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows] + [""]
                elif b[0] == "figure" and b[1] in self.figures:
                    out += [f"![{b[2]}]({figure_path(b[1])})", "", f"*{b[2]}*", ""]
        return "\n".join(out).rstrip() + "\n"

    def to_html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>", "<nav><ol>"]
        body += [f'<li><a href="#{sid}">{e(t)}</a></li>' for sid, t, _, _ in self.sections]
        body.append("</ol></nav>")
        for i, (sid, title, question, blocks) in enumerate(self.sections, 1):
            body.append(
                f'<section id="{sid}"><h2>{i}. {e(title)}</h2><p class="q">{e(question)}</p>'
            )
            for b in blocks:
                if b[0] == "p":
                    body.append(f"<p>{_inline(b[1])}</p>")
                elif b[0] == "list":
                    body.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
                elif b[0] == "code":
                    body.append(f"<pre><code>{e(b[1])}</code></pre>")
                elif b[0] == "table":
                    head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
                    rows = "".join(
                        "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in r) + "</tr>" for r in b[2]
                    )
                    body.append(
                        f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
                    )
                elif b[0] == "figure" and b[1] in self.figures:
                    data = base64.b64encode(self.figures[b[1]]).decode("ascii")
                    body.append(f'<figure><img alt="{e(b[2])}" src="data:image/png;base64,{data}">'
                                f"<figcaption>{e(b[2])}</figcaption></figure>")  # fmt: skip
            body.append("</section>")
        return _HTML.format(title=e(self.title), css=_CSS, body="\n".join(body))


def _inline(text: str) -> str:
    """HTML-escape, then render `code` spans (the only markup report text uses)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #eee}
p.q{color:#555;font-style:italic}table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
.tw{overflow-x:auto}figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}code,pre{background:#f6f6f6;border-radius:3px;padding:1px 4px;font-size:.92em}
pre{padding:.6em;overflow-x:auto}nav ol{columns:2}
""".strip()
_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""
