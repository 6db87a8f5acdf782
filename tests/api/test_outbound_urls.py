"""Outbound URLs that could never be sent are refused at submit: a 400 naming the field,
nothing stored (through the aiohttp route and the fast lane alike)."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api

UNSENDABLE = [
    "http://a..b.example/hook",
    "http://.example.com/hook",
    "http://ex ample.com/hook",
    "http://xn--zz.example/hook",
    "http://" + "a" * 64 + ".example/hook",
    "http://exa\tmple.com/hook",
    "http://example.com:0/hook",
    "http://example.com:99999/hook",
    "http://1.2.3.256/hook",
]


@pytest.mark.parametrize("url", UNSENDABLE)
async def test_an_unsendable_webhook_url_is_400_naming_webhookurl(api: Api, url: str) -> None:
    r = await api.post_job(api.body(webhookUrl=url))
    assert r.error_fields() == ["webhookUrl"], r.json
    assert api.job_count() == 0 and api.created == []


@pytest.mark.parametrize("url", UNSENDABLE)
async def test_an_unsendable_http_job_url_is_400_naming_payload_url(api: Api, url: str) -> None:
    r = await api.post_job(api.body(type="http", payload={"url": url}))
    assert r.error_fields() == ["payload.url"], r.json
    assert api.job_count() == 0 and api.created == []


async def test_an_http_job_url_has_a_length_limit(api: Api) -> None:
    r = await api.post_job(api.body(type="http", payload={
        "url": "https://example.com/" + "a" * 9000}))
    assert r.error_fields() == ["payload.url"], r.json
    assert "over 8192 characters" in r.json["errors"][0]["message"]


async def test_the_error_says_what_is_wrong_with_the_host(api: Api) -> None:
    r = await api.post_job(api.body(webhookUrl="http://a..b.example/hook"))
    [error] = r.problem(400, "validation_error")["errors"]
    assert "empty label" in error["message"]


async def test_odd_but_sendable_urls_are_accepted(api: Api) -> None:
    for i, url in enumerate(["https://example.com./hook", "https://ex\u00e4mple.com/hook",
                             "https://_hooks.example.com:8443/hook"]):
        r = await api.post_job(api.body(type="http", payload={"url": url}, webhookUrl=url),
                               key=f"k{i}")
        assert r.status == 201, r.raw
