"""What the observability tests share: where the dashboards are and the queries in them.

The seed's dashboard is read from ``../shared/seed/`` relative to the repository root
(CI checks ``shared/`` out beside the clone): it is the contract, never copied here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.sam.template import REPO_ROOT

OBSERVABILITY = REPO_ROOT / "observability"
SEED_DASHBOARD = REPO_ROOT.parent / "shared" / "seed" / "payment-overview.json"
OUR_DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "payment-overview.json"
DATASOURCES = OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = OBSERVABILITY / "grafana" / "provisioning" / "dashboards" / "payfn.yml"


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, named the way a failure message should name it."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}: {self.expr}"


def load_dashboard(path: Path) -> dict[str, Any]:
    if not path.exists():
        pytest.fail(f"{path} is missing (the seed is expected in ../shared/seed/ beside the repository)")
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries(path: Path) -> list[PanelQuery]:
    dashboard = load_dashboard(path)
    return [PanelQuery(path.parent.name + "/" + path.name, str(panel["title"]), str(target["refId"]),
                       str(target["expr"]))
            for panel in panels(dashboard) for target in panel.get("targets", []) if target.get("expr")]


def promtool() -> str:
    """The promtool binary (Debian package ``prometheus``, which ``make`` installs)."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: install the Debian package prometheus (make up / make test do)")
    return binary
