"""Cut a long text into pages of at most N tokens each, at clean boundaries, losing nothing.

The pages, concatenated, are exactly the text (tested): a page ends after the last line break in the
second half of its token window, else after the last whitespace there, else after the last JSON
separator (`,` `}` `]`), else at the last whole character (never inside a UTF-8 sequence). In a text
that opens like JSON (`[` or `{`) separators come before whitespace: minified JSON has no line breaks,
and its spaces are inside strings. Each page is re-counted on its own and shrunk until it fits, since a slice's
tokens may differ by a few from its share of the whole text's tokens at the cut.

Cost: the text is encoded once (~10 MB/s, see tokens.py) and each page once more.
"""

from __future__ import annotations

import bisect
import itertools

from broker.context import tokens

# boundaries a page prefers to end after, best first; one is taken only in the second half of the window
PROSE: tuple[bytes, ...] = (b"\n", b" \t", b",}]")
JSON_LIKE: tuple[bytes, ...] = (b"\n", b",}]", b" \t")
MIN_PAGE_TOKENS = 16


def _clean_end(data: bytes, start: int, end: int, boundaries: tuple[bytes, ...]) -> int:
    """Where a page that may run from byte `start` up to byte `end` of `data` should end."""
    if end >= len(data):
        return len(data)
    floor = start + (end - start) // 2
    for chars in boundaries:
        best = max(data.rfind(bytes([c]), floor, end) for c in chars)
        if best >= floor:
            return best + 1
    while end > start and (data[end] & 0xC0) == 0x80:  # a UTF-8 continuation byte: back to its lead
        end -= 1
    return end if end > start else start + 1  # a window of less than one character: take a byte more


def _char_end(data: bytes, start: int, end: int) -> int:
    """`end`, moved forward to the next character boundary (a page must decode on its own)."""
    while end < len(data) and (data[end] & 0xC0) == 0x80:
        end += 1
    return max(end, start + 1)


def split(text: str, budget: int) -> list[str]:
    """`text` as pages of at most `budget` tokens each (one page when it fits); "".join(pages) == text."""
    budget = max(MIN_PAGE_TOKENS, budget)
    if not tokens.over(text, budget):
        return [text]
    encoding = tokens.encoding()
    data = text.encode("utf-8", "surrogatepass")
    starts = [0, *itertools.accumulate(len(b) for b in encoding.decode_tokens_bytes(encoding.encode_ordinary(text)))]
    boundaries = JSON_LIKE if text.lstrip()[:1] in ("[", "{") else PROSE
    pages: list[str] = []
    start = 0
    while start < len(data):
        first = bisect.bisect_left(starts, start)
        window = budget
        while True:
            limit = starts[min(first + window, len(starts) - 1)]
            end = _char_end(data, start, _clean_end(data, start, limit, boundaries))
            page = data[start:end].decode("utf-8", "surrogatepass")
            excess = tokens.count(page) - budget
            if excess <= 0 or end - start <= 1:
                break
            window = max(1, window - max(excess, window // 16))
        pages.append(page)
        start = end
    return pages
