"""An example job type for jobd: ``invoice``, which "sends" an invoice.

Register it in jobd's config::

    [handlers]
    invoice = "invoice_jobs:send_invoice"

or install this directory (``pip install ./docs/examples/invoice-jobs``): its entry point
in the ``jobd.handlers`` group registers the type ``invoice`` with no config at all.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobd.handlers.base import JobContext, JobType, PermanentError

BLOCKED_CUSTOMERS = {"cus_blocked"}


class InvoicePayload(BaseModel):
    """What a job of type ``invoice`` carries; jobd checks it when the job is submitted."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 400, not ignored

    customer_id: str = Field(min_length=1)
    amount_cents: int = Field(gt=0)
    currency: Literal["EUR", "USD"] = "EUR"


async def send_invoice(payload: InvoicePayload, ctx: JobContext) -> dict[str, object]:
    """Send one invoice; the returned dict becomes the job's ``result``."""
    if payload.customer_id in BLOCKED_CUSTOMERS:
        # Retrying cannot help: the job goes to `fatal` at once.
        raise PermanentError(f"customer {payload.customer_id} is blocked")
    # Any other exception (a timeout, a 503 from your mail provider...) is retried with
    # backoff, up to the job's maxAttempts. ctx.job_id is a good idempotency key for
    # whatever this calls, since an attempt may run again after a crash.
    return {
        "invoice": f"INV-{ctx.job_id[4:12]}",
        "customer": payload.customer_id,
        "total": f"{payload.amount_cents / 100:.2f} {payload.currency}",
        "attempt": ctx.attempt,
    }


# How jobd finds the payload model of a plain function:
send_invoice.payload_model = InvoicePayload  # type: ignore[attr-defined]

# The same type as one typed object, for `invoice = "invoice_jobs:INVOICE"`:
INVOICE = JobType("invoice", send_invoice, InvoicePayload, "Send an invoice.")
