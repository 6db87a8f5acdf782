"""``email``: sends one message through the configured SMTP server.

A 5xx SMTP reply (recipient, sender, data or authentication refused) is
permanent; connection problems, timeouts and 4xx replies are retried.
Error messages never contain the SMTP password.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from typing import Any

import aiosmtplib
from pydantic import ConfigDict, Field, field_validator

from jobd.handlers.base import JobContext, JobType, PermanentError, StrictPayload

MAX_ERROR_CHARS = 300
_BAD_HEADER_CHARS = ("\r", "\n", "\0")


class SmtpError(Exception):
    """Sending failed in a way that may succeed later (retryable)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _addr_spec(value: str) -> str:
    """The bare ``local@domain`` of one address (``"Name <a@b>"`` allowed)."""
    if any(c in value for c in _BAD_HEADER_CHARS):
        raise ValueError("address must not contain CR, LF or NUL")
    parsed = getaddresses([value])
    if len(parsed) != 1:
        raise ValueError(f"expected one address, got {value[:100]!r}")
    addr = parsed[0][1]
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or "@" in local or any(c.isspace() for c in addr):
        raise ValueError(f"{value[:100]!r} is not an email address")
    return addr


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class EmailPayload(StrictPayload):
    # extra="forbid" is inherited (pydantic merges model_config with the parent's).
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    to: str | list[str]
    subject: str = Field(max_length=998)
    body: str
    html: str | None = None
    cc: str | list[str] | None = None
    from_: str | None = Field(None, alias="from")

    @field_validator("to")
    @classmethod
    def _check_to(cls, value: str | list[str]) -> str | list[str]:
        addresses = _as_list(value)
        if not addresses:
            raise ValueError("at least one recipient is required")
        for address in addresses:
            _addr_spec(address)
        return value

    @field_validator("cc", "from_")
    @classmethod
    def _check_addresses(cls, value: str | list[str] | None) -> str | list[str] | None:
        for address in _as_list(value):
            _addr_spec(address)
        return value

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        if any(c in value for c in _BAD_HEADER_CHARS):
            raise ValueError("subject must not contain CR, LF or NUL")
        return value

    def to_list(self) -> list[str]:
        return _as_list(self.to)

    def cc_list(self) -> list[str]:
        return _as_list(self.cc)


def build_message(payload: EmailPayload, from_address: str) -> EmailMessage:
    sender = payload.from_ or from_address
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(payload.to_list())
    if payload.cc_list():
        msg["Cc"] = ", ".join(payload.cc_list())
    msg["Subject"] = payload.subject
    msg["Date"] = formatdate(usegmt=True)
    # An explicit domain avoids make_msgid's socket.getfqdn() (a DNS lookup).
    domain = _addr_spec(sender).rpartition("@")[2]
    msg["Message-ID"] = make_msgid(domain=domain)
    msg.set_content(payload.body)
    if payload.html is not None:
        msg.add_alternative(payload.html, subtype="html")
    return msg


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


async def run_email(payload: EmailPayload, ctx: JobContext) -> dict[str, Any]:
    smtp = ctx.services.config.smtp
    message = build_message(payload, smtp.from_address)
    sender = _addr_spec(str(message["From"]))
    recipients = [_addr_spec(a) for a in payload.to_list() + payload.cc_list()]
    try:
        refused, _reply = await aiosmtplib.send(
            message,
            sender=sender,
            recipients=recipients,
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username,
            password=smtp.password,
            # False means never STARTTLS; None would mean "if offered".
            start_tls=smtp.starttls,
            use_tls=False,
            timeout=smtp.timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        detail = ", ".join(f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients)
        text = _scrub(f"SMTP refused all recipients: {detail}", smtp.password)
        if codes and all(code >= 500 for code in codes):
            raise PermanentError(text) from None
        raise SmtpError(text, min(codes) if codes else None) from None
    except aiosmtplib.SMTPResponseException as exc:
        text = _scrub(f"SMTP {exc.code} ({type(exc).__name__}): {exc.message}", smtp.password)
        if exc.code >= 500:
            raise PermanentError(text) from None
        raise SmtpError(text, exc.code) from None
    except aiosmtplib.SMTPNotSupported as exc:
        raise PermanentError(_scrub(f"SMTP: {exc.message}", smtp.password)) from None
    except Exception as exc:
        text = _scrub(f"{type(exc).__name__}: {exc}", smtp.password)
        raise SmtpError(text) from exc

    result: dict[str, Any] = {
        "messageId": str(message["Message-ID"]),
        "recipients": [r for r in recipients if r not in refused],
    }
    if refused:
        result["refused"] = {
            addr: _scrub(f"{resp.code} {resp.message}", smtp.password)
            for addr, resp in refused.items()
        }
    return result


EMAIL = JobType("email", run_email, EmailPayload,
                "Sends an email through the configured SMTP server.")
