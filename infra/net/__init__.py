"""The network pieces every payfn process shares: the HTTP server, the HTTP client, the Invoke client.

Discovery of instances (round robin, quarantine) lives in ``payfn_shared.platform.registry``.
"""
