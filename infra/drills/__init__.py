"""``payfn drill NAME``: failure drills against a live stack, through the gateway.

Each drill breaks one component the way production would meet it (the broker
stopped, Redis or MariaDB stopped, a function host SIGKILLed, a consumer's
execution environment killed mid-batch), drives client traffic through the
gateway while it is broken and after it is back, asserts every step, and ends
with a consistency check: nothing acknowledged to a client is lost, nothing is
applied twice (see :mod:`infra.drills.consistency`).

Modules: ``config`` (timings, the ``--fast`` profile), ``report`` (steps and the
printed report), ``client`` (the gateway client that remembers every 2xx), ``target``
(the stack under drill: components, the event flow, a private stack), ``consistency``
(the final check), ``load`` (the open-model load generator shared with the benchmarks;
``load_http`` its raw-connection payment flows), ``steps`` (what every drill shares),
the drills ``breaker``, ``datastores``, ``processes`` and ``outage``, and ``cli``.
"""
