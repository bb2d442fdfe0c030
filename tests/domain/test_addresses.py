"""instances.allow / instances.deny decisions: rule parsing, host checks, resolved addresses."""

from __future__ import annotations

import pytest

from openclaw_orchestrator.domain.addresses import (
    DEFAULT_DENY,
    MAX_RULES,
    AddressPolicy,
    AddressRefused,
    AddressRules,
)

DEFAULT = AddressPolicy.parse()
LOOPBACK_DENIED = AddressPolicy.parse(deny=["127.0.0.0/8"])
ONLY_LOOPBACK = AddressPolicy.parse(allow=["127.0.0.1/32"])
BY_NAME = AddressPolicy.parse(allow=["*.svc.cluster.local", "gw.internal", "10.0.0.0/8"])


@pytest.mark.parametrize(
    "entry",
    ["10.0.0.0/8", "10.1.2.3", "fd00::/8", "::1", "gw.internal", "*.svc.cluster.local", "GW."],
)
def test_valid_entries_parse(entry: str) -> None:
    """CIDRs, bare addresses, names and *.suffix wildcards are all rules."""
    assert AddressRules.parse([entry])


@pytest.mark.parametrize(
    "entry", ["10.0.0.0/33", "", "*.", "*", "a b", "http://x", "ex@mple", "-bad.example", "x/8"]
)
def test_invalid_entries_are_refused_by_name(entry: str) -> None:
    """An entry that is neither a CIDR nor a host name is a ValueError quoting it."""
    with pytest.raises(ValueError, match="neither a CIDR"):
        AddressRules.parse([entry])


def test_rule_lists_are_bounded() -> None:
    """More than MAX_RULES entries is refused: every connect scans the lists."""
    with pytest.raises(ValueError, match="at most"):
        AddressRules.parse([f"10.0.{i // 256}.{i % 256}" for i in range(MAX_RULES + 1)])


@pytest.mark.parametrize(
    ("policy", "host", "refused"),
    [
        (DEFAULT, "127.0.0.1", False),
        (DEFAULT, "localhost", False),
        (DEFAULT, "169.254.169.254", True),
        (DEFAULT, "::ffff:169.254.169.254", True),  # IPv4-mapped: judged as the IPv4
        (DEFAULT, "[fd00:ec2::254]", True),
        (DEFAULT, "fe80::1%eth0", True),
        (DEFAULT, "100.100.100.200", True),
        (DEFAULT, "metadata.google.internal", True),
        (DEFAULT, "METADATA.google.internal.", True),
        (LOOPBACK_DENIED, "127.0.0.2", True),
        (LOOPBACK_DENIED, "localhost", False),  # a name: judged once resolved
        (LOOPBACK_DENIED, "169.254.169.254", False),  # deny replaces the defaults
        (ONLY_LOOPBACK, "127.0.0.1", False),
        (ONLY_LOOPBACK, "127.0.0.2", True),
        (ONLY_LOOPBACK, "10.1.2.3", True),
        (ONLY_LOOPBACK, "example.com", False),  # a name: judged once resolved
        (BY_NAME, "10.9.9.9", False),
        (BY_NAME, "192.168.1.1", True),
    ],
)
def test_check_host(policy: AddressPolicy, host: str, refused: bool) -> None:
    """Before any lookup: denied names and literal addresses denied or outside allow."""
    if refused:
        with pytest.raises(AddressRefused):
            policy.check_host(host)
    else:
        policy.check_host(host)


@pytest.mark.parametrize(
    ("policy", "host", "addresses", "admitted"),
    [
        (DEFAULT, "localhost", ["127.0.0.1", "::1"], ["127.0.0.1", "::1"]),
        (DEFAULT, "rebound.example", ["203.0.113.5", "169.254.169.254"], None),
        (DEFAULT, "mapped.example", ["::ffff:169.254.169.254"], None),
        (LOOPBACK_DENIED, "localhost", ["127.0.0.1"], None),
        (LOOPBACK_DENIED, "localhost", ["::1", "127.0.0.1"], None),  # one denied: all refused
        (ONLY_LOOPBACK, "localhost", ["::1", "127.0.0.1"], ["127.0.0.1"]),
        (ONLY_LOOPBACK, "example.com", ["203.0.113.5"], None),
        (ONLY_LOOPBACK, "nothing.example", [], None),
        (BY_NAME, "api.svc.cluster.local", ["192.168.5.5"], ["192.168.5.5"]),
        (BY_NAME, "gw.internal", ["192.168.5.6"], ["192.168.5.6"]),
        (BY_NAME, "svc.cluster.local", ["192.168.5.7"], None),  # the wildcard needs a label
        (BY_NAME, "evil.example", ["10.0.0.9", "192.168.0.9"], ["10.0.0.9"]),
        (AddressPolicy.parse(allow=["*.example"]), "x.example", ["169.254.169.254"], None),
        (DEFAULT, "weird.example", ["not-an-address"], None),
    ],
)
def test_admit(
    policy: AddressPolicy, host: str, addresses: list[str], admitted: list[str] | None
) -> None:
    """After DNS: a denied address refuses the name, allow keeps what it admits, deny wins."""
    if admitted is None:
        with pytest.raises(AddressRefused) as refused:
            policy.admit(host, addresses)
        assert refused.value.host == host
        assert "instances." in str(refused.value) or "not an address" in str(refused.value)
    else:
        assert policy.admit(host, addresses) == admitted


def test_reasons_name_the_rule() -> None:
    """A refusal says which list and which range refused it, for the 400 or the log."""
    with pytest.raises(AddressRefused, match=r"inside instances.deny 169.254.0.0/16"):
        DEFAULT.check_host("169.254.169.254")
    with pytest.raises(AddressRefused, match=r"localhost resolves to 127.0.0.1, inside"):
        LOOPBACK_DENIED.admit("localhost", ["127.0.0.1"])
    with pytest.raises(AddressRefused, match=r"outside instances.allow"):
        ONLY_LOOPBACK.check_host("10.1.2.3")


def test_default_deny_is_the_documented_list() -> None:
    """The defaults: link-local ranges and the cloud metadata services."""
    assert DEFAULT_DENY == (
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",
        "100.100.100.200/32",
        "metadata.google.internal",
    )
