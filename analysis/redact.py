"""The one rule for secrets in URLs: a password is never printed or written.

Both sides use it: scaling (specs, storage errors, tracking) and analysis (the report's study
section), so it lives on the lower floor. Plain ``re`` and ``urllib``; no project imports.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["redact_url", "scrub"]

_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|sslpassword)=)([^&#]*)")
# scheme://userinfo@ ; the LAST "@" before the query ends the credentials: a raw (unencoded)
# password may hold "@" or even "/", and hiding a host too is better than showing a password
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^?#]*)@")


def _userinfo(url: str) -> re.Match | None:
    m = _USERINFO.match(url)
    # user:password, the user without "/" (sqlite:////a@b/x.db is a path, not credentials)
    return m if m and ":" in m.group(2) and "/" not in m.group(2).split(":", 1)[0] else None


def redact_url(url: str | None) -> str | None:
    """``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``; a password given as a
    query parameter (``?password=...``) too. A ``${VAR}`` reference is shown as written."""
    if url is None:
        return None
    text = str(url)
    m = _userinfo(text)
    if m:
        user = m.group(2).split(":", 1)[0]
        text = f"{m.group(1)}{user}:***@{text[m.end():]}"
    return _QUERY_SECRET.sub(lambda q: q.group(1) + "***", text)


def _secrets(url: str) -> list[str]:
    """The password of ``url`` as written and decoded, and the pieces a driver may quote when it
    parses a raw "@" or ":" differently (SQLAlchemy splits at the FIRST "@": ``u:SEC@RET@h`` is
    password ``SEC`` on host ``RET@h``). Pieces under 3 characters are left: they would hide
    ordinary words and cannot identify a password."""
    found: list[str] = []
    m = _userinfo(url)
    if m:
        found.append(m.group(2).split(":", 1)[1])
    found += [q.group(2) for q in _QUERY_SECRET.finditer(url)]
    out: set[str] = set()
    for pw in found:
        for form in {pw, unquote(pw)}:
            out.add(form)
            out.update(p for p in re.split(r"[@:/]", form) if len(p) >= 3)
    return sorted((s for s in out if s), key=len, reverse=True)  # longest first: no half-replaced secret


def scrub(text: str, url: str | None) -> str:
    """``text`` (an error message, a log line) with ``url`` redacted and every trace of its password
    replaced by ``***``: what a database driver's error may quote of a URL it was given."""
    if not url:
        return text
    shown = redact_url(url) or ""
    text = text.replace(url, shown)
    for s in _secrets(url):
        text = text.replace(s, "***")
    return text
