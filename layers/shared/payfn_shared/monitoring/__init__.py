"""MONITORING-SERVICE logic, shared by the monitoring functions and the MCP servers.

One concept, one place: the functions in ``functions/monitoring/`` and the MCP
servers in ``mcp/payfn_mcp/`` are both thin adapters over these modules, so a
person asking Claude and a program calling the REST API get the same answer,
computed by the same code. Every report is a JSON-ready dict that carries a
one-line ``summary`` for humans next to the structured fields for programs.
"""
