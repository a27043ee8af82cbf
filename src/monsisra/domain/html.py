"""HTML from outside: made safe to show (only text formatting survives, DESIGN §6), or read as text."""

from __future__ import annotations

import html as html_lib
import re
from html.parser import HTMLParser

import nh3

from monsisra.domain.text import clean_multiline

_ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "li", "ol", "p", "pre", "s", "small", "span", "strong", "sub", "sup", "table", "tbody", "td",
    "tfoot", "th", "thead", "tr", "u", "ul",
}
_ALLOWED_ATTRS = {"a": {"href", "title"}, "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan"},
                  "*": {"title", "lang", "dir"}}


def sanitize_html(html: str) -> str:
    """Only text formatting survives: no script, style, event handler, image or remote content."""
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRS,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


_SKIPPED = {"head", "title", "style", "script", "template", "noscript", "svg", "math", "object", "iframe"}
_BLOCKS = {"p", "div", "section", "article", "header", "footer", "table", "tr", "ul", "ol", "dl", "dt", "dd",
           "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "address", "hr", "form", "fieldset",
           "figure", "figcaption", "main", "nav", "aside", "center"}


_SPACES = re.compile(r"[ \t\r\n\f\v]+")  # not U+00A0: a non-breaking space is text


class _TextOf(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIPPED:
            self.skip += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag in _BLOCKS:
            self.out.append("\n\n" if tag in ("p", "table", "h1", "h2", "h3", "blockquote") else "\n")
            if tag == "pre":
                self.pre += 1

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag == "br":
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCKS:
            self.out.append("\n")
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data if self.pre else _SPACES.sub(" ", data))


def html_to_text(markup: str) -> str:
    """Readable text of an HTML body: entities decoded, head/title/style/script left out, blocks
    and line breaks kept as lines."""
    parser = _TextOf()
    try:
        parser.feed(markup)
        parser.close()
        text = "".join(parser.out)
    except Exception:  # HTMLParser is lenient; a pathological input still yields some text
        text = html_lib.unescape(markup)
    lines = [" ".join(w for w in line.split(" ") if w) for line in clean_multiline(text).split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


_BLANKS = re.compile(r"\n{3,}")
