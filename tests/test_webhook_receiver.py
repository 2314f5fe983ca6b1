"""The webhook receiver (tests/support/webhook.py) records requests and misbehaves on demand."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.support.webhook import WebhookReceiver

WARNING = {"kind": "IdleWarning", "namespace": "jhub", "pod": "jupyter-ann", "in": "10m"}


async def test_records_method_path_headers_json_body_and_time(webhook: WebhookReceiver) -> None:
    assert webhook.url.startswith("http://127.0.0.1:")
    sent = time.time()
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            webhook.url + "?attempt=1", json=WARNING, headers={"X-Hubcull-Policy": "gpu"}
        )
    assert resp.status_code == 200
    [request] = await webhook.wait_for(1)
    assert (request.method, request.path, request.target) == ("POST", "/hook", "/hook?attempt=1")
    assert request.json == WARNING
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-hubcull-policy"] == "gpu"
    assert sent <= request.time <= time.time()
    assert request.status == 200


async def test_answers_500_when_told(webhook: WebhookReceiver) -> None:
    webhook.respond(500)
    async with httpx.AsyncClient() as client:
        assert (await client.post(webhook.url, json=WARNING)).status_code == 500
        webhook.respond(200)
        assert (await client.post(webhook.url, json=WARNING)).status_code == 200
    assert [r.status for r in webhook.requests] == [500, 200]


async def test_hangs_until_released(webhook: WebhookReceiver) -> None:
    webhook.hang()
    async with httpx.AsyncClient(timeout=30) as client:
        pending = asyncio.ensure_future(client.post(webhook.url, json=WARNING))
        [request] = await webhook.wait_for(1)  # it arrived, complete with its body...
        assert request.json == WARNING
        done, _ = await asyncio.wait({pending}, timeout=0.5)
        assert not done  # ...and gets no answer
        assert request.status is None
        webhook.release()
        with pytest.raises(httpx.RemoteProtocolError):  # dropped without an answer
            await pending


async def test_redirects_are_recorded_on_both_paths(webhook: WebhookReceiver) -> None:
    webhook.redirect()
    async with httpx.AsyncClient(follow_redirects=False) as client:
        resp = await client.post(webhook.url, json=WARNING)
    assert resp.status_code == 302
    assert resp.headers["location"] == webhook.redirect_path
    assert webhook.received(webhook.redirect_path) == []  # not followed: nothing there

    async with httpx.AsyncClient(follow_redirects=True) as client:
        resp = await client.post(webhook.url, json=WARNING)
    assert resp.status_code == 200
    assert [(r.method, r.path) for r in webhook.requests] == [
        ("POST", "/hook"),
        ("POST", "/hook"),
        ("GET", "/redirected"),  # a followed 302 turns the POST into a GET
    ]


async def test_refuses_connections_then_accepts_on_the_same_port(webhook: WebhookReceiver) -> None:
    url = webhook.url
    await webhook.refuse()
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.post(url, json=WARNING)
        await webhook.accept()
        assert webhook.url == url
        assert (await client.post(url, json=WARNING)).status_code == 200
    assert len(webhook.requests) == 1


async def test_wait_for_times_out_naming_what_arrived(webhook: WebhookReceiver) -> None:
    async with httpx.AsyncClient() as client:
        await client.put(webhook.base_url + "/elsewhere", content=b"not json")
    with pytest.raises(TimeoutError, match=r"0 of 1 requests to /hook.*PUT.*/elsewhere"):
        await webhook.wait_for(1, path="/hook", timeout=0.2)
    [other] = webhook.received("/elsewhere")
    with pytest.raises(ValueError):
        _ = other.json
