"""payfn's edge: API Gateway emulation behind Spring Cloud Gateway-style routes.

``python -m gateway [--port 8080]`` routes ``/api/...`` requests to a service found
in the registry (``lb://NAME``), picks the function from the template's API events,
and invokes it through Lambda's Invoke API on a function host with the exact API
Gateway proxy event (REST v1 or HTTP API v2).
"""
