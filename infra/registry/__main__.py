"""``python -m infra.registry [--host H] [--port P]``: run the registry until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from payfn_shared.platform.config import ConfigError, load_dataclass, load_settings, merged_environment

from infra.registry.accounts import RegistryAccounts
from infra.registry.server import RegistryConfig, RegistryServer
from infra.registry.store import RegistryStore
from infra.sam.template import TableSpec, TemplateError, load_template
from infra.stack.aws import dynamodb_client, ensure_tables

REGISTRY_TABLE_ID = "RegistryTable"


def registry_table() -> TableSpec:
    """The template's RegistryTable, renamed when ``PAYFN_REGISTRY_TABLE`` says so."""
    for table in load_template().tables():
        if table.logical_id == REGISTRY_TABLE_ID:
            override = merged_environment().get("PAYFN_REGISTRY_TABLE")
            if override:
                return TableSpec(table.logical_id, {**table.properties, "TableName": override})
            return table
    raise TemplateError(f"template.yaml declares no {REGISTRY_TABLE_ID}")


def build_server(create_table: bool = True) -> RegistryServer:
    """A registry server (table checked, accounts read); the caller starts it."""
    settings = load_settings()
    config: RegistryConfig = load_dataclass(RegistryConfig)
    table = registry_table()
    name = table.name
    if create_table:
        ensure_tables(settings, [table])
    store = RegistryStore(dynamodb_client(settings), name, cache_ttl=config.registry_cache_ttl)
    return RegistryServer(store, config, RegistryAccounts.from_settings(settings))


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m infra.registry", description=__doc__)
    parser.add_argument("--host", default=settings.registry_host)
    parser.add_argument("--port", type=int, default=settings.registry_port)
    parser.add_argument("--no-create-table", action="store_true",
                        help="do not create the registry table when it is missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        server = build_server(create_table=not args.no_create_table)
        server.start_in_thread(args.host, args.port)
    except (ConfigError, TemplateError, OSError) as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 2
    server.start_sweeper()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    logging.getLogger("payfn.registry").info(
        "registry on %s (table %s)", server.url, server.store.table)
    stopped.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
