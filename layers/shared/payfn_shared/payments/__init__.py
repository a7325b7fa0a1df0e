"""Payments: the domain (state machine, ledger rules), its SQL, and the service handlers call."""
