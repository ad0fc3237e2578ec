"""``GET <jobs url>``: the caller's jobs, newest first, paged, on every store."""

from __future__ import annotations

import pytest
from flask import Flask, request

from async_endpoints import AsyncContext, AsyncEndpoints
from tests.test_http import assert_problem


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def add_handlers(ae: AsyncEndpoints, *, owners: bool = True) -> None:
    @ae.post("/a", name="A")
    def a(ctx: AsyncContext) -> str:
        return "a"

    @ae.post("/b", name="B")
    def b(ctx: AsyncContext) -> str:
        return "b"

    if owners:

        @ae.job_owner
        def owner() -> str | None:
            return request.headers.get("X-User")


def test_each_caller_lists_only_their_own_jobs(app: Flask, ae: AsyncEndpoints) -> None:
    add_handlers(ae)
    client = app.test_client()
    alice = [
        client.post("/a", headers={"X-User": "alice"}).get_json()["id"]
        for _ in range(3)
    ]
    bob = client.post("/b", headers={"X-User": "bob"}).get_json()["id"]
    body = client.get("/jobs", headers={"X-User": "alice"}).get_json()
    assert [j["id"] for j in body["jobs"]] == alice[::-1]
    assert body["nextCursor"] is None
    body = client.get("/jobs", headers={"X-User": "bob"}).get_json()
    assert [j["id"] for j in body["jobs"]] == [bob]
    # No owner: no jobs of one's own.
    assert client.get("/jobs").get_json() == {"jobs": [], "nextCursor": None}


def test_pages_filters_and_cursor(app: Flask, ae: AsyncEndpoints) -> None:
    add_handlers(ae)
    client = app.test_client()
    user = {"X-User": "u"}
    ids = [
        client.post("/a" if n % 2 else "/b", headers=user).get_json()["id"]
        for n in range(5)
    ]
    with app.app_context():
        ae.run_due_jobs()
    newest = client.post("/a", headers=user).get_json()["id"]
    seen: list[str] = []
    url = "/jobs?limit=2"
    while True:
        body = client.get(url, headers=user).get_json()
        seen += [j["id"] for j in body["jobs"]]
        if body["nextCursor"] is None:
            break
        url = f"/jobs?limit=2&cursor={body['nextCursor']}"
    assert seen == [newest, *ids[::-1]]
    queued = client.get("/jobs?status=Queued", headers=user).get_json()["jobs"]
    assert [j["id"] for j in queued] == [newest]
    done_a = client.get("/jobs?status=Completed&name=A", headers=user).get_json()[
        "jobs"
    ]
    assert [j["id"] for j in done_a] == [ids[3], ids[1]]
    assert all(j["status"] == "Completed" and j["name"] == "A" for j in done_a)


@pytest.mark.parametrize(
    "query",
    ["status=Done", "limit=0", "limit=101", "limit=ten", "limit=-1", "cursor=nope"],
)
def test_bad_parameters_are_400(app: Flask, ae: AsyncEndpoints, query: str) -> None:
    add_handlers(ae)
    client = app.test_client()
    client.post("/a", headers={"X-User": "u"})
    assert_problem(client.get(f"/jobs?{query}", headers={"X-User": "u"}), 400)


def test_empty_parameters_mean_their_defaults(app: Flask, ae: AsyncEndpoints) -> None:
    add_handlers(ae)
    client = app.test_client()
    for _ in range(3):
        client.post("/a", headers={"X-User": "u"})
    response = client.get("/jobs?status=&name=&limit=&cursor=", headers={"X-User": "u"})
    assert response.status_code == 200
    body = response.get_json()
    assert len(body["jobs"]) == 3
    assert body["nextCursor"] is None


def test_listing_is_off_without_an_owner_function(
    app: Flask, ae: AsyncEndpoints
) -> None:
    add_handlers(ae, owners=False)
    client = app.test_client()
    client.post("/a")
    body = assert_problem(client.get("/jobs"), 404)
    assert "LIST_JOBS" in str(body["detail"])


def test_list_jobs_turns_it_on_for_everyone(app: Flask) -> None:
    app.config["ASYNC_ENDPOINTS_LIST_JOBS"] = True
    ae = AsyncEndpoints(app)
    add_handlers(ae, owners=False)
    client = app.test_client()
    ids = [client.post(path).get_json()["id"] for path in ("/a", "/b")]
    body = client.get("/jobs?limit=1").get_json()
    assert [j["id"] for j in body["jobs"]] == [ids[1]]
    body = client.get(f"/jobs?limit=1&cursor={body['nextCursor']}").get_json()
    assert [j["id"] for j in body["jobs"]] == [ids[0]]
    assert body["nextCursor"] is None


def test_an_owner_over_the_quota_gets_429(app: Flask) -> None:
    app.config["ASYNC_ENDPOINTS_MAX_QUEUED_PER_OWNER"] = 2
    ae = AsyncEndpoints(app)
    add_handlers(ae)
    client = app.test_client()
    for _ in range(2):
        assert client.post("/a", headers={"X-User": "alice"}).status_code == 202
    response = client.post("/a", headers={"X-User": "alice"})
    body = assert_problem(response, 429)
    assert body["title"] == "Too many waiting jobs"
    assert "MAX_QUEUED_PER_OWNER" in str(body["detail"])
    assert int(response.headers["Retry-After"]) >= 1
    assert client.post("/a", headers={"X-User": "bob"}).status_code == 202
    with app.app_context():
        ae.run_due_jobs()  # alice's jobs run: her places are free again
    assert client.post("/a", headers={"X-User": "alice"}).status_code == 202


def test_a_page_has_20_jobs_by_default_and_at_most_100(
    app: Flask, ae: AsyncEndpoints
) -> None:
    add_handlers(ae)
    client = app.test_client()
    for _ in range(21):
        client.post("/a", headers={"X-User": "u"})
    body = client.get("/jobs", headers={"X-User": "u"}).get_json()
    assert len(body["jobs"]) == 20
    assert body["nextCursor"] is not None
    body = client.get("/jobs?limit=100", headers={"X-User": "u"}).get_json()
    assert len(body["jobs"]) == 21
    assert body["nextCursor"] is None


def test_without_a_quota_an_owner_may_queue_freely_over_http(
    app: Flask, ae: AsyncEndpoints
) -> None:
    assert app.config["ASYNC_ENDPOINTS_MAX_QUEUED_PER_OWNER"] == 0  # the default
    add_handlers(ae)
    client = app.test_client()
    codes = {client.post("/a", headers={"X-User": "u"}).status_code for _ in range(30)}
    assert codes == {202}
