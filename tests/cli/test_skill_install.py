"""``openclaw orchestrator skill install`` and ``install_skill``: the orchestrator skill into a
gateway's workspace and the orchestrator's MCP server into its config, the key only as an
``${ORCHESTRATOR_API_KEY}`` reference.

Unit tests work on temporary state folders (config merging, JSON5 comments kept, idempotence,
dry run, permissions, errors). One test installs into a real gateway with the command, then
shows that OpenClaw's own CLI finds the skill eligible and the server free of literal
secrets, and that the running gateway picked the change up live and connected to a real
orchestrator's ``/mcp`` with the key from its environment and its caller header.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from openclaw_orchestrator.cli.main import app
from openclaw_orchestrator.devtools.openclaw.fleet import (
    FLEET_DIR,
    FleetRecord,
    OpenClawFleet,
    read_fleet_record,
    start_fleet,
)
from openclaw_orchestrator.devtools.openclaw.gateway import gateway_config
from openclaw_orchestrator.devtools.openclaw.install import InstallError, ensure_openclaw
from openclaw_orchestrator.devtools.openclaw.json5_config import Json5Error, loads, set_value
from openclaw_orchestrator.devtools.openclaw.skill_install import (
    CALLER_HEADER,
    SkillInstallError,
    install_skill,
    install_workspace_skill,
    server_entry,
)
from openclaw_orchestrator.server.api.app import create_app
from openclaw_orchestrator.server.hosting import BackgroundServer
from openclaw_orchestrator.settings import Settings
from openclaw_orchestrator.skills import load_skill
from tests.conftest import IN_CI

SKILL = load_skill("orchestrator")
URL = "http://127.0.0.1:18790/mcp"
KEY_REF = "Bearer ${ORCHESTRATOR_API_KEY}"
HAND_KEPT = """// G1: kept by hand
{
  gateway: { mode: 'local', port: 18789 }, // loopback only
  /* the model */
  models: { providers: { vllm: { baseUrl: "http://127.0.0.1:9/v1", apiKey: "stub", }, }, },
}
"""
REAL_TIMEOUT = 480
"""The real-gateway test: install (first run only), start one gateway, one agent turn."""


def state(tmp_path: Path, text: str | None = None, name: str = "G1") -> Path:
    """A gateway state folder ``tmp_path/name`` whose config is ``text`` (our launcher's
    JSON config when None)."""
    folder = tmp_path / name
    folder.mkdir(parents=True)
    if text is None:
        config = gateway_config(model_url="http://127.0.0.1:9", log_file=folder / "x.log")
        text = json.dumps(config, indent=2)
    (folder / "openclaw.json").write_text(text, encoding="utf-8")
    return folder


def config_of(folder: Path) -> Any:
    return loads((folder / "openclaw.json").read_text(encoding="utf-8"))


def cli(*args: str) -> tuple[int, str]:
    """Run the command in-process: exit code and everything it printed."""
    result = CliRunner().invoke(app, ["skill", "install", *args])
    return result.exit_code, result.output


# -- the JSON5 editor -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("{a: 1, 'b': \"x\", c: [1, 2,], }", {"a": 1, "b": "x", "c": [1, 2]}),
        ("// c\n{/* d */ a: 0x1F, b: +Infinity, c: .5, d: -2e3}",
         {"a": 31, "b": float("inf"), "c": 0.5, "d": -2000.0}),
        ("{s: 'it\\'s \\\nmore\\u0041\\x42\\n'}", {"s": "it's moreAB\n"}),
        ('{"a": {"b": null, "t": true, "f": false}}', {"a": {"b": None, "t": True, "f": False}}),
        ("{$k_1: [], _: {}}", {"$k_1": [], "_": {}}),
    ],
)  # fmt: skip
def test_json5_reads_what_openclaw_writes_by_hand(text: str, value: Any) -> None:
    """Comments, unquoted and single-quoted keys, trailing commas, hex, Infinity, escapes
    and line continuations read as JSON5 defines them."""
    assert loads(text) == value


@pytest.mark.parametrize(
    ("text", "where"),
    [("{a: }", "line 1, column 5"), ("{a: 1\n b: 2}", "line 2, column 2"), ("{a: 'x", "line 1"),
     ("{a: 1} x", "line 1, column 8"), ("{/* open", "line 1"), ("{a: tru}", "line 1, column 5")],
)  # fmt: skip
def test_json5_errors_name_the_place(text: str, where: str) -> None:
    """Text that is not JSON5 is a Json5Error naming the line and column."""
    with pytest.raises(Json5Error, match=where):
        loads(text)


def test_set_value_keeps_every_other_byte() -> None:
    """Setting a nested key adds only the new member: comments, quoting and the trailing
    comment of the last member stay where they were."""
    after = set_value(HAND_KEPT, ["mcp", "servers", "x"], {"url": "u"})
    assert after.startswith(HAND_KEPT.rsplit("\n}", 1)[0])
    assert (
        '  mcp: {\n    servers: {\n      x: {\n        url: "u"\n      }\n    }\n  },\n}' in after
    )
    assert loads(after) == {**loads(HAND_KEPT), "mcp": {"servers": {"x": {"url": "u"}}}}
    assert set_value(after, ["mcp", "servers", "x"], {"url": "u"}) is after
    with pytest.raises(Json5Error, match=r"gateway\.mode is not an object"):
        set_value(HAND_KEPT, ["gateway", "mode", "x"], 1)


# -- install_skill on a state folder ----------------------------------------------------------


def test_install_writes_the_skill_and_the_server(tmp_path: Path) -> None:
    """The packaged SKILL.md lands in the default workspace, ``mcp.servers.orchestrator``
    in the config (streamable HTTP, the key as a reference, the caller header), and every
    other key of the config stays as it was."""
    folder = state(tmp_path)
    before = config_of(folder)
    report = install_skill(folder, mcp_url=URL, caller="G1")
    skill = folder / "workspace" / "skills" / "orchestrator" / "SKILL.md"
    assert report.changed_paths == [skill, (folder / "openclaw.json").resolve()]
    assert skill.read_text(encoding="utf-8") == SKILL.text
    after = config_of(folder)
    assert after.pop("mcp") == {"servers": {"orchestrator": server_entry(URL, caller="G1")}}
    assert after == before
    assert server_entry(URL, caller="G1")["headers"] == {
        "Authorization": KEY_REF,
        CALLER_HEADER: "G1",
    }
    assert report.skill_dir == skill.parent
    assert not report.dry_run


def test_second_install_changes_nothing(tmp_path: Path) -> None:
    """Idempotent: the second run writes nothing (same bytes, same inode) and says so."""
    folder = state(tmp_path)
    assert install_skill(folder, mcp_url=URL, caller="G1").is_changed
    config = folder / "openclaw.json"
    inode, text = config.stat().st_ino, config.read_bytes()
    report = install_skill(folder, mcp_url=URL, caller="G1")
    assert not report.is_changed
    assert report.diff() == ""
    assert (config.stat().st_ino, config.read_bytes()) == (inode, text)
    code, out = cli("--state-dir", str(folder), "--url", URL.removesuffix("/mcp"))
    assert code == 0, out
    assert "G1: already installed, nothing changed" in out


def test_no_literal_key_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is never written, whatever the environment holds: the config names the
    variable (another one with ``key_env``), and a name OpenClaw would not substitute is
    refused."""
    folder = state(tmp_path)
    key = secrets.token_urlsafe(24)
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", key)
    monkeypatch.setenv("G1_ORCH_KEY", key)
    install_skill(folder, mcp_url=URL, caller="G1", key_env="G1_ORCH_KEY")
    text = (folder / "openclaw.json").read_text(encoding="utf-8")
    assert key not in text
    assert '"Authorization": "Bearer ${G1_ORCH_KEY}"' in text
    with pytest.raises(SkillInstallError, match="key_env"):
        install_skill(folder, mcp_url=URL, caller="G1", key_env="lower_case")


def test_json5_config_keeps_comments_and_permissions(tmp_path: Path) -> None:
    """A hand-kept JSON5 config keeps its comments, quoting and mode 0600; the new entry
    follows the file's style (unquoted keys); nothing else changes."""
    folder = state(tmp_path, HAND_KEPT)
    config = folder / "openclaw.json"
    config.chmod(0o600)
    install_skill(folder, mcp_url=URL, caller="G1")
    text = config.read_text(encoding="utf-8")
    for line in HAND_KEPT.splitlines()[:-1]:
        assert line in text
    assert '        url: "http://127.0.0.1:18790/mcp",\n' in text
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_existing_entry_is_updated_keeping_operator_keys(tmp_path: Path) -> None:
    """An existing ``orchestrator`` entry gets the new URL and headers, key by key: the
    operator's timeout, tool filter, extra header and comments inside it stay."""
    text = HAND_KEPT.replace(
        "  /* the model */",
        """  mcp: { servers: { orchestrator: {
    url: "http://old:1/mcp", // moved
    requestTimeoutMs: 120000,
    toolFilter: { include: ["route"] },
    headers: { "X-Extra": "1" },
  } } },
  /* the model */""",
    )
    folder = state(tmp_path, text)
    install_skill(folder, mcp_url=URL, caller="G1")
    entry = config_of(folder)["mcp"]["servers"]["orchestrator"]
    assert entry == {
        "url": URL,
        "transport": "streamable-http",
        "requestTimeoutMs": 120000,
        "toolFilter": {"include": ["route"]},
        "headers": {"X-Extra": "1", "Authorization": KEY_REF, CALLER_HEADER: "G1"},
    }
    assert "// moved" in (folder / "openclaw.json").read_text(encoding="utf-8")


def test_dry_run_writes_nothing_and_shows_the_diff(tmp_path: Path) -> None:
    """``--dry-run`` prints a unified diff of both files and leaves the folder as it was."""
    folder = state(tmp_path)
    before = sorted(p.name for p in folder.rglob("*"))
    config = (folder / "openclaw.json").read_bytes()
    code, out = cli("--state-dir", str(folder), "--url", "http://127.0.0.1:1", "--dry-run")
    assert code == 0, out
    assert "+++ " + str(folder / "workspace" / "skills" / "orchestrator" / "SKILL.md") in out
    assert '+        "url": "http://127.0.0.1:1/mcp",' in out
    assert "G1: would write" in out
    assert sorted(p.name for p in folder.rglob("*")) == before
    assert (folder / "openclaw.json").read_bytes() == config


def test_workspace_from_the_config_and_workspace_only(tmp_path: Path) -> None:
    """The skill goes to the workspace the config names; ``--workspace DIR`` writes only
    the skill there and touches no config."""
    custom = tmp_path / "ws"
    folder = state(tmp_path, json.dumps({"agents": {"defaults": {"workspace": str(custom)}}}))
    install_skill(folder, mcp_url=URL, caller="G1")
    assert (custom / "skills" / "orchestrator" / "SKILL.md").read_text() == SKILL.text
    only = tmp_path / "only"
    report = install_workspace_skill(only)
    assert report.config_path is None
    assert [p.relative_to(only) for p in only.rglob("*") if p.is_file()] == [
        Path("skills/orchestrator/SKILL.md")
    ]
    code, out = cli("--workspace", str(only))
    assert (code, "already installed" in out) == (0, True), out


def test_symlinked_config_is_written_through(tmp_path: Path) -> None:
    """A config that is a symlink stays one: the file it points to is replaced."""
    folder = state(tmp_path)
    real = tmp_path / "real.json"
    (folder / "openclaw.json").rename(real)
    (folder / "openclaw.json").symlink_to(real)
    install_skill(folder, mcp_url=URL, caller="G1")
    assert (folder / "openclaw.json").is_symlink()
    assert "orchestrator" in loads(real.read_text())["mcp"]["servers"]


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        (None, {"mcp_url": "ftp://x/mcp"}, "mcp_url: not an http"),
        (None, {"mcp_url": "http://u:p@x/mcp"}, "credentials do not belong"),
        (None, {"caller": "G1\nX: y"}, "caller: not a header value"),
        ("{gateway: {mode: 'local'}", {}, r"json: expected ',' or '}' at line 1, column 26"),
        ("[1]", {}, "not an object"),
        ("{mcp: {$include: './mcp.json5'}}", {}, "mcp of the config uses \\$include"),
        ("{mcp: 'none'}", {}, "mcp is not an object"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error(
    tmp_path: Path, text: str | None, kwargs: dict[str, str], message: str
) -> None:
    """A bad URL, caller or config is a SkillInstallError saying what, and nothing is
    written."""
    folder = state(tmp_path, text)
    before = (folder / "openclaw.json").read_bytes()
    with pytest.raises(SkillInstallError, match=message):
        install_skill(folder, mcp_url=kwargs.get("mcp_url", URL), caller=kwargs.get("caller", "G1"))
    assert (folder / "openclaw.json").read_bytes() == before
    assert not (folder / "workspace").exists()


def test_cli_errors_exit_2(tmp_path: Path) -> None:
    """No target, two targets, a folder without a config, no fleet: exit 2 and one line
    saying what to do."""
    cases = [
        ((), "give one of --gateway NAME, --all, --state-dir DIR, --workspace DIR"),
        (("--all", "--workspace", str(tmp_path)), "give one of"),
        (("--state-dir", str(tmp_path)), f"no OpenClaw config at {tmp_path / 'openclaw.json'}"),
        (("--gateway", "O1", "--data-dir", str(tmp_path)), "no OpenClaw gateways started"),
    ]
    for args, message in cases:
        code, out = cli(*args)
        assert code == 2, (args, out)
        assert message in out.replace("\n", " "), (args, out)


@pytest.fixture
def fake_fleet(tmp_path: Path) -> Path:
    """A data folder whose fleet record lists O1 and O2 (this process stands in for their
    pid) and the orchestrator URL ``up`` serves."""
    root = tmp_path / "data" / FLEET_DIR
    root.mkdir(parents=True)
    gateways = {
        name: {"url": "http://127.0.0.1:1", "state_dir": str(state(root, name=name)),
               "pid": os.getpid()}
        for name in ("O1", "O2")
    }  # fmt: skip
    FleetRecord(gateways, "http://127.0.0.1:18790", ("ORCHESTRATOR_API_KEY",)).write(root)
    return tmp_path / "data"


def test_gateway_and_all_use_the_fleet_record(fake_fleet: Path) -> None:
    """``--gateway NAME`` installs into that gateway with its name as the caller and the
    orchestrator URL ``up`` recorded; ``--all`` into every one."""
    code, out = cli("--gateway", "O2", "--data-dir", str(fake_fleet))
    assert code == 0, out
    record = read_fleet_record(fake_fleet / FLEET_DIR)
    assert record is not None
    entry = config_of(record.state_dir("O2"))["mcp"]["servers"]["orchestrator"]
    assert entry == server_entry(URL, caller="O2")
    assert "mcp" not in config_of(record.state_dir("O1"))
    code, out = cli("--all", "--data-dir", str(fake_fleet))
    assert code == 0, out
    assert "O1: wrote" in out
    assert "O2: already installed, nothing changed" in out
    assert config_of(record.state_dir("O1"))["mcp"]["servers"]["orchestrator"] == server_entry(
        URL, caller="O1"
    )


def test_unknown_or_stopped_gateway_lists_what_exists(fake_fleet: Path) -> None:
    """``--gateway A`` (not one of ours) names the gateways there are; a gateway whose
    process has gone is refused."""
    code, out = cli("--gateway", "A", "--data-dir", str(fake_fleet))
    assert code == 2
    expected = (
        "--gateway A: not an OpenClaw gateway this orchestrator started; its gateways: O1, O2"
    )
    assert expected in out.replace("\n", " ")
    root = fake_fleet / FLEET_DIR
    record = read_fleet_record(root)
    assert record is not None
    dead = {**record.gateways, "O1": {**record.gateways["O1"], "pid": 2**22 + 1}}
    FleetRecord(dead, record.orchestrator_url).write(root)
    code, out = cli("--gateway", "O1", "--data-dir", str(fake_fleet))
    assert (code, "gateway O1 is not running" in out) == (2, True), out


# -- a real gateway ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_fleet() -> Iterator[tuple[OpenClawFleet, Path, str]]:
    """One real gateway G1 (not warmed up: its first turn comes after the install) started
    the way ``up --openclaw`` starts them, in a data folder's fleet directory, with an
    orchestrator key in its environment; the fleet, the data folder and the key."""
    try:
        install = ensure_openclaw()
    except InstallError as exc:
        if IN_CI:
            pytest.fail(f"cannot install OpenClaw: {exc}")
        pytest.skip(f"cannot install OpenClaw (npm registry unreachable?): {exc}")
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="skill-install-", ignore_cleanup_errors=True) as data:
        root = Path(data) / FLEET_DIR
        root.mkdir()
        secret_env = {"ORCHESTRATOR_API_KEY": SecretStr(key)}
        with start_fleet(
            ["G1"], root=root, install=install, warm=False, secret_env=secret_env
        ) as fleet:
            yield fleet, Path(data), key


class McpRecorder:
    """ASGI wrapper remembering each ``/mcp`` POST: its headers, its JSON-RPC method and
    the reply's status."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[dict[str, str], str | None, int]] = []

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or scope["path"] != "/mcp" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        body = bytearray()

        async def reading() -> Any:
            message = await receive()
            body.extend(message.get("body", b""))
            return message

        async def recording(message: Any) -> None:
            if message["type"] == "http.response.start":
                try:
                    method = json.loads(body).get("method")
                except (ValueError, AttributeError):
                    method = None
                self.seen.append((headers, method, message["status"]))
            await send(message)

        await self.app(scope, reading, recording)


async def openclaw(fleet: OpenClawFleet, folder: Path, *args: str) -> Any:
    """Run the real ``openclaw`` CLI with the gateway's state folder (and, as an operator's
    shell would, without the orchestrator's key); its JSON."""
    env = fleet.install.env(
        {
            "PATH": os.environ["PATH"],
            "HOME": str(folder / "home"),
            "OPENCLAW_STATE_DIR": str(folder),
            "OPENCLAW_CONFIG_PATH": str(folder / "openclaw.json"),
        }
    )
    process = await asyncio.create_subprocess_exec(
        *fleet.install.command(*args), env=env, cwd=folder,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(), 240)
    finally:
        if process.returncode is None:  # cancelled or timed out: leave nothing running
            process.kill()
            await process.wait()
    assert process.returncode == 0, (args, err.decode()[-2000:])
    return json.loads(out)


async def wait_for_log(path: Path, needle: str, timeout: float = 90.0) -> None:
    """Until ``needle`` shows in the gateway's output."""
    deadline = time.monotonic() + timeout
    while needle not in await asyncio.to_thread(path.read_text, errors="replace"):
        assert time.monotonic() < deadline, f"no {needle!r} in {path}"
        await asyncio.sleep(0.25)


async def agent_turn(fleet: OpenClawFleet) -> str:
    """One agent turn on G1 (its tools are discovered when the turn is prepared); what the
    gateway sent its model, as JSON text."""
    gw = fleet["G1"]
    headers = {"Authorization": f"Bearer {gw.token.get_secret_value()}"}
    body = {"model": "openclaw", "messages": [{"role": "user", "content": "hello"}]}
    timeout = aiohttp.ClientTimeout(total=240)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
        async with http.get(f"{fleet.stub.url}/stub/requests") as r:
            requests = await r.json()
    return json.dumps(requests[-1])


@pytest.mark.timeout(REAL_TIMEOUT)
async def test_real_gateway_takes_the_skill_and_the_server_live(
    gateway_fleet: tuple[OpenClawFleet, Path, str], tmp_path: Path
) -> None:
    """``skill install --gateway G1`` on a running gateway: OpenClaw's CLI finds the skill
    eligible and the server, its key a reference; the gateway hot-reloads the config
    and, on its next turn, lists the orchestrator's tools over /mcp (with the key from its
    environment and ``X-Orchestrator-Caller: G1``) and shows its model the skill."""
    fleet, data_dir, key = gateway_fleet
    gateway = fleet["G1"]
    settings = Settings(api_key=SecretStr(key), data_dir=tmp_path)
    recorder = McpRecorder(create_app(settings))
    async with BackgroundServer(recorder) as url:
        try:
            code, out = cli("--gateway", "G1", "--data-dir", str(data_dir), "--url", url)
            assert code == 0, out
            assert "the running gateway" in out
            assert "has ORCHESTRATOR_API_KEY set" in out
            folder = gateway.state_dir
            assert key not in (folder / "openclaw.json").read_text()
            await wait_for_log(gateway.log_path, "config hot reload applied (mcp.servers)")
            async with asyncio.TaskGroup() as group:  # CLI runs one at a time: a state lock
                turn = group.create_task(agent_turn(fleet))
                info = await openclaw(fleet, folder, "skills", "info", "orchestrator", "--json")
                listed = await openclaw(fleet, folder, "mcp", "list", "--json")
        finally:  # the gateway holds an MCP stream open: stop it before the orchestrator
            await asyncio.to_thread(gateway.stop)
    assert (info["source"], info["eligible"], info["modelVisible"]) == (
        "openclaw-workspace", True, True,
    )  # fmt: skip
    assert listed == {"orchestrator": server_entry(url + "/mcp", caller="G1")}
    assert recorder.seen
    for headers, method, status in recorder.seen:  # 200 for requests, 202 for notifications
        assert headers.get(CALLER_HEADER.lower()) == "G1", (method, headers)
        assert headers.get("authorization") == f"Bearer {key}", method
        assert status in (200, 202), (method, status)
    assert "tools/list" in {method for _, method, _ in recorder.seen}
    prompt = turn.result()  # the model's skill list: name, a shortened description, location
    assert "<name>orchestrator</name>" in prompt
    assert f"<location>{folder}/workspace/skills/orchestrator/SKILL.md</location>" in prompt
