"""A simulated payer speaking CAQH CORE real-time 270/271, for tests, benchmarks and `medsched up`.

    python -m eligibility_svc.payer_sim --listen 127.0.0.1:0 --tls-cert C --tls-key K

prints one JSON line with the bound address and endpoint URLs, then serves until SIGTERM.
"""

from eligibility_svc.payer_sim.app import (
    MIME_PATH,
    SOAP_PATH,
    LatencyModel,
    PayerSimulator,
    SimulatorConfig,
    Stats,
    server_ssl_context,
)
from eligibility_svc.payer_sim.roster import (
    Behavior,
    Decision,
    Roster,
    RosterMember,
    builtin_roster,
    decide,
    load_roster,
)

__all__ = [
    "MIME_PATH",
    "SOAP_PATH",
    "Behavior",
    "Decision",
    "LatencyModel",
    "PayerSimulator",
    "Roster",
    "RosterMember",
    "SimulatorConfig",
    "Stats",
    "builtin_roster",
    "decide",
    "load_roster",
    "server_ssl_context",
]
