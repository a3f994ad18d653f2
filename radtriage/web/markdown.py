"""A small Markdown renderer for model cards: headings, paragraphs, bullet lists, pipe tables, bold, italics,
code spans and links. Everything is HTML-escaped first, so a model card can never inject markup; link targets
are kept only when they are http(s) URLs or relative paths."""

from __future__ import annotations

import html
import re

from markupsafe import Markup

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^\s*[*-]\s+(.*)$")
_TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_AUTOLINK = re.compile(r"&lt;(https?://[^\s&]+)&gt;")


def _safe_url(url: str) -> str | None:
    if url.startswith(("http://", "https://")) or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url):
        return url
    return None


def _inline(text: str) -> str:
    escaped = html.escape(text, quote=True)
    codes: list[str] = []

    def keep_code(match: re.Match[str]) -> str:
        codes.append(f"<code>{match.group(1)}</code>")
        return f"\x00{len(codes) - 1}\x00"

    escaped = _CODE.sub(keep_code, escaped)
    escaped = _BOLD.sub(r"<strong>\1</strong>", escaped)
    escaped = _ITALIC.sub(r"<em>\1</em>", escaped)

    def link(match: re.Match[str]) -> str:
        url = _safe_url(html.unescape(match.group(2)))
        if url is None:
            return match.group(1)
        return f'<a href="{html.escape(url, quote=True)}" rel="noopener noreferrer">{match.group(1)}</a>'

    escaped = _LINK.sub(link, escaped)
    escaped = _AUTOLINK.sub(r'<a href="\1" rel="noopener noreferrer">\1</a>', escaped)
    return re.sub(r"\x00(\d+)\x00", lambda m: codes[int(m.group(1))], escaped)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def render_markdown(text: str) -> Markup:
    """`text` as safe HTML (see the module docstring)."""
    out: list[str] = []
    paragraph: list[str] = []
    lines = text.splitlines()
    i = 0

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        heading = _HEADING.match(line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = min(6, len(heading.group(1)) + 1)  # the page has its own <h1>
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif _BULLET.match(line):
            flush()
            items = []
            while i < len(lines) and (bullet := _BULLET.match(lines[i])):
                items.append(f"<li>{_inline(bullet.group(1))}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1]):
            flush()
            header = "".join(f'<th scope="col">{_inline(c)}</th>' for c in _cells(line))
            body = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(lines[i])) + "</tr>")
                i += 1
            out.append(
                f'<div class="table-scroll"><table><thead><tr>{header}</tr></thead>'
                f"<tbody>{''.join(body)}</tbody></table></div>"
            )
            continue
        else:
            paragraph.append(line.strip())
        i += 1
    flush()
    return Markup("\n".join(out))
