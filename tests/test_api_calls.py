"""The SDK's request builders and reply readers (:mod:`openclaw_orchestrator.sdk.calls`): pure,
no sockets, no event loop; what both clients send and how both read what comes back."""

from __future__ import annotations

import inspect
import subprocess
import sys
from typing import Any

import orjson
import pytest

from openclaw_orchestrator import errors
from openclaw_orchestrator.errors import (
    InstanceDownError,
    InstanceError,
    InstanceProtocolError,
    InstanceRejectedError,
    InvalidRequestError,
    NotFoundError,
    OrchestratorError,
    SessionClosedError,
    TimeoutExceededError,
    UnauthorizedError,
    error_from_body,
)
from openclaw_orchestrator.models import (
    FanoutEntry,
    FanoutResult,
    HistoryPage,
    SessionInfo,
    SpawnResult,
)
from openclaw_orchestrator.sdk import calls

# -- requests ------------------------------------------------------------------------------


def test_route_body_drops_unset_fields_and_parses_durations() -> None:
    """Only the knobs given go out (the server's defaults apply); durations become seconds."""
    call = calls.route({"q": 1}, instances=["A", "B"], timeout="10s", attempt_timeout="500ms")
    assert (call.method, call.path, call.deadline) == ("POST", "/api/orchestrator/route", 10.0)
    assert call.body == {
        "instances": ["A", "B"],
        "payload": {"q": 1},
        "timeout": 10.0,
        "attempt_timeout": 0.5,
    }
    assert calls.route().body == {"payload": {}}


def test_fanout_body_and_its_stream_flag() -> None:
    """fanout sends its defaults for targets/aggregate; the streaming form adds stream: true."""
    call = calls.fanout(None, min_success=2, top_k=1, idempotency_key="k")
    assert call.body == {
        "targets": "all",
        "payload": {},
        "aggregate": True,
        "min_success": 2,
        "top_k": 1,
    }
    assert call.headers() == {"Idempotency-Key": "k"}
    streamed = calls.streamed(call)
    assert streamed.body == {**call.body, "stream": True}
    assert "stream" not in call.body  # the call it came from is unchanged


def test_a_bad_duration_fails_before_any_request_naming_its_field() -> None:
    """A typo in a duration is InvalidRequestError naming the argument, with no round trip."""
    with pytest.raises(InvalidRequestError) as caught:
        calls.fanout(attempt_timeout="soon")
    assert caught.value.field == "attempt_timeout"


def test_health_query_joins_target_lists() -> None:
    """A target list is one comma-joined query value; detail adds detail=true."""
    assert calls.health().params == {}
    assert calls.health(["A", "B-C"]).params == {"instances": "A,B-C"}
    assert calls.health_detail("A").params == {"instances": "A", "detail": "true"}


def test_unregister_quotes_the_name() -> None:
    """An instance name is one path segment, whatever it contains."""
    assert calls.unregister("a/b c").path == "/api/cluster/instances/a%2Fb%20c"


def test_session_calls_check_the_id_and_carry_the_token() -> None:
    """A malformed id fails before sending, naming session_id; a token replaces the API key."""
    with pytest.raises(InvalidRequestError) as caught:
        calls.send_to_session("../admin", {})
    assert caught.value.field == "session_id"
    with pytest.raises(InvalidRequestError):
        calls.spawn_session("bad id")
    call = calls.send_to_session("s1", None, timeout=5).with_token("ocs_t")
    assert (call.path, call.body, call.deadline) == (
        "/api/orchestrator/sessions/s1/send",
        {"data": {}, "timeout": 5.0},
        5.0,
    )
    assert call.headers() == {"Authorization": "Bearer ocs_t"}
    assert calls.close_session("s1").with_token(None).headers() == {}
    assert calls.session_list(active_within=2.5).params == {"active_within": "2.5"}


def test_wait_is_the_deadline_plus_the_margin() -> None:
    """The client waits past the server's deadline so that its 504 arrives first."""
    assert calls.route(timeout=10).wait(60.0) == 10.0 + calls.DEFAULT_TIMEOUT_MARGIN
    assert calls.route().wait(42.0) == 42.0


@pytest.mark.parametrize("token", ["", "a b", "tab\there"])
def test_check_token_refuses_without_echoing(token: str) -> None:
    """A token that cannot be a bearer value is a ValueError that never repeats it."""
    with pytest.raises(ValueError, match="session token") as caught:
        calls.check_token(token)
    assert token not in str(caught.value) or not token


# -- replies -------------------------------------------------------------------------------


def test_decode_reply_maps_codes_and_non_json() -> None:
    """Non-2xx JSON is its class; non-JSON is an OrchestratorError keeping the status."""
    body = orjson.dumps({"error": {"code": "not_found", "message": "no instance Z"}})
    with pytest.raises(NotFoundError, match="no instance Z"):
        calls.decode_reply(404, body)
    with pytest.raises(OrchestratorError, match="HTTP 502") as caught:
        calls.decode_reply(502, b"<html>")
    assert caught.value.upstream_status == 502
    with pytest.raises(OrchestratorError, match="not JSON") as caught:
        calls.decode_reply(200, b"nope")
    assert caught.value.upstream_status == 200
    assert isinstance(caught.value.__cause__, orjson.JSONDecodeError)
    assert calls.decode_reply(200, b'{"A":"up"}') == {"A": "up"}


def test_parsers_build_the_models_and_refuse_other_shapes() -> None:
    """Each call's parse reads its model; a reply of another shape is an OrchestratorError."""
    assert calls.health().parse({"A": "healthy"}) == {"A": "healthy"}
    with pytest.raises(OrchestratorError, match="non-object"):
        calls.health().parse([])
    with pytest.raises(OrchestratorError, match="without 'instances'"):
        calls.instances().parse({})
    with pytest.raises(OrchestratorError, match="RouteResult"):
        calls.route().parse({"nope": 1})


def _line(kind: str, value: Any) -> bytes:
    return orjson.dumps({"type": kind, kind: value}) + b"\n"


_ENTRY = {"instance": "A", "status": "ok", "result": 1, "latency_ms": 1.0}
_RESULT = {
    "aggregate": "array",
    "value": [1],
    "results": [_ENTRY],
    "succeeded": 1,
    "failed": 0,
    "timed_out": 0,
    "total_ms": 2.0,
    "request_id": "r" * 16,
}


def test_stream_reader_splits_lines_across_chunks() -> None:
    """A line split over chunks, and a last line without newline, are read whole."""
    reader = calls.FanoutStreamReader()
    raw = _line("entry", _ENTRY) + _line("result", _RESULT).rstrip(b"\n")
    items = [item for i in range(0, len(raw), 7) for item in reader.feed(raw[i : i + 7])]
    items += list(reader.end())
    assert [type(i) for i in items] == [FanoutEntry, FanoutResult]


def test_stream_reader_yields_entries_before_an_error_line() -> None:
    """Entries in the same chunk as an error line come out first; then the error raises."""
    reader = calls.FanoutStreamReader()
    error = {"code": "timeout", "message": "min_success not met", "instance": "B"}
    got = reader.feed(_line("entry", _ENTRY) + _line("error", error))
    assert isinstance(next(got), FanoutEntry)
    with pytest.raises(TimeoutExceededError, match="min_success"):
        next(got)


def test_stream_reader_refuses_a_stream_without_its_result() -> None:
    """A stream that ends before its result line is an error, not a silent short read."""
    reader = calls.FanoutStreamReader()
    assert len(list(reader.feed(_line("entry", _ENTRY)))) == 1
    with pytest.raises(OrchestratorError, match="ended before its result"):
        list(reader.end())
    with pytest.raises(OrchestratorError, match="unknown line type"):
        list(calls.FanoutStreamReader().feed(b'{"type": "x"}\n'))
    with pytest.raises(OrchestratorError, match="fanout stream sent a line that is not JSON"):
        list(calls.FanoutStreamReader().feed(b"<html>\n"))


def test_history_must_advance() -> None:
    """A history page whose next offset does not move forward stops the iteration."""
    page = HistoryPage.model_validate(
        {
            "session_id": "s1",
            "messages": [],
            "total": 5,
            "offset": 2,
            "limit": 1,
            "next_offset": 2,
        }
    )
    with pytest.raises(OrchestratorError, match="does not advance"):
        calls.next_history_offset(page, 2)
    assert calls.next_history_offset(page, 1) == 2


def test_gone_session_errors_include_unauthorized_only_with_a_token() -> None:
    """A handle's ``with`` ignores closed/gone; with a token, also the token's 401."""
    assert calls.session_gone_errors(None) == (SessionClosedError, NotFoundError)
    assert UnauthorizedError in calls.session_gone_errors("ocs_t")


def test_public_info_drops_the_token() -> None:
    """What a spawned handle keeps in ``.info`` is a plain SessionInfo, without the token."""
    fields = {
        "session_id": "s1",
        "instance": "A",
        "state": "open",
        "metadata": {},
        "ttl": 60.0,
        "failover": "none",
        "created_at": "2026-01-01T00:00:00Z",
        "last_active_at": "2026-01-01T00:00:00Z",
        "messages": 0,
    }
    spawned = SpawnResult.model_validate({**fields, "token": "ocs_secret"})
    info = calls.public_info(spawned)
    assert type(info) is SessionInfo
    assert "ocs_secret" not in repr(info)
    assert calls.public_info(info) is info


def test_a_plain_health_imports_neither_pydantic_nor_aiohttp() -> None:
    """The CLI's fast path can build and read ``health`` without pydantic or aiohttp."""
    code = (
        "import sys; from openclaw_orchestrator.sdk import calls as c;"
        "c.health(['A']).parse({'A': 'healthy'});"
        "from openclaw_orchestrator.sdk import sync_client;"
        "print(sorted(m for m in ('pydantic', 'aiohttp') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# -- the error tree on the SDK side --------------------------------------------------------


def _error_classes() -> list[type[OrchestratorError]]:
    return [
        cls
        for name in errors.__all__
        if isinstance(cls := getattr(errors, name), type) and issubclass(cls, OrchestratorError)
    ]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_comes_back_as_its_own_class(cls: type[OrchestratorError]) -> None:
    """The server's envelope of each class turns back into that class in the SDK (an
    instance's refusal stays InstanceRejectedError, not InvalidRequestError); only
    InstanceProtocolError, which shares instance_error, arrives as its parent."""
    instance = "A" if issubclass(cls, InstanceError) else None
    envelope = cls("m", instance=instance, upstream_status=422).to_dict()
    back = calls.decode_error(cls.status, orjson.dumps(envelope))
    expected = InstanceError if cls is InstanceProtocolError else cls
    assert type(back) is expected
    assert back.instance == instance


def test_rejected_and_invalid_share_the_wire_code_and_status() -> None:
    """The fix changes nothing on the wire: the same code and status, told apart by
    ``instance`` (which a malformed request never carries)."""
    rejected = InstanceRejectedError("A: payload.message: required", instance="A")
    assert (rejected.code, rejected.status) == (InvalidRequestError.code, 400)
    assert type(error_from_body(rejected.to_dict(), status=400)) is InstanceRejectedError
    plain = InvalidRequestError("timeout: too long", field="timeout").to_dict()
    assert type(error_from_body(plain, status=400)) is InvalidRequestError
    down = InstanceDownError("gone", instance="A").to_dict()
    assert type(error_from_body(down, status=503)) is InstanceDownError


@pytest.mark.parametrize(
    ("method", "build"),
    [
        ("route", calls.route),
        ("fanout", calls.fanout),
        ("fanout_stream", calls.fanout),
        ("health", calls.health),
        ("register", calls.register),
        ("unregister", calls.unregister),
    ],
)
def test_both_clients_take_the_builders_parameters(method: str, build: Any) -> None:
    """Each client method has its builder's parameters (plus self), so the two clients'
    signatures cannot drift apart; help() shows them."""
    from openclaw_orchestrator.sdk.async_client import AsyncClient
    from openclaw_orchestrator.sdk.sync_client import Client

    expected = ["self", *inspect.signature(build).parameters]
    for cls in (AsyncClient, Client):
        assert list(inspect.signature(getattr(cls, method)).parameters) == expected
        assert getattr(cls, method).__doc__


def test_a_run_submit_carries_its_callback_and_key() -> None:
    hook = {"url": "https://hooks.example/run-done", "secret": "s" * 32}
    call = calls.submit_run(
        "session_send", session_id="s1", data={"k": 1}, callback=hook, idempotency_key="k-1"
    )
    assert (call.method, call.path, call.idempotency_key) == (
        "POST",
        "/api/orchestrator/runs",
        "k-1",
    )
    assert call.body == {
        "kind": "session_send",
        "sessionId": "s1",
        "data": {"k": 1},
        "callback": hook,
    }
