"""One self-contained HTML file: inline CSS, a few lines of inline JS to sort columns, figures as
base64 PNG. No external CSS, JS, fonts or images: it opens offline in any browser."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field

import pandas as pd

from salbench.render import Table
from salbench.tables import metric_descriptor

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:1.05em;margin-top:1.2em}
p.meta,p.caption{color:#555;font-size:.9em;margin:.3em 0 .8em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0 1em}
th,td{padding:4px 8px;border-bottom:1px solid #e5e5e5;white-space:nowrap}
th{background:#f4f4f4;text-align:left;position:sticky;top:0;border-bottom:2px solid #bbb}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:hover{background:#e8eef7}
th[data-dir=asc]::after{content:" \\25B4"}th[data-dir=desc]::after{content:" \\25BE"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td .ci{display:block;color:#888;font-size:.8em}
tr.control td{background:#fafaf0;color:#555}
tr.na td{color:#999;font-style:italic}
td.best{font-weight:700}
tr:hover td{background:#f0f6ff}
.notes li{color:#8a5a00;font-size:.9em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}
code{background:#f4f4f4;padding:0 3px;border-radius:3px}
.sig{color:#0a7a0a;font-weight:600}.nsig{color:#888}
"""

# Click a header to sort by it (best first for metrics with a direction); click again to reverse.
JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    var dir=th.dataset.dir?(th.dataset.dir==='asc'?'desc':'asc'):(th.dataset.best==='higher'?'desc':'asc');
    t.querySelectorAll('th').forEach(function(h){delete h.dataset.dir});th.dataset.dir=dir;
    var s=dir==='asc'?1:-1;
    rows.sort(function(a,b){var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v;
      var ex=(x===undefined||x===''),ey=(y===undefined||y==='');if(ex||ey)return ex-ey;
      var nx=parseFloat(x),ny=parseFloat(y);
      if(!isNaN(nx)&&!isNaN(ny))return s*(nx-ny);return s*String(x).localeCompare(String(y));});
    rows.forEach(function(r){body.appendChild(r)});});});});
"""


def esc(s) -> str:
    return html.escape(str(s), quote=True)


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def table_html(t: Table, df: pd.DataFrame, sortable: bool = True, row_class=None) -> str:
    """One block of a ``Table`` as an HTML table; cells carry ``data-v`` for sorting."""
    best = t._best(df)
    out = [f'<table class="{"sortable" if sortable else ""}"><thead><tr>']
    for c in t.columns:
        d = metric_descriptor(c.metric).direction if c.metric else None
        title = metric_descriptor(c.metric).description if c.metric else ""
        attrs = (f' data-best="{d}"' if d else "") + (f' title="{esc(title)}"' if title else "")
        out.append(f"<th{attrs}>{esc(t.header(c))}</th>")
    out.append("</tr></thead><tbody>")
    for i, row in df.iterrows():
        cls = row_class(row) if row_class else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        for c in t.columns:
            v = row.get(c.key)
            if c.kind == "text":
                txt = "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)
                out.append(f'<td data-v="{esc(txt)}">{esc(txt)}</td>')
                continue
            f = _num(v)
            if f is None:
                out.append('<td class="num" data-v="">–</td>')
                continue
            s = esc(f"{f:.{c.digits}f}")
            lo, hi = _num(row.get(f"{c.key}_lo")), _num(row.get(f"{c.key}_hi"))
            ci = f'<span class="ci">{lo:.{c.digits}f}–{hi:.{c.digits}f}</span>' if c.ci and lo is not None and hi is not None else ""
            klass = "num best" if best.get((i, c.key)) else "num"
            out.append(f'<td class="{klass}" data-v="{f!r}">{s}{ci}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


@dataclass
class Page:
    title: str
    parts: list[str] = field(default_factory=list)

    def h(self, level: int, text: str, anchor: str | None = None) -> None:
        a = f' id="{esc(anchor)}"' if anchor else ""
        self.parts.append(f"<h{level}{a}>{esc(text)}</h{level}>")

    def p(self, text: str, cls: str = "caption") -> None:
        self.parts.append(f'<p class="{cls}">{esc(text)}</p>')

    def raw(self, fragment: str) -> None:
        self.parts.append(fragment)

    def notes(self, items: list[str]) -> None:
        if items:
            self.parts.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in items) + "</ul>")

    def figure(self, png: bytes, caption: str) -> None:
        self.parts.append(f"<figure>{img_tag(png, caption)}<figcaption>{esc(caption)}</figcaption></figure>")

    def render(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>\n"
                + "\n".join(self.parts)
                + f"\n<script>{JS}</script>\n</body></html>\n")
