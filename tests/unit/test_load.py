"""What autoscaling reads from Prometheus (`controller.drivers.load`): the figure, or None, never a crash."""

from __future__ import annotations

import json

import httpx
import pytest

from controller.drivers.load import PrometheusLoad


def answering(*bodies: tuple[int, object]) -> tuple[PrometheusLoad, list[str]]:
    asked: list[str] = []
    answers = iter(bodies)

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["query"])
        status, body = next(answers)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, stream=httpx.ByteStream(raw))  # read as a stream, as from a server

    return PrometheusLoad("http://prometheus.test", httpx.AsyncClient(transport=httpx.MockTransport(handler))), asked


def vector(*values: str) -> dict[str, object]:
    return {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, v]} for v in values]}}


@pytest.mark.parametrize(
    ("status", "body", "figure"),
    [
        (200, vector("12.5"), 12.5),
        (200, vector(), 0.0),  # nothing counted: no load
        (200, vector("NaN"), None),
        (503, vector("1"), None),
        (200, b"not json", None),
        (200, {"data": {"result": [{"value": "x"}]}}, None),
        (200, {"data": {"result": ["x"]}}, None),
        (200, [], None),
    ],
)
async def test_the_figure_or_none(status: int, body: object, figure: float | None) -> None:
    load, _ = answering((status, body))
    assert await load.requests_per_second(["shop.example.com"]) == figure


async def test_one_query_per_project_within_the_keep_time_and_none_without_domains() -> None:
    load, asked = answering((200, vector("3")), (200, vector("4")))
    assert await load.requests_per_second(["b.example.com", "a.example.com"]) == 3.0
    assert await load.requests_per_second(["a.example.com", "b.example.com"]) == 3.0  # kept
    assert len(asked) == 1 and 'host=~"(a\\\\.example\\\\.com|b\\\\.example\\\\.com)(:[0-9]+)?"' in asked[0]
    assert await load.requests_per_second([]) is None
