"""The network pieces every payfn process shares: the HTTP server, the HTTP client, discovery."""
