"""Prometheus configuration rendered for the configured addresses."""

from __future__ import annotations

from pathlib import Path

from payfn_shared.platform.config import Settings

from infra.sam.template import REPO_ROOT

OBSERVABILITY_DIR = REPO_ROOT / "observability"


def render_prometheus_config(settings: Settings, target: Path) -> bool:
    """Write prometheus.yml (and its rule files) next to ``target`` with our addresses.

    The checked-in file holds the default addresses; only those literals are
    replaced, so the file stays valid, promtool-checkable YAML on its own.
    Returns whether anything changed (so a running Prometheus knows to reload).
    """
    text = (OBSERVABILITY_DIR / "prometheus.yml").read_text(encoding="utf-8")
    text = text.replace("http://127.0.0.1:8761", settings.registry_url)
    text = text.replace('"127.0.0.1:9090"', f'"{settings.prometheus_host}:{settings.prometheus_port}"')
    text = text.replace("username: payfn", f"username: {settings.registry_user}")
    target.parent.mkdir(parents=True, exist_ok=True)
    wanted = {target: text, target.parent / "registry.password": settings.registry_password}
    for rules in OBSERVABILITY_DIR.glob("alerts*.yml"):
        wanted[target.parent / rules.name] = rules.read_text(encoding="utf-8")
    changed = False
    for path, content in wanted.items():
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.touch(mode=0o600)
            path.write_text(content, encoding="utf-8")
            changed = True
    return changed
