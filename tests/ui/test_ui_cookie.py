"""The dashboard cookie's value on its own: derived from the key, bound to its expiry, and
worthless under another key, after it expires, or when tampered with."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from openclaw_orchestrator.server.api.security import Authenticator

KEY = "k" * 32
EXPIRES = 2_000_000_000


def test_the_cookie_is_not_the_key_and_holds_until_it_expires() -> None:
    """Valid before its expiry, not at or after it; the key is nowhere in it."""
    auth = Authenticator(SecretStr(KEY))
    value = auth.ui_cookie(EXPIRES)
    assert KEY not in value
    assert value.startswith(f"{EXPIRES}.")
    assert auth.is_ui_cookie(value, EXPIRES - 1)
    assert not auth.is_ui_cookie(value, EXPIRES)


@pytest.mark.parametrize(
    "forged",
    [
        f"{EXPIRES + 1}.{{mac}}",  # a later expiry with the old MAC
        "{value}0",  # a MAC one character longer
        f"{EXPIRES}{{mac}}",  # no separator
        f"-{EXPIRES}.{{mac}}",  # not digits
        "",
        KEY,
    ],
)
def test_a_tampered_cookie_grants_nothing(forged: str) -> None:
    """Changing the expiry, the MAC or the shape invalidates it."""
    auth = Authenticator(SecretStr(KEY))
    value = auth.ui_cookie(EXPIRES)
    mac = value.partition(".")[2]
    assert not auth.is_ui_cookie(forged.format(value=value, mac=mac), 0)


def test_another_key_or_an_open_api_accepts_no_cookie() -> None:
    """A new key makes old cookies worthless; an API without a key needs none and takes none."""
    value = Authenticator(SecretStr(KEY)).ui_cookie(EXPIRES)
    assert not Authenticator(SecretStr("other" * 8)).is_ui_cookie(value, 0)
    assert not Authenticator(None).is_ui_cookie(value, 0)
