"""payfn's registry (a Eureka stand-in) as every process uses it.

``client`` speaks Eureka's REST API, ``lease`` keeps one instance registered,
``discovery`` picks live instances of a service (round robin, quarantine). One of
each, for the gateway, the function hosts and the background processes alike;
standard library only, because the package ships in the Lambda layer.
"""

from payfn_shared.platform.registry.client import (
    DEFAULT_LEASE_DURATION,
    DEFAULT_RENEWAL_INTERVAL,
    InstanceInfo,
    RegistryClient,
    RegistryError,
    parse_applications,
)
from payfn_shared.platform.registry.discovery import DiscoveredInstance, Discovery
from payfn_shared.platform.registry.lease import RegistryLease

__all__ = [
    "DEFAULT_LEASE_DURATION",
    "DEFAULT_RENEWAL_INTERVAL",
    "DiscoveredInstance",
    "Discovery",
    "InstanceInfo",
    "RegistryClient",
    "RegistryError",
    "RegistryLease",
    "parse_applications",
]
