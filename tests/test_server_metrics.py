"""`GET /metrics`: Prometheus' text format, behind the API key, scraped through real HTTP
after requests made with the official clients."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .served import CONTEXT, KEY, MAX_TOKENS_CAP, MODEL, Served, user


@pytest.fixture(scope="module")
def served(module_server) -> Served:
    return module_server(
        max_context=CONTEXT,
        max_tokens_cap=MAX_TOKENS_CAP,
        cache_bytes=64 << 20,
        app={"max_body_bytes": 4096},
    )


@pytest.fixture
def client(served) -> openai.OpenAI:
    return served.client()


def scrape(served) -> dict[tuple[str, tuple], float]:
    """Every sample, by name and labels."""
    response = httpx.get(
        served.base + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests(samples: dict, route: str, status: int, method: str = "POST") -> float:
    labels = {"route": route, "method": method, "status": str(status)}
    return value(samples, "qwen_mlx_http_requests_total", **labels)


def test_metrics_need_the_key_and_health_does_not(served):
    assert httpx.get(served.base + "/metrics", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert httpx.get(served.base + "/metrics", headers=wrong, timeout=10).status_code == 401
    assert httpx.get(served.base + "/health", timeout=10).status_code == 200


def test_requests_are_counted_by_route_template_and_status(served, client):
    before = scrape(served)
    client.chat.completions.create(model=MODEL, messages=user("hi"), max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=user("hi"), max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")
    httpx.get(served.base + "/v1/no/such/route", timeout=10)
    big = {"messages": user("x" * 8000)}
    headers = {"Authorization": f"Bearer {KEY}"}
    assert (
        httpx.post(served.base + "/v1/chat/completions", json=big, headers=headers).status_code
        == 413
    )
    after = scrape(served)

    def delta(route: str, status: int, method: str = "POST") -> float:
        return requests(after, route, status, method) - requests(before, route, status, method)

    assert delta("/v1/chat/completions", 200) == 1
    assert delta("/v1/chat/completions", 404) == 1
    assert delta("/v1/chat/completions", 413) == 1  # refused before any route ran
    # The route's template, not the id a client sent: the label set stays small.
    assert delta("/v1/responses/{response_id}", 404, "GET") == 1
    assert delta("unmatched", 404, "GET") == 1
    assert requests(after, "/metrics", 200, "GET") >= 1


def test_tokens_timings_and_the_prompt_cache_are_counted(served, client):
    served.engine.cache.clear()
    before = scrape(served)
    messages = user("Count my tokens, please")
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Again"},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    after = scrape(served)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    usages = [first.usage, second.usage]
    assert delta("qwen_mlx_prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert delta("qwen_mlx_generated_tokens_total") == sum(u.completion_tokens for u in usages)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached > 0
    assert delta("qwen_mlx_prompt_cached_tokens_total") == cached
    assert delta("qwen_mlx_prompt_cache_hits_total") == 1
    assert delta("qwen_mlx_prompt_cache_misses_total") == 1
    reasons = [c.choices[0].finish_reason for c in (first, second)]
    for reason in set(reasons):
        assert delta("qwen_mlx_generations_total", finish_reason=reason) == reasons.count(reason)
    assert delta("qwen_mlx_time_to_first_token_seconds_count") == 2
    assert delta("qwen_mlx_time_to_first_token_seconds_sum") > 0
    assert delta("qwen_mlx_generation_tokens_per_second_count") == sum(
        u.completion_tokens > 1 for u in usages
    )
    # Read at scrape time.
    assert value(after, "qwen_mlx_queue_depth") == 0
    assert value(after, "qwen_mlx_prompt_cache_entries") == len(served.engine.cache) >= 1
    assert value(after, "qwen_mlx_prompt_cache_bytes") == served.engine.cache.bytes > 0
    assert value(after, "qwen_mlx_prompt_cache_tokens") == served.engine.cache.tokens
    assert value(after, "qwen_mlx_memory_active_bytes") > 0


def test_a_method_http_does_not_define_is_counted_as_other(served):
    headers = {"Authorization": f"Bearer {KEY}"}
    for name in ("BREW", "PROPFIND", "X" * 40):
        httpx.request(name, served.base + "/v1/chat/completions", headers=headers, timeout=10)
        httpx.request(name, served.base + "/health", timeout=10)
    samples = scrape(served)
    methods = {
        dict(labels)["method"]
        for (name, labels) in samples
        if name == "qwen_mlx_http_requests_total"
    }
    assert "other" in methods
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"}
    assert requests(samples, "/v1/chat/completions", 405, "other") >= 3
    assert requests(samples, "/health", 405, "other") >= 3
