"""The rooms of docs/ARCHITECTURE.md and what each may import, checked on every module's AST.

Imports inside functions count as much as those at the top; a rule names a module prefix
(``infra`` forbids ``infra`` and ``infra.x``, not ``infrastructure``).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYER = REPO / "layers" / "shared" / "payfn_shared"
DRIVERS = ("pymysql", "MySQLdb", "redis", "confluent_kafka", "kafka", "sqlite3")
SQL_LITERAL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE)\s", re.IGNORECASE)


@dataclass(frozen=True)
class Room:
    """A folder of the architecture and the module prefixes it must not import."""

    name: str
    root: Path
    forbidden: tuple[str, ...]


INFRA = REPO / "infra"
ROOMS = (
    Room("layer", LAYER, ("infra", "gateway", "payfn_mcp", "functions")),
    Room("layer platform", LAYER / "platform", ("payfn_shared.payments", "payfn_shared.monitoring")),
    Room("layer payments", LAYER / "payments", ("payfn_shared.monitoring",)),
    Room("handlers", REPO / "functions", ("infra", "gateway", "payfn_mcp", *DRIVERS)),
    Room("gateway", REPO / "gateway", ("infra.stack", "infra.runtime", "infra.eventsource", "infra.drills",
                                       "infra.registry", "infra.deploy", "payfn_shared.payments",
                                       "payfn_shared.monitoring", "payfn_mcp", "functions", *DRIVERS)),
    Room("net", INFRA / "net", ("infra.stack", "infra.runtime", "infra.registry", "infra.eventsource",
                                "infra.drills", "infra.deploy", "gateway", "payfn_shared.payments",
                                "payfn_shared.monitoring")),
    Room("sam", INFRA / "sam", ("infra.stack", "infra.net", "infra.runtime", "infra.registry",
                                "infra.eventsource", "infra.drills", "infra.deploy", "gateway",
                                "payfn_shared.payments")),
    Room("runtime", INFRA / "runtime", ("infra.registry", "infra.eventsource", "infra.drills", "infra.deploy",
                                        "gateway")),
    Room("registry", INFRA / "registry", ("infra.runtime", "infra.eventsource", "infra.drills",
                                          "infra.deploy", "gateway", "payfn_shared.payments")),
    Room("eventsource", INFRA / "eventsource", ("infra.stack", "infra.registry", "infra.drills",
                                                "infra.deploy", "gateway")),
    Room("deploy", INFRA / "deploy", ("infra.registry", "infra.eventsource", "infra.drills", "gateway")),
    Room("mcp", REPO / "mcp" / "payfn_mcp", ("infra.stack", "infra.runtime", "gateway", "functions",
                                             "payfn_shared.payments")),
)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, absolute names, with the line that imports it."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def breaks(module: str, prefix: str) -> bool:
    """Whether ``module`` is ``prefix`` or lies below it."""
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("room", ROOMS, ids=lambda room: room.name)
def test_no_room_imports_what_the_architecture_forbids(room: Room) -> None:
    modules = sorted(room.root.rglob("*.py"))
    assert modules, f"no modules under {room.root}"
    offences = [f"{path.relative_to(REPO)}:{line} imports {module}"
                for path in modules for line, module in imported_modules(path)
                for prefix in room.forbidden if breaks(module, prefix)]
    assert offences == []


def test_handlers_hold_no_sql() -> None:
    offences = [f"{path.relative_to(REPO)}:{node.lineno}"
                for path in sorted((REPO / "functions").rglob("*.py"))
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and SQL_LITERAL.match(node.value)]
    assert offences == []


def test_the_checker_sees_an_offence(tmp_path: Path) -> None:
    module = tmp_path / "handler.py"
    module.write_text("def handler(event, context):\n"
                      "    import pymysql\n    from infra.stack import supervisor\n")
    names = [name for _, name in imported_modules(module)]
    assert "pymysql" in names and breaks("infra.stack.supervisor", "infra")
    assert not breaks("infrastructure", "infra")
