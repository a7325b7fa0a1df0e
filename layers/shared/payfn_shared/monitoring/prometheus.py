"""A minimal client of Prometheus' HTTP API (``/api/v1/query``), standard library only.

Why not a client package: the layer ships to Lambda, and two GET requests with a
timeout do not justify a dependency. Failures never raise past
:meth:`PrometheusClient.query`'s :class:`PrometheusUnavailable`, so an analysis
can say "Prometheus is down" instead of failing as a whole.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


class PrometheusUnavailable(RuntimeError):
    """Prometheus did not answer, or answered with an error status."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class PrometheusClient:
    """Instant queries against one Prometheus server."""

    def __init__(self, base_url: str, timeout_seconds: float) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"Prometheus URL must be http(s)://host:port, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds

    def query(self, promql: str) -> list[Sample]:
        """Evaluate ``promql`` now; a vector result as samples (a scalar becomes one unlabeled sample)."""
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            # The scheme was checked in __init__ (http/https only), which is what S310 guards against.
            with urllib.request.urlopen(url, timeout=self.timeout_seconds) as response:  # noqa: S310
                body: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:200]
            raise PrometheusUnavailable(f"Prometheus answered {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PrometheusUnavailable(f"Prometheus at {self.base_url} is unreachable: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusUnavailable(f"Prometheus query failed: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        return [Sample(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]
