"""The model card renderer (markdown-it-py): enough Markdown for a model card, and never a way to inject markup."""

from __future__ import annotations

from radtriage.model.registry import SHIPPED_DEFAULT
from radtriage.web.markdown import render_markdown


def test_headings_lists_tables_and_inline_markup() -> None:
    html = str(
        render_markdown(
            "# Card\n\nSome **bold**, *italic* and `code`.\n\n* one\n* two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
            "See <https://example.org/x> and [the docs](docs/model.md)."
        )
    ).replace("\n", "")
    assert "<h2>Card</h2>" in html  # one level down: the page has its own h1
    assert "<strong>bold</strong>" in html and "<em>italic</em>" in html and "<code>code</code>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html
    assert '<th scope="col">a</th>' in html and "<td>2</td>" in html
    assert '<a href="https://example.org/x"' in html and '<a href="docs/model.md"' in html


def test_markup_and_script_links_are_neutralised() -> None:
    html = str(render_markdown("<script>alert(1)</script> [x](javascript:alert(1)) `<b>`"))
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "href=\"javascript" not in html and "<code>&lt;b&gt;</code>" in html  # left as text, never a link


def test_the_shipped_model_card_renders() -> None:
    html = str(render_markdown((SHIPPED_DEFAULT / "MODEL_CARD.md").read_text("utf-8")))
    assert "<h3>Intended use</h3>" in html and "<table>" in html and "**" not in html


def test_raw_html_blocks_and_unsafe_link_schemes_stay_text() -> None:
    html = str(render_markdown('<img src=x onerror="alert(1)">\n\n[a](vbscript:x) [b](data:text/html,x)'))
    assert "<img" not in html and "&lt;img" in html
    assert 'href="vbscript' not in html and 'href="data:' not in html
