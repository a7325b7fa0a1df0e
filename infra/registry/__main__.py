"""``python -m infra.registry [--host H] [--port P]``: run the registry until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from payfn_shared.config import ConfigError, load_dataclass, load_settings, merged_environment

from infra.aws import dynamodb_client, ensure_tables
from infra.registry.server import RegistryConfig, RegistryServer
from infra.registry.store import RegistryStore
from infra.template import TableSpec, TemplateError, load_template

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


def build_server(host: str, port: int, create_table: bool = True) -> RegistryServer:
    """A ready (bound, table checked) registry server; the caller runs ``serve_forever``."""
    settings = load_settings()
    config: RegistryConfig = load_dataclass(RegistryConfig)
    table = registry_table()
    name = table.name
    if create_table:
        ensure_tables(settings, [table])
    store = RegistryStore(dynamodb_client(settings), name, cache_ttl=config.registry_cache_ttl)
    return RegistryServer((host, port), store, config)


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
        server = build_server(args.host, args.port, create_table=not args.no_create_table)
    except (ConfigError, TemplateError) as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 2
    server.start_sweeper()

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("payfn.registry").info(
        "registry on %s (table %s)", server.url, server.store.table)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
