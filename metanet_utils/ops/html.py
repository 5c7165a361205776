"""The HTML report ``outputs/report.html``: one page per executed notebook and an index with Table 1.

It reads right offline (a classroom, a cluster): nbconvert's JupyterLab page without the scripts it loads from a CDN,
the math pre-rendered as MathML, which browsers draw without a script.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import latex2mathml.converter
import nbformat
from jinja2 import DictLoader, pass_context
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

from ..atomic import atomic_write_text
from ..paths import tables_dir

_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{% block html_head_js %}{% endblock html_head_js %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
"""


def _html_exporter() -> Any:
    """nbconvert's HTML exporter with math as MathML, no script from the network, code cells hidden."""
    def mathml(tex: str, display: str) -> str:
        try:
            return latex2mathml.converter.convert(tex, display=display)
        except Exception:  # noqa: BLE001 - TeX it cannot read stays readable as TeX
            return f"<code>{html.escape(tex)}</code>"

    class MathMLRenderer(IPythonRenderer):
        def block_math(self, body: str) -> str:
            return mathml(body, "block")

        def inline_math(self, body: str) -> str:
            return mathml(body, "inline")

    class OfflineHTMLExporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context: Any, source: str) -> str:
            renderer = MathMLRenderer(escape=False, attachments=context.get("cell", {}).get("attachments", {}),
                                      anchor_link_text=self.anchor_link_text,
                                      exclude_anchor_links=self.exclude_anchor_links)
            return MarkdownWithMath(renderer=renderer).render(source)

    return OfflineHTMLExporter(extra_loaders=[DictLoader({"offline.html.j2": _OFFLINE_TEMPLATE})],
                               template_file="offline.html.j2", exclude_input=True, exclude_input_prompt=True,
                               exclude_output_prompt=True)


def _protocol_box(prov: dict[str, Any]) -> str:
    """A red box for a run that only shows how the kit works, an amber one for a shortened protocol, else ""."""
    diffs = "; ".join(map(str, prov.get("protocol_differences") or []))
    if not diffs and not prov.get("mechanics_only"):
        return ""
    if prov.get("mechanics_only"):
        colour = "#fdd; border: 3px solid #c00"
        head = ("<b>NOT THE PAPER'S PROTOCOL: these numbers show how the kit works, not the paper's results.</b> "
                "Run the <code>quick</code> or <code>paper</code> profile for numbers to compare.")
    else:
        colour = "#fff4d6; border: 3px solid #c80"
        head = ("<b>Not exactly the paper's protocol.</b> These numbers approximate the paper's setting; compare "
                "them with care.")
    return (f"<div style='background: {colour}; padding: .8rem 1rem'>{head}<p><code>"
            f"{html.escape(str(prov.get('caption', '')))}</code></p>"
            + (f"<p>Where it departs from the paper: {html.escape(diffs)}.</p>" if diffs else "") + "</div>")


def write_html_report(executed_dir: str | Path, out_html: str | Path) -> Path:
    """The HTML report: a page per notebook of ``executed_dir`` in ``<out_html's folder>/report/``, and the index
    ``out_html`` with Table 1 under a box saying how far the run is from the paper's protocol (``provenance.json``).
    """
    executed_dir, out_html = Path(executed_dir), Path(out_html)
    tables = tables_dir()
    exporter, links = _html_exporter(), []
    for path in sorted(executed_dir.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        title = next((line[2:].strip() for c in nb.cells[:1] if c.cell_type == "markdown"
                      for line in c.source.splitlines() if line.startswith("# ")), path.stem)
        page, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        atomic_write_text(out_html.parent / "report" / f"{path.stem}.html", page)
        links.append(f"1. [{title}](report/{path.stem}.html) ({path.stem})")
    prov = json.loads((tables / "provenance.json").read_text()) if (tables / "provenance.json").is_file() else {}
    t1 = tables / "table1.md"
    text = ["# MetaNet reproduction report",
            "Li, Zhuang, Wang, Zhang, Zheng: *Fusing metadata and dermoscopy images for skin disease diagnosis*, "
            f"ISBI 2020. Generated {time.strftime('%Y-%m-%d %H:%M')}"
            + (f", profile **{prov['profile']}**" if prov.get("profile") else "") + ".",
            _protocol_box(prov), "## Table 1: mean class recall (%), ours beside the paper's",
            t1.read_text() if t1.is_file() else "No Table 1 yet: run notebook 09 or `python -m metanet_utils tables`.",
            f"{prov.get('completeness')} Data: {prov.get('data')}. All four tables: `results/tables/`; every deviation "
            "from the paper's protocol: the 09 report notebook." if prov else "",
            "## Notebooks", "\n".join(links) or f"No executed notebooks in `{executed_dir}`."]
    index = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("\n\n".join(t for t in text if t))])
    page, _ = exporter.from_notebook_node(index, resources={"metadata": {"name": "MetaNet reproduction report"}})
    atomic_write_text(out_html, page)
    return out_html
