"""Which hosts and addresses the orchestrator may connect to: ``instances.allow`` and
``instances.deny`` (``docs/configuration.md``).

A rule list mixes CIDRs (``10.0.0.0/8``, ``fd00::/8``, a bare address is its own /32 or
/128) and host names (``gw.internal`` exactly, ``*.svc.cluster.local`` for any name under
that suffix). A host is judged twice, and both judgements come from here so that the edges
(registration, the two HTTP clients) cannot disagree:

- :meth:`AddressPolicy.check_host` before any lookup, on the host as the URL names it:
  a denied name or a denied literal address is refused; a literal address outside a
  non-empty allow list is refused. A name is not resolved here (that is I/O).
- :meth:`AddressPolicy.admit` on every connect, with the addresses the name resolved to:
  a name that resolves into a denied range is refused whole (it points somewhere it must
  not, whatever else it lists); with an allow list, a name the list names is admitted with
  every address, any other name keeps only its addresses inside the list, and is refused
  when none is left. Deny always wins over allow.

An IPv4-mapped IPv6 address (``::ffff:169.254.169.254``) is judged as the IPv4 address it
carries too, so it cannot slip past an IPv4 rule.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_DENY",
    "MAX_RULES",
    "AddressPolicy",
    "AddressRefused",
    "AddressRules",
    "IPAddress",
    "IPNetwork",
    "parse_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DENY = (
    "169.254.0.0/16",  # IPv4 link-local: AWS, GCP, Azure, OCI, DigitalOcean metadata
    "fe80::/10",  # IPv6 link-local
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "metadata.google.internal",  # GCP metadata by name
)
"""What ``instances.deny`` refuses unless configured: link-local ranges and the cloud
metadata services (which hand out credentials to whoever asks from inside the VM)."""

MAX_RULES = 1024
"""Most entries one list may hold: each connect scans the lists."""

_MAX_NAME = 253  # DNS: the longest name
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


class AddressRefused(Exception):
    """The policy refuses ``host``; ``reason`` says which rule, for a person."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(reason)
        self.host = host
        self.reason = reason


def parse_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is a literal one (IPv6 with or without brackets,
    a zone id dropped), else None: a name."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(literal.partition("%")[0])
    except ValueError:
        return None


def _normal_name(host: str) -> str:
    return host.lower().rstrip(".")


def _parse_entry(entry: str) -> IPNetwork | str:
    """A CIDR (a bare address is its own network) or a name pattern, lower-cased."""
    text = entry.strip()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    name = _normal_name(text)
    bare = name.removeprefix("*.")
    if not bare or len(bare) > _MAX_NAME or not _NAME_RE.match(bare):
        raise ValueError(
            f"{entry!r} is neither a CIDR (10.0.0.0/8) nor a host name (gw.internal, "
            "*.svc.cluster.local)"
        )
    return name


@dataclass(frozen=True, slots=True)
class AddressRules:
    """One rule list, parsed: networks, exact names and ``*.suffix`` wildcards."""

    networks: tuple[IPNetwork, ...] = ()
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AddressRules:
        """The rules of ``entries``; ValueError names the first entry that is neither a
        CIDR nor a host name, or says the list is too long."""
        items = list(entries)
        if len(items) > MAX_RULES:
            raise ValueError(f"{len(items)} entries; at most {MAX_RULES}")
        networks: list[IPNetwork] = []
        names: set[str] = set()
        suffixes: list[str] = []
        for entry in items:
            rule = _parse_entry(entry)
            if not isinstance(rule, str):
                networks.append(rule)
            elif rule.startswith("*."):
                suffixes.append(rule[1:])  # "*.example.com" -> ".example.com"
            else:
                names.add(rule)
        return cls(tuple(networks), frozenset(names), tuple(suffixes))

    def __bool__(self) -> bool:
        return bool(self.networks or self.names or self.suffixes)

    def has_name(self, name: str) -> bool:
        """Whether ``name`` (a host name, not an address) matches a name or a wildcard."""
        normal = _normal_name(name)
        return normal in self.names or normal.endswith(self.suffixes)

    def network_of(self, address: IPAddress) -> IPNetwork | None:
        """The first network holding ``address`` (or the IPv4 address it maps), else None."""
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        for network in self.networks:
            if address in network or (mapped is not None and mapped in network):
                return network
        return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """``deny`` always refuses; a non-empty ``allow`` admits only what it lists."""

    deny: AddressRules
    allow: AddressRules = AddressRules()

    @classmethod
    def parse(
        cls, *, allow: Iterable[str] = (), deny: Iterable[str] = DEFAULT_DENY
    ) -> AddressPolicy:
        """The policy of two rule lists (see :meth:`AddressRules.parse`)."""
        return cls(deny=AddressRules.parse(deny), allow=AddressRules.parse(allow))

    def check_host(self, host: str) -> None:
        """Refuse ``host`` (as a URL names it) when no lookup could make it acceptable:
        a denied name, or a literal address that is denied or outside the allow list."""
        address = parse_address(host)
        if address is not None:
            self._check_address(host, address)
        elif self.deny.has_name(host):
            raise AddressRefused(host, f"{host} is in instances.deny")

    def admit(self, host: str, addresses: Sequence[str]) -> list[str]:
        """The addresses of ``host`` that may be connected to, in their order; refuses the
        host when one is denied or none is allowed (module docstring)."""
        self.check_host(host)
        parsed = [self._resolved(host, text) for text in addresses]
        if not self.allow or (parse_address(host) is None and self.allow.has_name(host)):
            return list(addresses)
        pairs = zip(addresses, parsed, strict=True)
        admitted = [t for t, address in pairs if self.allow.network_of(address) is not None]
        if not admitted:
            shown = ", ".join(addresses) or "no address"
            raise AddressRefused(host, f"{host} resolves to {shown}, outside instances.allow")
        return admitted

    def _resolved(self, host: str, text: str) -> IPAddress:
        """One address ``host`` resolved to, refused with the host when it is denied."""
        address = parse_address(text)
        if address is None:
            raise AddressRefused(host, f"{host} resolved to {text!r}, not an address")
        network = self.deny.network_of(address)
        if network is not None:
            raise AddressRefused(
                host, f"{host} resolves to {text}, inside instances.deny {network}"
            )
        return address

    def _check_address(self, host: str, address: IPAddress) -> None:
        network = self.deny.network_of(address)
        if network is not None:
            raise AddressRefused(host, f"{address} is inside instances.deny {network}")
        if self.allow and self.allow.network_of(address) is None:
            raise AddressRefused(host, f"{address} is outside instances.allow")
