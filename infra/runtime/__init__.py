"""Lambda runtime emulation: function hosts that run the template's functions locally.

Entry point: ``python -m infra.runtime.host`` (see docs/RUNTIME.md for the command
line and the design). This package's ``__init__`` imports nothing because
every execution environment imports ``infra.runtime.worker`` at its cold start.
"""
