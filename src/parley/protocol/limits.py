"""Sizes and counts fixed by the wire contract (protocol-v1), in one place."""

from __future__ import annotations

#: A message body may be at most this many bytes once UTF-8 encoded (contract: 16 KiB).
MAX_BODY_BYTES = 16 * 1024
#: A WebSocket frame over this closes the socket with 1009 (contract: 64 KiB).
MAX_FRAME_BYTES = 64 * 1024
#: An HTTP request body over this is refused with 413. A 16 KiB message body can
#: grow sixfold when every character is JSON-escaped (\\uXXXX), hence the headroom.
MAX_HTTP_BODY_BYTES = 128 * 1024
#: `client_msg_id` length bounds (contract: 1–64 characters).
MAX_CLIENT_MSG_ID = 64
#: History page size bounds (contract: 1–200, default 50).
MAX_PAGE = 200
DEFAULT_PAGE = 50
#: Long-poll wait bounds in seconds (contract: 0–60, default 30).
MAX_POLL_TIMEOUT = 60
DEFAULT_POLL_TIMEOUT = 30
#: A browser must authenticate with its first frame within this many seconds (contract: 10).
AUTH_FRAME_TIMEOUT = 10.0
#: Titles and display names: long enough for any real name, short enough for a list row.
MAX_TITLE_CHARS = 128
MAX_DISPLAY_NAME_CHARS = 64
MAX_DEVICE_NAME_CHARS = 64
#: Largest integer accepted anywhere (seq, cursor, times): SQLite's and
#: PostgreSQL's signed 64-bit INTEGER/BIGINT.
MAX_INT = 2**63 - 1
