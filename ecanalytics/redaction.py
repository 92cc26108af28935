"""Masking of AWS secrets in log records: the second line of defence behind "never log a secret".

The first line is that ecanalytics logs no credentials and keeps third-party loggers (botocore,
s3fs) at WARNING. When someone asks for ``--log-level botocore=debug``, botocore dumps request
headers and bodies; :class:`RedactingFilter` rewrites every record that reaches the CLI's handler
so that access key ids, secret keys, session tokens and ``Authorization`` headers never reach a log.

Example:
    >>> redact("Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/2026")
    'Authorization: [REDACTED]'
    >>> redact("key ASIAIOSFODNN7EXAMPLE")
    'key ASIA[REDACTED]'
"""

from __future__ import annotations

import logging
import os
import re

MASK = "[REDACTED]"
# Access key ids: a four-letter kind (AKIA long-term, ASIA temporary, ...) and 16 more characters.
_KEY_ID = re.compile(r"\b(AKIA|ASIA|AROA|AIDA|AGPA|AIPA|ANPA|ANVA|APKA|ABIA|ACCA)[A-Z0-9]{16}\b")
# name = value, name: value, 'name': b'value', "name": "value", name=value& (query strings).
_NAMED = re.compile(
    r"""(?ix)
    (?P<name>x-amz-security-token|x-amz-credential|aws_session_token|aws_secret_access_key|aws_security_token
       |session_token|secret_access_key|secret_key|sessiontoken|secretaccesskey|security_token)
    (?P<sep>['"]?\s*[:=]\s*b?['"]?)
    (?P<value>[^'"&\s,;}]+)
    """
)
_AUTHORIZATION = re.compile(r"""(?i)(authorization['"]?\s*[:=]\s*b?['"]?)[^'"\r\n}]+""")
_URI_USERINFO = re.compile(r"(s3a?://)[^/@\s:]+:[^@\s]+@")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def redact(text: str) -> str:
    """``text`` with AWS credentials masked: key ids keep their four-letter kind, secrets, session
    tokens, ``Authorization`` headers and ``s3://KEY:SECRET@`` user info are replaced whole, and
    so is the value of any ``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN`` in the environment."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 8 and value in text:
            text = text.replace(value, MASK)
    text = _AUTHORIZATION.sub(lambda m: m.group(1) + MASK, text)
    text = _NAMED.sub(lambda m: m.group("name") + m.group("sep") + MASK, text)
    text = _URI_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    return _KEY_ID.sub(lambda m: m.group(1) + MASK, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (arguments merged in) and its traceback with :func:`redact`.

    Attach it to a handler, so it sees the records of every logger that reaches the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
