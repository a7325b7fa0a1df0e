"""What the three payfn MCP servers share: answer shape, error mapping, transports.

Every tool answers with
- ``content``: the report's one-line ``summary`` (what a person reads in Claude)
  followed by the full report as JSON text (for clients that ignore structured
  content, as the MCP spec recommends), and
- ``structuredContent``: the same report as an object, for programs.
A refused request (bad filter, unknown merchant id format, database down) is a
tool error (``isError``) whose structured content is payfn's error body
``{code, message, errors}`` — the same body the REST API answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable, Sequence
from typing import Any

import uvloop
from mcp.server import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from payfn_shared.platform.errors import ApiError

from infra.net.asgi import AsgiBridge
from infra.net.limits import load_limits
from infra.net.server import HttpServer

#: Every payfn tool only reads: clients may run them without asking for confirmation.
READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)
HTTP_HOST = "127.0.0.1"
#: A tool call is a small JSON-RPC request.
MCP_MAX_BODY_BYTES = 256 * 1024


def report_result(report: dict[str, Any]) -> CallToolResult:
    """A report as a tool answer: summary + JSON text, and the report as structured content."""
    text = json.dumps(report, indent=2, ensure_ascii=False, default=str)
    return CallToolResult(
        content=[
            TextContent(type="text", text=str(report.get("summary", ""))),
            TextContent(type="text", text=text),
        ],
        structured_content=json.loads(text),
    )


def error_result(error: ApiError) -> CallToolResult:
    body = error.body()
    body.pop("paymentId", None)
    details = "; ".join(f"{e['field']}: {e['message']}" for e in body.get("errors", []))
    text = f"{error.code}: {error.message}" + (f" ({details})" if details else "")
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=body, is_error=True
    )


def answer(build: Callable[[], dict[str, Any]]) -> CallToolResult:
    """Run one report; payfn's deliberate errors become tool errors, anything else the SDK reports."""
    try:
        return report_result(build())
    except ApiError as error:
        return error_result(error)


def serve(server: MCPServer, module: str, default_port: int, argv: Sequence[str] | None = None) -> None:
    """stdio by default (Claude Desktop); ``--http [--port N]`` serves streamable HTTP at ``/mcp``.

    HTTP binds 127.0.0.1 only, with no option to change it: the tools read payment
    data and the server has no authentication, so it must not be reachable from
    another machine (put an authenticating proxy in front if one is needed).
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=server.instructions)
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"HTTP port (with --http), default {default_port}"
    )
    args = parser.parse_args(argv)
    if args.http:
        uvloop.run(serve_http(server, args.port))
    else:
        server.run()


async def serve_http(server: MCPServer, port: int) -> None:
    """Streamable HTTP (stateless, JSON answers) on payfn's one HTTP server, until SIGTERM/SIGINT.

    The same server and limits as every payfn listener (bodies, headers, stalled
    requests); each tool call is a self-contained request, so no session is kept.
    """
    bridge = AsgiBridge(server.streamable_http_app(stateless_http=True, json_response=True, host=HTTP_HOST),
                        HTTP_HOST, port)
    await bridge.startup()
    http = HttpServer(bridge.handle, load_limits(MCP_MAX_BODY_BYTES))
    await http.start(HTTP_HOST, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await http.close()
    await bridge.shutdown()
