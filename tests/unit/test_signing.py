from __future__ import annotations

import base64
import hashlib

import pytest

from jobd.signing import (
    signature_headers,
    standard_webhook_signature,
    verify_x_signature,
    x_signature,
)

# Hex digests produced once with `printf '%s' BODY | openssl dgst -sha256 -hmac KEY`.
OPENSSL_VECTORS: list[tuple[str, bytes, str]] = [
    (
        "s3cr3t",
        b"hello world",
        "d9b5f3e840587b0ea010e1b4c77ed7a8a3bae99ef7bb153ddb7ab31075b8ca80",
    ),
    ("key", b"", "5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0"),
    (
        "key",
        b"The quick brown fox jumps over the lazy dog",
        "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
    ),
    (
        "pässwörd",
        b'{"job_id":"j_1","status":"succeeded"}',
        "69aaf37ec1500b2da1f380b5a6e361351406acfff964dd6c08a44a8e123dab81",
    ),
]


def _hmac_sha256_by_hand(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 written out, independent of the ``hmac`` module."""
    block = 64
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\x00")
    ipad = bytes(k ^ 0x36 for k in key)
    opad = bytes(k ^ 0x5C for k in key)
    return hashlib.sha256(opad + hashlib.sha256(ipad + msg).digest()).digest()


@pytest.mark.parametrize(("secret", "body", "hexdigest"), OPENSSL_VECTORS)
def test_x_signature_matches_openssl(secret: str, body: bytes, hexdigest: str) -> None:
    assert x_signature(secret, body) == "sha256=" + hexdigest


@pytest.mark.parametrize(
    ("secret", "body"),
    [("s", b"x"), ("k" * 100, b"long key"), ("ключ", bytes(range(256)))],
)
def test_x_signature_matches_handwritten_hmac(secret: str, body: bytes) -> None:
    expected = _hmac_sha256_by_hand(secret.encode("utf-8"), body).hex()
    assert x_signature(secret, body) == f"sha256={expected}"


def test_standard_webhooks_spec_example() -> None:
    sig = standard_webhook_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_webhook_signature_plain_secret_uses_utf8_bytes() -> None:
    # openssl: printf '%s' 'msg_1.1700000000.{"a":1}' | openssl dgst -sha256
    #          -hmac plain-secret -binary | base64
    sig = standard_webhook_signature("plain-secret", "msg_1", 1700000000, b'{"a":1}')
    assert sig == "v1,PQ8G/5vQE995TQFlpC2YXRDs2RbuscvSWFk9pfKhuhc="


def test_standard_webhook_signature_whsec_key_is_base64_decoded() -> None:
    raw_key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(raw_key).decode()
    body = b"\x00binary\xffbody"
    mac = _hmac_sha256_by_hand(raw_key, b"id-9.42." + body)
    assert standard_webhook_signature(secret, "id-9", 42, body) == (
        "v1," + base64.b64encode(mac).decode()
    )


def test_signature_headers() -> None:
    body = b'{"test": 2432232314}'
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = signature_headers(
        secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body
    )
    assert headers == {
        "X-Signature": x_signature(secret, body),
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    assert headers["X-Signature"].startswith("sha256=")
    assert all(isinstance(v, str) for v in headers.values())


def test_verify_x_signature_accepts_valid() -> None:
    header = "sha256=d9b5f3e840587b0ea010e1b4c77ed7a8a3bae99ef7bb153ddb7ab31075b8ca80"
    assert verify_x_signature("s3cr3t", b"hello world", header)


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        ("s3cr3t", b"hello world!", None),  # body tampered
        ("s3cr3T", b"hello world", None),  # wrong secret
        ("s3cr3t", b"hello world", "sha256=" + "0" * 64),
        (
            "s3cr3t",
            b"hello world",
            "d9b5f3e840587b0ea010e1b4c77ed7a8a3bae99ef7bb153ddb7ab31075b8ca80",
        ),
        (
            "s3cr3t",
            b"hello world",
            "sha1=d9b5f3e840587b0ea010e1b4c77ed7a8a3bae99ef7bb153ddb7ab31075b8ca80",
        ),
        (
            "s3cr3t",
            b"hello world",
            "sha256=d9b5f3e840587b0ea010e1b4c77ed7a8a3bae99ef7bb153ddb7ab31075b8ca8",
        ),
        (
            "s3cr3t",
            b"hello world",
            "sha256=d9b5f3e840587b0ea010e1b4c77ed7a8a3bae99ef7bb153ddb7ab31075b8ca81",
        ),
        ("s3cr3t", b"hello world", ""),
        ("s3cr3t", b"hello world", "sha256=ü"),
    ],
)
def test_verify_x_signature_rejects_tampering(
    secret: str, body: bytes, header: str | None
) -> None:
    if header is None:
        header = x_signature("s3cr3t", b"hello world")
    assert not verify_x_signature(secret, body, header)


def test_verify_roundtrip_every_single_bit_flip_fails() -> None:
    body = b"payload"
    good = x_signature("k", body)
    assert verify_x_signature("k", body, good)
    for i in range(len(body) * 8):
        flipped = bytearray(body)
        flipped[i // 8] ^= 1 << (i % 8)
        assert not verify_x_signature("k", bytes(flipped), good)
