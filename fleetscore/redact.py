"""The one redaction function: secrets never reach output, logs, run records, reports or MLflow.

:func:`redact` masks, anywhere in a text, with ``****``:

- the password of a URL (``postgresql://u:pw@h/db``, ``http://user:pw@host``, ``mssql+pyodbc://...``);
- the value of a secret-named key in a query string, a connection string, ``odbc_connect=`` (plain or
  URL-encoded: ``PWD%3D...%3B``) or JSON: ``password``, ``passwd``, ``pwd``, ``secret``, ``token``,
  ``key``, ``AccountKey``, ``SharedAccessKey``, ``sig`` (SAS tokens), ``connection_string``, ... ;
- ``Bearer`` tokens.

It is used by the CLI's error handler, the logging setup (a filter on every record), ``fleetscore
config``, the run records, the HTML reports, the MLflow params and tags, and the Azure ML job check.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "****"
_NAMES = (r"[\w.-]*?(?:password|passwd|pwd|secret|token|accountkey|sharedaccesskey|sharedaccesssignature"
          r"|access_?key|api_?key|sig|key|connection_?string|credential)")
# key=value (query, connection string, odbc_connect, plain or %-encoded), value up to its delimiter
_PAIR = re.compile(rf"(?i)(?<![\w.-])({_NAMES})(\s*(?:=|%3D)\s*)((?:(?!%3B|%26|%22|%27)[^;&\s'\",}}<>])+)")
# "key": "value" (JSON) and key = "value" (TOML)
_QUOTED = re.compile(rf"(?i)([\"']?(?<![\w.-]){_NAMES}[\"']?\s*[:=]\s*)([\"'])((?:(?!\2).)+)(\2)")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@?#]*:)([^\s@/?#]+)(@)")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[a-z0-9._~+/-]+=*")


def redact(text: Any) -> str:
    """``text`` (made a string) with every secret it holds replaced by ``****``."""
    out = str(text)
    if not out:
        return out
    out = _URL_PASSWORD.sub(rf"\1{MASK}\3", out)
    out = _QUOTED.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(4)}" if m.group(3) != MASK else m.group(0),
                      out)
    out = _PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", out)
    return _BEARER.sub(rf"\1{MASK}", out)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (and its exception text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the formatted message in place; never drops a record."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
