"""Text from untrusted places (file names, a model's answer, EXIF) made safe for the files we
write: spreadsheets (CSV formula injection), XML (KML, XMP) and UTF-8 text (file names that are
not valid UTF-8)."""

from __future__ import annotations

import re

# A cell starting with one of these is run as a formula by Excel, LibreOffice and Google Sheets
# (OWASP "CSV injection"); a leading apostrophe makes it plain text in all three.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "|", "%")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")

# Characters XML 1.0 forbids anywhere, even escaped: C0 controls other than tab/LF/CR, lone
# surrogates, U+FFFE and U+FFFF. One of them in a KML or XMP file makes the whole file unreadable.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def csv_safe(value):
    """`value` for a CSV cell: text a spreadsheet would run as a formula gets a leading
    apostrophe; numbers (also as text, e.g. "-33.5") and other types pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.match(value):
        return "'" + value
    return value


def csv_unguard(value: str) -> str:
    """Inverse of csv_safe, for files we read back (a pick list)."""
    if value.startswith("'") and value[1:].startswith(_FORMULA_START):
        return value[1:]
    return value


def utf8_text(text: str) -> str:
    """`text` that encodes as UTF-8: a file name Python read with surrogate escapes (bytes that
    are not UTF-8) shows its raw bytes as \\xNN instead of failing the write."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else \
            text.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "backslashreplace")


def _only_escapes(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def xml_text(text: str) -> str:
    """`text` with the characters XML 1.0 forbids removed (after utf8_text, so a non-UTF-8
    file name keeps its bytes visible as \\xNN)."""
    return _XML_INVALID.sub("", utf8_text(text))
