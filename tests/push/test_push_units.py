"""Unit tests of the push building blocks: address rules, endpoint checks, payload bounds.

No traffic leaves the machine: IP literals need no DNS, and "localhost" resolves
from the hosts file.
"""

from __future__ import annotations

import email.utils
import json
import os
import time

import http_ece  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from parley.protocol.errors import InvalidRequest
from parley.services import push
from parley.services.push import (
    MAX_PAYLOAD_BYTES,
    EndpointRefused,
    GuardedResolver,
    Note,
    address_allowed,
    check_endpoint,
    encrypt_payload,
    gateway_payload,
    topic_for,
    validate_keys,
    webpush_payload,
)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # shared address space (CGNAT)
        ("169.254.169.254", False),  # link-local (cloud metadata)
        ("224.0.0.1", False),  # multicast
        ("239.255.255.250", False),
        ("240.0.0.1", False),  # reserved
        ("255.255.255.255", False),
        ("0.0.0.0", False),
        ("192.0.2.1", False),  # documentation
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("2001:db8::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
        ("not an address", False),
    ],
)
def test_address_rules(address: str, allowed: bool) -> None:
    assert address_allowed(address) is allowed


async def test_public_ip_literal_endpoint_passes_without_dns() -> None:
    await check_endpoint("https://8.8.8.8/push/abc", allow_insecure=False)
    await check_endpoint("https://[2606:4700:4700::1111]:8443/push/abc", allow_insecure=False)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://8.8.8.8/push",
        "https://localhost/push",
        "https://127.0.0.1/push",
        "https://[::1]/push",
        "https://user@8.8.8.8/push",
        "https:///push",
        "https://8.8.8.8/push with space",
        "https://[::1/push",
    ],
)
async def test_refused_endpoints(endpoint: str) -> None:
    with pytest.raises(EndpointRefused):
        await check_endpoint(endpoint, allow_insecure=False)


async def test_insecure_flag_allows_local_http_but_still_checks_shape() -> None:
    await check_endpoint("http://127.0.0.1:9/push", allow_insecure=True)
    with pytest.raises(EndpointRefused):
        await check_endpoint("ftp://127.0.0.1/push", allow_insecure=True)
    with pytest.raises(InvalidRequest):
        await check_endpoint("https://8.8.8.8/" + "x" * 3000, allow_insecure=True)


async def test_guarded_resolver_refuses_loopback_names() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(OSError, match="non-public"):
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()


def _keys() -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return key, point, os.urandom(16)


def test_key_validation() -> None:
    _, point, auth = _keys()
    b64 = push.b64url_encode
    assert validate_keys(b64(point), b64(auth)) == (point, auth)
    assert validate_keys(b64(point) + "=", b64(auth) + "==") == (point, auth)  # padding is fine
    compressed = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    for p256dh, secret in [
        (b64(compressed), b64(auth)),
        (b64(b"\x04" + b"\x01" * 64), b64(auth)),  # not on the curve
        (b64(point), b64(auth[:15])),
        (b64(point).replace("-", "+").replace("_", "/") + "+/", b64(auth)),
        ("", b64(auth)),
    ]:
        with pytest.raises(InvalidRequest):
            validate_keys(p256dh, secret)


def _note(**kw: object) -> Note:
    fields: dict[str, object] = {
        "user_id": "u1",
        "conversation_id": "c1",
        "conversation_type": "group",
        "conversation_name": "Team",
        "sender_id": "u2",
        "sender_name": "Bob",
        "message_id": "m1",
        "seq": 7,
        "sent_at": 1,
        "preview": "hi",
        "unread": 2,
    }
    fields.update(kw)
    return Note(**fields)  # type: ignore[arg-type]


def test_payload_is_bounded_and_decrypts_from_one_record() -> None:
    huge = _note(
        preview="\x00" * 200,  # each escapes to six bytes
        sender_name="é" * 5000,
        conversation_name="名" * 5000,
    )
    plain = webpush_payload(huge, 3)
    assert len(plain) <= MAX_PAYLOAD_BYTES
    assert json.loads(plain)["body"] == "3 new messages"
    key, point, auth = _keys()
    body = encrypt_payload(plain, point, auth)
    assert len(body) < 4096
    assert http_ece.decrypt(body, private_key=key, auth_secret=auth, version="aes128gcm") == plain


def test_coalesced_body_and_gateway_shape() -> None:
    payload = json.loads(webpush_payload(_note(), 4))
    assert payload["title"] == "Bob in Team"
    assert payload["body"] == "hi\n(4 new messages)"
    assert payload["count"] == 4
    note = json.loads(gateway_payload(_note(preview=None), 4, []))["notification"]
    assert "content" not in note and note["counts"] == {"unread": 2, "coalesced": 4}
    assert note["prio"] == "low"


def test_topic_is_short_and_url_safe() -> None:
    topic = topic_for("c" * 200)
    assert len(topic) == 32 and all(c.isalnum() or c in "-_" for c in topic)
    assert topic == topic_for("c" * 200) != topic_for("d")


def test_retry_after_seconds_and_dates() -> None:
    assert push._retry_after("7") == 7.0
    assert push._retry_after(None) is None
    assert push._retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    value = push._retry_after(later)
    assert value is not None and 25 <= value <= 31
