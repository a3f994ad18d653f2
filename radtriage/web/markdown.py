"""Model cards as HTML, rendered by markdown-it-py (CommonMark + pipe tables).

Raw HTML is disabled, so a model card can never inject markup: `<script>` in a card comes out as text.
markdown-it-py's own link validation drops `javascript:`, `vbscript:`, `file:` and `data:` targets. Two
renderer rules fit the output to the page: headings go one level down (the page has its own `<h1>`), and tables
are wrapped in a scrolling box with column headers marked `scope="col"` (readable at phone width).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup


def _heading_one_level_down(renderer: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    level = min(6, int(token.tag[1]) + 1)
    closing = "/" if token.nesting == -1 else ""
    return f"<{closing}h{level}>" + ("\n" if closing else "")


def _table_open(renderer: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return '<div class="table-scroll"><table>\n'


def _table_close(renderer: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return "</table></div>\n"


def _column_header(renderer: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    tokens[idx].attrSet("scope", "col")
    return str(renderer.renderToken(tokens, idx, options, env))


@cache
def _renderer() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("heading_open", _heading_one_level_down)
    md.add_render_rule("heading_close", _heading_one_level_down)
    md.add_render_rule("table_open", _table_open)
    md.add_render_rule("table_close", _table_close)
    md.add_render_rule("th_open", _column_header)
    return md


def render_markdown(text: str) -> Markup:
    """`text` as safe HTML (see the module docstring)."""
    return Markup(_renderer().render(text))
