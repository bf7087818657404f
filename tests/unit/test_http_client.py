"""The upstream client: no cookie jar (one client's upstream session never reaches another's request)."""

import httpx

from providers._http import make_client


async def test_upstream_cookies_are_never_kept_or_sent():
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"set-cookie": "session=tenant-a; Path=/"}, json={})

    client = make_client(
        base_url="http://upstream.test/v1", headers={}, connect_s=1, read_s=1, transport=httpx.MockTransport(upstream)
    )
    for _ in range(2):
        response = await client.send(client.build_request("POST", client.url_for("/chat/completions"), content=b"{}"))
        assert response.headers["set-cookie"]
    assert [str(r.url) for r in seen] == ["http://upstream.test/v1/chat/completions"] * 2
    assert all("cookie" not in r.headers for r in seen)
    assert len(client.cookies) == 0
    await client.aclose()
