"""Credentials never leave the process: text that is printed or recorded (errors, manifests, run
settings) passes through :func:`redact_secrets`, which hides anything shaped like a key, and
:func:`redacted` applies it to every string of a recorded config."""

from __future__ import annotations

import re
from typing import Any, Sequence

REDACTED = "[REDACTED]"

_SECRET_PATTERNS = (
    # header or field names followed by a value: Authorization: Bearer x, "api_key": "x", api-key=x
    (re.compile(r"""(?i)((?:proxy-)?authorization|x-api-key|api[-_]?key|access[-_]?token|secret|password)"""
                r"""(["']?\s*[:=]\s*["']?)(?:(?:bearer|basic)\s+)?[^\s"',;&}]+"""), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"(?i)([?&](?:key|token|api[-_]?key|access_token)=)[^&#\s]+"), rf"\1{REDACTED}"),
    (re.compile(r"(://)[^/@\s]+@"), rf"\1{REDACTED}@"),  # user:password@ or token@ in a URL
)


def redact_secrets(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with the given secret values and anything shaped like a credential replaced by ``[REDACTED]``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redacted(value: Any) -> Any:
    """``value`` (a config dump: dicts, lists, strings, numbers) with every string passed through :func:`redact_secrets`."""
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(item) for item in value]
    return value
