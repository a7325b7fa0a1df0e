"""Lambda's platform log lines: START, END and REPORT.

The formats are CloudWatch's (tab-separated REPORT fields, ``Init Duration`` only on
a cold start, ``Status`` only when the invocation did not complete), so tools that
parse Lambda logs parse the host's stdout unchanged.

START is written by the environment itself, just before it calls the handler, and
END/REPORT by the host once the answer is in: both share the host's stdout, so a
handler's output always lands between its START and END, and the host's event loop
writes one batch of END/REPORT lines per loop iteration instead of three writes per
invocation. This module imports nothing heavy because the environment imports it.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

VERSION = "$LATEST"
TAIL_BYTES = 4096


def tail(log: str) -> str:
    """``X-Amz-Log-Result``: the last 4 KB of an invocation's log, base64-encoded."""
    return base64.b64encode(log.encode()[-TAIL_BYTES:]).decode("ascii")


def start_line(request_id: str, version: str = VERSION) -> str:
    return f"START RequestId: {request_id} Version: {version}\n"


def end_line(request_id: str) -> str:
    return f"END RequestId: {request_id}\n"


@dataclass(frozen=True)
class InvocationReport:
    """The measurements of one invocation, for its REPORT line."""

    request_id: str
    duration_ms: float
    memory_size_mb: int
    max_memory_used_mb: int
    init_duration_ms: float | None = None
    status: str | None = None
    error_type: str | None = None

    @property
    def billed_duration_ms(self) -> int:
        """Lambda bills in 1 ms steps, rounding up, and never less than 1 ms."""
        return max(1, math.ceil(self.duration_ms))

    def line(self) -> str:
        fields = [
            f"REPORT RequestId: {self.request_id}",
            f"Duration: {self.duration_ms:.2f} ms",
            f"Billed Duration: {self.billed_duration_ms} ms",
            f"Memory Size: {self.memory_size_mb} MB",
            f"Max Memory Used: {self.max_memory_used_mb} MB",
        ]
        if self.init_duration_ms is not None:
            fields.append(f"Init Duration: {self.init_duration_ms:.2f} ms")
        if self.status is not None:
            fields.append(f"Status: {self.status}")
        if self.error_type is not None:
            fields.append(f"Error Type: {self.error_type}")
        return "\t".join(fields) + "\t\n"
