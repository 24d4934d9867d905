"""Opaque, unguessable ids: a one-letter kind prefix and 96 random bits."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)
