"""Who may write to the registry: HTTP Basic accounts, as a Eureka server behind Spring Security has.

Reads stay open (the gateway, Prometheus and the dashboards only read); every write
(register, renew, cancel, status override, metadata) names an account, and an
instance can only be changed by the account that registered it. The stack's own
account is ``PAYFN_REGISTRY_USER``/``PAYFN_REGISTRY_PASSWORD`` (generated on the first
``payfn up`` into ``.stack/credentials.env``); ``PAYFN_REGISTRY_ACCOUNTS_FILE`` may list
more, one ``user:password`` a line, for clients that must not share the stack's.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from pathlib import Path

from payfn_shared.platform.config import ConfigError, Settings


class RegistryAccounts:
    """Account name → password; :meth:`authenticate` reads an ``Authorization`` header."""

    def __init__(self, accounts: Mapping[str, str]) -> None:
        if not accounts or not all(name and password for name, password in accounts.items()):
            raise ConfigError("the registry needs at least one account with a password "
                              "(PAYFN_REGISTRY_USER and PAYFN_REGISTRY_PASSWORD)")
        self._accounts = {name.encode(): password.encode() for name, password in accounts.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryAccounts:
        accounts = {settings.registry_user: settings.registry_password}
        if settings.registry_accounts_file:
            accounts.update(read_accounts_file(Path(settings.registry_accounts_file)))
        return cls(accounts)

    def authenticate(self, authorization: str) -> str | None:
        """The account a ``Basic`` header proves, or None (absent, malformed or wrong)."""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        expected = self._accounts.get(name)
        # Compared in constant time, and against something even for an unknown name.
        if not colon or not hmac.compare_digest(password, expected or b"\0" * 32) or expected is None:
            return None
        return name.decode("utf-8", "replace")


def read_accounts_file(path: Path) -> dict[str, str]:
    """``user:password`` lines (``#`` comments); a missing or malformed file is a ConfigError."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"PAYFN_REGISTRY_ACCOUNTS_FILE {path}: {exc}") from None
    accounts = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, password = line.partition(":")
        if not colon or not name or not password:
            raise ConfigError(f"PAYFN_REGISTRY_ACCOUNTS_FILE {path}:{number}: expected user:password")
        accounts[name] = password
    return accounts
