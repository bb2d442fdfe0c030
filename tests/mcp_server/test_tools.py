"""How a tool call becomes a result or a tool error, with no server: a backend that only
knows ``instances`` (the one call these tests make) and what its credential grants."""

from __future__ import annotations

from typing import Any, cast

import orjson
from mcp_types import CallToolResult

from openclaw_orchestrator.errors import InstanceDownError
from openclaw_orchestrator.mcp_server.backend import SESSION_TOOLS, Backend
from openclaw_orchestrator.mcp_server.tools import call_tool, list_tools
from openclaw_orchestrator.models import InstanceInfo

from .conftest import text_of

ONE = InstanceInfo(
    name="A",
    url="http://127.0.0.1:1",
    driver="worker",
    weight=1.0,
    tags=[],
    has_credentials=False,
    state="healthy",
    source="config",
)


class InstancesOnly:
    """Answers ``instances`` with :data:`ONE`, or fails with ``failure``."""

    def __init__(self, failure: Exception | None = None, *, session: bool = False) -> None:
        self.failure = failure
        self.session = session

    def grants(self, tool: str) -> bool:
        return not self.session or tool in SESSION_TOOLS

    async def instances(self) -> list[InstanceInfo]:
        if self.failure is not None:
            raise self.failure
        return [ONE]


def backend(failure: Exception | None = None, *, session: bool = False) -> Backend:
    return cast(Backend, InstancesOnly(failure, session=session))


def body_of(result: CallToolResult) -> Any:
    return orjson.loads(text_of(result).partition("\n")[2])


async def test_a_result_is_the_reply_twice() -> None:
    """structuredContent and the text's JSON are the endpoint's reply; a summary first."""
    result = await call_tool(backend(), "instances", None)
    assert not result.is_error
    assert result.structured_content == {"instances": [ONE.model_dump(mode="json")]}
    assert body_of(result) == result.structured_content
    assert text_of(result).startswith("1 instance\n")


async def test_an_error_keeps_its_code_and_instance() -> None:
    """An OrchestratorError is a tool error with the API's body, instance included."""
    result = await call_tool(backend(InstanceDownError("A is down", instance="A")), "instances", {})
    assert result.is_error
    assert result.structured_content == {
        "error": {"code": "instance_down", "message": "A is down", "instance": "A"}
    }


async def test_a_bug_is_internal_error_without_its_details() -> None:
    """Anything else is internal_error; its message (which may hold anything) stays out."""
    result = await call_tool(backend(RuntimeError("secret detail")), "instances", {})
    assert result.is_error
    assert result.structured_content["error"]["code"] == "internal_error"
    assert "secret detail" not in text_of(result)


async def test_a_session_credential_lists_its_three_tools() -> None:
    """What the listing shows follows what the backend's credential grants."""
    assert len(list_tools(backend())) == 13
    names = [tool.name for tool in list_tools(backend(session=True))]
    assert names == ["sessions_send", "sessions_history", "sessions_close"]
