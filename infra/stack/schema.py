"""Versioned database migrations: ``infra/stack/migrations/V<version>__<name>.sql``.

Each file is applied once, in version order, and recorded with its checksum in
``schema_migrations``. An applied file that changed afterwards is an error, not
something to re-run: migrations are append-only, like Flyway's. Statements are
separated by a ``;`` at the end of a line. MariaDB commits DDL implicitly, so a
file should hold one logical change that is safe to finish by hand if it fails.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_PATTERN = re.compile(r"^V(\d+)__([A-Za-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration failed or an applied migration file was edited."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def statements(self) -> list[str]:
        body = "\n".join(line for line in self.sql.splitlines() if not line.strip().startswith("--"))
        return [part.strip() for part in re.split(r";\s*$", body, flags=re.MULTILINE) if part.strip()]


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in directory.glob("*.sql"):
        match = _FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named V<version>__<name>.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(versions) != len(set(versions)):
        raise MigrationError(f"two migration files share a version in {directory}")
    return migrations


def apply_migrations(connection: Any, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the pending migrations on a pymysql connection; returns the names applied."""
    applied_now = []
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INT PRIMARY KEY, name VARCHAR(200) NOT NULL, checksum CHAR(64) NOT NULL,"
            " applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)) ENGINE=InnoDB"
        )
        cursor.execute("SELECT version, checksum FROM schema_migrations")
        done = {int(version): checksum for version, checksum in cursor.fetchall()}
        for migration in discover(directory):
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"{migration.path.name} was changed after it was applied; add a new migration instead"
                    )
                continue
            for statement in migration.statements():
                try:
                    cursor.execute(statement)
                except Exception as error:
                    raise MigrationError(f"{migration.path.name}: {error}") from error
            cursor.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            connection.commit()
            applied_now.append(migration.path.name)
    return applied_now
