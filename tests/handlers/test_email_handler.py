"""The ``email`` job type against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import email
import socket
from collections.abc import Iterator
from email import policy
from email.message import Message
from email.utils import getaddresses
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from pydantic import ValidationError

from jobd.config import load_config
from jobd.handlers.base import JobContext, PermanentError, Services
from jobd.handlers.email import EMAIL, EmailPayload, SmtpError, run_email


class Collector:
    def __init__(self, rcpt_reply: str | None = None, refuse: tuple[str, ...] = ()) -> None:
        self.messages: list[dict[str, Any]] = []
        self.rcpt_reply = rcpt_reply
        self.refuse = refuse

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any,
                          address: str, rcpt_options: list[str]) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        if address in self.refuse:
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append({
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "content": envelope.content,
        })
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(handler: Any, **kwargs: Any) -> Controller:
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(),
                            server_hostname="smtp.test", **kwargs)
    controller.start()
    return controller


@pytest.fixture
def smtp_server() -> Iterator[tuple[Controller, Collector]]:
    collector = Collector()
    controller = start(collector)
    try:
        yield controller, collector
    finally:
        controller.stop()


def make_ctx(port: int, **extra_env: str) -> JobContext:
    env = {"JOBD_SMTP_HOST": "127.0.0.1", "JOBD_SMTP_PORT": str(port), **extra_env}
    return JobContext(job_id="job-1", tenant_id="t1", attempt=1, max_attempts=3,
                      services=Services(config=load_config(environ=env)))


def payload(**data: Any) -> EmailPayload:
    data.setdefault("to", "alice@example.com")
    data.setdefault("subject", "Hello")
    data.setdefault("body", "Hi there")
    return EmailPayload.model_validate(data)


def addresses(msg: Message, header: str) -> list[str]:
    return [addr for _, addr in getaddresses(msg.get_all(header, []))]


def error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in err["loc"]) for err in exc.errors()}


# --- sending -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_sends_multipart_message(smtp_server: tuple[Controller, Collector]) -> None:
    controller, collector = smtp_server
    p = payload(to=["alice@example.com", "Bob <bob@example.org>"], cc="carol@example.net",
                subject="Quarterly report ✓", body="plain text body",
                html="<p>html body</p>")
    result = await run_email(p, make_ctx(controller.port))

    assert result["recipients"] == ["alice@example.com", "bob@example.org",
                                    "carol@example.net"]
    (got,) = collector.messages
    assert got["mail_from"] == "jobd@localhost"
    assert sorted(got["rcpt_tos"]) == sorted(result["recipients"])

    msg = email.message_from_bytes(got["content"], policy=policy.default)
    assert msg["Subject"] == "Quarterly report ✓"
    assert msg["From"] == "jobd@localhost"
    assert addresses(msg, "To") == ["alice@example.com", "bob@example.org"]
    assert addresses(msg, "Cc") == ["carol@example.net"]
    assert msg["Message-ID"] == result["messageId"]
    assert msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in msg.iter_parts()}
    assert parts["text/plain"].strip() == "plain text body"
    assert parts["text/html"].strip() == "<p>html body</p>"


@pytest.mark.asyncio
async def test_plain_message_with_payload_from(smtp_server: tuple[Controller, Collector]) -> None:
    controller, collector = smtp_server
    p = payload(**{"from": "Reports <reports@example.com>"})
    result = await run_email(p, make_ctx(controller.port, JOBD_SMTP_FROM="ignored@x.test"))
    (got,) = collector.messages
    assert got["mail_from"] == "reports@example.com"
    assert got["rcpt_tos"] == ["alice@example.com"]
    msg = email.message_from_bytes(got["content"], policy=policy.default)
    assert msg["From"] == "Reports <reports@example.com>"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "Hi there"
    assert result["messageId"].endswith("@example.com>")


@pytest.mark.asyncio
async def test_configured_from_address(smtp_server: tuple[Controller, Collector]) -> None:
    controller, collector = smtp_server
    await run_email(payload(), make_ctx(controller.port, JOBD_SMTP_FROM="noreply@corp.test"))
    (got,) = collector.messages
    assert got["mail_from"] == "noreply@corp.test"


@pytest.mark.asyncio
async def test_all_recipients_refused_is_permanent() -> None:
    controller = start(Collector(rcpt_reply="550 no such user"))
    try:
        with pytest.raises(PermanentError) as info:
            await run_email(payload(to=["a@example.com", "b@example.com"]),
                            make_ctx(controller.port))
    finally:
        controller.stop()
    assert "550" in str(info.value)
    assert "a@example.com" in str(info.value)


@pytest.mark.asyncio
async def test_some_recipients_refused_is_reported() -> None:
    collector = Collector(refuse=("b@example.com",))
    controller = start(collector)
    try:
        result = await run_email(payload(to=["a@example.com", "b@example.com"]),
                                 make_ctx(controller.port))
    finally:
        controller.stop()
    assert result["recipients"] == ["a@example.com"]
    assert result["refused"] == {"b@example.com": "550 no such user"}
    assert collector.messages[0]["rcpt_tos"] == ["a@example.com"]


@pytest.mark.asyncio
async def test_temporary_rejection_is_retryable() -> None:
    controller = start(Collector(rcpt_reply="451 try again later"))
    try:
        with pytest.raises(SmtpError) as info:
            await run_email(payload(), make_ctx(controller.port))
    finally:
        controller.stop()
    assert not isinstance(info.value, PermanentError)
    assert info.value.code == 451


@pytest.mark.asyncio
async def test_connection_refused_is_retryable() -> None:
    with pytest.raises(SmtpError) as info:
        await run_email(payload(), make_ctx(free_port(), JOBD_SMTP_TIMEOUT="5"))
    assert not isinstance(info.value, PermanentError)
    assert len(str(info.value)) <= 300


@pytest.mark.asyncio
async def test_auth_failure_is_permanent_and_hides_password() -> None:
    seen: list[Any] = []

    def authenticator(server: Any, session: Any, envelope: Any,
                      mechanism: str, auth_data: Any) -> AuthResult:
        seen.append(auth_data)
        return AuthResult(success=False, handled=False)

    collector = Collector()
    controller = start(collector, authenticator=authenticator, auth_require_tls=False)
    try:
        with pytest.raises(PermanentError) as info:
            await run_email(payload(), make_ctx(
                controller.port, JOBD_SMTP_USERNAME="mailer",
                JOBD_SMTP_PASSWORD="pw-s3cret-value"))
    finally:
        controller.stop()
    assert seen  # the client did try to log in
    assert "535" in str(info.value)
    assert "pw-s3cret-value" not in str(info.value)
    assert collector.messages == []


def test_job_type() -> None:
    assert EMAIL.name == "email"
    assert EMAIL.payload_model is EmailPayload
    assert EMAIL.handler is run_email


# --- payload validation ------------------------------------------------------


def test_payload_accepts_from_by_alias_and_name() -> None:
    assert payload(**{"from": "a@b.test"}).from_ == "a@b.test"
    assert payload(from_="a@b.test").from_ == "a@b.test"
    assert payload(to="x@y.test").to_list() == ["x@y.test"]
    assert payload(cc=["c@d.test"]).cc_list() == ["c@d.test"]


@pytest.mark.parametrize(("data", "field"), [
    ({"to": "alice@example.com\nBcc: victim@example.com"}, "to"),
    ({"to": []}, "to"),
    ({"to": ""}, "to"),
    ({"to": ["ok@example.com", "not-an-address"]}, "to"),
    ({"to": "two@@example.com"}, "to"),
    ({"to": "@example.com"}, "to"),
    ({"to": "user@"}, "to"),
    ({"subject": None}, "subject"),
    ({"subject": "Hi\r\nBcc: x@y.test"}, "subject"),
    ({"subject": "x" * 999}, "subject"),
    ({"cc": "bad\r\n@x.test"}, "cc"),
    ({"from": "nobody"}, "from"),
    ({"bogus": True}, "bogus"),
])
def test_payload_validation_names_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        payload(**data)
    fields = error_fields(info.value)
    assert any(f == field or f.startswith(field + ".") for f in fields), fields


def test_missing_subject_names_field() -> None:
    with pytest.raises(ValidationError) as info:
        EmailPayload.model_validate({"to": "a@example.com", "body": "x"})
    assert error_fields(info.value) == {"subject"}
