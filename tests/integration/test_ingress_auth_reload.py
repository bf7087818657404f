"""Bad input, auth and hot reload, end to end on real sockets: what a client and an operator see."""

import hashlib
import json
import time

import httpx
import openai
import pytest
import yaml

ROUTE = {"models": {"primary": {"provider": "mock", "model": "ok"}}, "routes": {"auto": {"models": ["primary"]}}}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def post(gw, body, **kw) -> httpx.Response:
    payload = {"json": body} if isinstance(body, dict) else {"content": body}
    return httpx.post(f"{gw.base_url}/chat/completions", timeout=10, **kw, **payload)


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    if code is not None:
        assert error["code"] == code
    return error


# ---------------------------------------------------------------- bad input: never a 500


def test_malformed_json_is_400(make_gateway):
    gw = make_gateway(ROUTE)
    assert_openai_error(post(gw, b'{"model": "auto", "messages": ['), 400, "invalid_json")
    assert_openai_error(post(gw, b""), 400, "invalid_json")
    assert_openai_error(post(gw, b"[1, 2]"), 400, "invalid_json")


def test_wrong_types_and_missing_fields_name_the_parameter(make_gateway):
    gw = make_gateway(ROUTE)
    error = assert_openai_error(post(gw, {"model": "auto"}), 422)
    assert error["param"] == "messages"
    error = assert_openai_error(post(gw, {"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}), 422)
    assert error["param"] == "temperature"
    error = assert_openai_error(post(gw, {"model": "auto", "messages": [{"role": "robot", "content": "x"}]}), 422)
    assert error["param"] == "messages[0].role"
    assert_openai_error(post(gw, {"model": "auto", "messages": []}), 400)


def test_unknown_route_is_404_through_the_sdk(make_gateway):
    gw = make_gateway(ROUTE)
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"


def test_caps_on_n_max_tokens_and_body_size(make_gateway, mock):
    gw = make_gateway(ROUTE, server={"max_n": 2, "max_tokens": 100, "max_request_bytes": 2000})
    msg = [{"role": "user", "content": "x"}]
    assert assert_openai_error(post(gw, {"model": "auto", "messages": msg, "n": 3}), 400)["param"] == "n"
    assert_openai_error(post(gw, {"model": "auto", "messages": msg, "max_tokens": 101}), 400)
    assert_openai_error(post(gw, {"model": "auto", "messages": msg, "max_completion_tokens": 101}), 400)
    big = [{"role": "user", "content": "x" * 5000}]
    assert_openai_error(post(gw, {"model": "auto", "messages": big}), 413, "request_too_large")
    assert not mock.records()  # nothing reached the upstream

    def chunked():
        yield b'{"model": "auto", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    assert_openai_error(post(gw, chunked()), 413)


def test_unknown_path_and_method_are_openai_shaped(make_gateway):
    gw = make_gateway(ROUTE)
    assert_openai_error(httpx.get(f"{gw.base_url}/nothing"), 404)
    assert_openai_error(httpx.get(f"{gw.base_url}/chat/completions"), 405)


# ---------------------------------------------------------------- auth


KEYS = {
    "routes": {"auto": {"models": ["primary"]}, "secret": {"models": ["primary"]}},
    "keys": [
        {"name": "app", "key_sha256": sha("sk-app-key"), "routes": ["auto"]},
        {"name": "admin", "key_sha256": sha("sk-all-key")},
    ],
}


def test_keys_are_required_when_configured(make_gateway):
    gw = make_gateway(ROUTE, KEYS)
    msg = [{"role": "user", "content": "x"}]
    assert_openai_error(post(gw, {"model": "auto", "messages": msg}), 401, "invalid_api_key")
    wrong = openai.OpenAI(base_url=gw.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="auto", messages=msg)
    assert_openai_error(post(gw, {"model": "auto", "messages": msg}, headers={"authorization": "Basic abc"}), 401)
    app = openai.OpenAI(base_url=gw.base_url, api_key="sk-app-key", max_retries=0)
    assert app.chat.completions.create(model="auto", messages=msg).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        app.chat.completions.create(model="secret", messages=msg)
    assert [m.id for m in app.models.list()] == ["auto"]
    everything = openai.OpenAI(base_url=gw.base_url, api_key="sk-all-key", max_retries=0)
    assert [m.id for m in everything.models.list()] == ["auto", "secret"]


def test_auth_runs_before_the_body_is_read(make_gateway, mock):
    gw = make_gateway(ROUTE, KEYS)
    response = post(gw, b"not json at all")
    assert_openai_error(response, 401)
    assert not mock.records()


# ---------------------------------------------------------------- hot reload


def _wait(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_hot_reload_swaps_valid_policies_and_refuses_invalid_ones(make_gateway, mock):
    gw = make_gateway(ROUTE)
    c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    msg = [{"role": "user", "content": "x"}]
    first_version = httpx.get(f"{gw.admin_url}/admin/policy").json()["version"]
    policy = yaml.safe_load(gw.policy_path.read_text())

    policy["routes"]["fresh"] = {"models": ["primary"]}
    gw.policy_path.write_text(yaml.safe_dump(policy))
    assert _wait(lambda: "fresh" in [m.id for m in c.models.list()])
    status = httpx.get(f"{gw.admin_url}/admin/policy").json()
    assert status["version"] != first_version and status["last_error"] is None and status["reloads"] == 1

    good = gw.policy_path.read_text()
    gw.policy_path.write_text(good.replace("models:\n", "modles:\n", 1))  # a typo
    assert _wait(lambda: httpx.get(f"{gw.admin_url}/admin/policy").json()["rejected"] == 1)
    status = httpx.get(f"{gw.admin_url}/admin/policy").json()
    assert "modles" in status["last_error"] and "line" in status["last_error"]
    assert c.chat.completions.create(model="fresh", messages=msg).choices[0].message.content  # old policy serves

    policy["models"]["primary"]["provider"] = "ghost"  # valid shape, dangling reference
    gw.policy_path.write_text(yaml.safe_dump(policy))
    assert _wait(lambda: httpx.get(f"{gw.admin_url}/admin/policy").json()["rejected"] == 2)
    assert "ghost" in httpx.get(f"{gw.admin_url}/admin/policy").json()["last_error"]

    gw.policy_path.write_text(good)
    assert _wait(lambda: httpx.get(f"{gw.admin_url}/admin/policy").json()["last_error"] is None)


def test_reload_under_load_drops_no_request(make_gateway, mock):
    import concurrent.futures

    gw = make_gateway(ROUTE)
    msg = [{"role": "user", "content": "x"}]
    text = gw.policy_path.read_text()
    stop = time.monotonic() + 3.0
    failures: list[str] = []

    def load() -> int:
        c = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
        n = 0
        while time.monotonic() < stop:
            try:
                c.chat.completions.create(model="auto", messages=msg)
                n += 1
            except openai.APIError as exc:
                failures.append(repr(exc))
        return n

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load) for _ in range(4)]
        flips = 0
        while time.monotonic() < stop:
            flips += 1
            gw.policy_path.write_text(text + f"\n# edit {flips}\n" if flips % 3 else text.replace("routes:", "routez:"))
            time.sleep(0.35)  # > two watcher intervals: each version settles and is loaded (or refused)
        served = sum(f.result() for f in futures)
    gw.policy_path.write_text(text)
    assert served >= 8 and failures == []
    status = httpx.get(f"{gw.admin_url}/admin/policy").json()
    assert status["reloads"] >= 3 and status["rejected"] >= 1


def test_admin_api_is_not_on_the_client_listener(make_gateway):
    gw = make_gateway(ROUTE)
    assert httpx.get(f"{gw.base_url.removesuffix('/v1')}/admin/policy").status_code == 404
    assert httpx.get(f"{gw.admin_url}/admin/policy").status_code == 200
    assert httpx.get(f"{gw.base_url.removesuffix('/v1')}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gw.base_url.removesuffix('/v1')}/readyz")
    assert ready.status_code == 200 and json.loads(ready.text)["status"] == "ready"
