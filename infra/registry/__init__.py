"""payfn's registry service: a Eureka stand-in whose leases live in DynamoDB.

``python -m infra.registry [--port 8761]`` serves Eureka's REST API so that
function hosts (through ``payfn_shared.platform.registry``), real Eureka clients and
Prometheus' ``eureka_sd_configs`` all see the same instances.
"""
