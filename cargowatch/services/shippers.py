"""A shipper's contract (``PUT /v1/shippers/{shipper}``): alarm deadlines, default
thresholds and whom to e-mail about what (``notify``), checked by the engine's and the
notifier's own validators before anything is stored."""

from __future__ import annotations

from typing import Any

from alerts import validate_sla
from alerts.mail_notify import validate_notify
from cargowatch.services.engine import EngineGate
from core.errors import InvalidInput
from rules import validate_rules
from telemetry.store import Store


class ShipperService:
    def __init__(self, store: Store, gate: EngineGate) -> None:
        self._store = store
        self._gate = gate

    def put(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Validate, store, then hand the thresholds to the engine (live trips follow at once).

        Both checks run before the store is touched: a value the engine refuses (422) leaves
        the stored contract as it was, and so cannot stop the next start."""
        shipper = str(doc.get("shipper") or "")
        if not shipper:
            raise InvalidInput("shipper is required")
        sla = validate_sla(doc.get("sla") or {})
        rule_values = validate_rules(doc.get("rules") or {}, "rules")
        notify = validate_notify(doc.get("notify"))
        stored = {"shipper": shipper, "sla": sla, "rules": rule_values, "notify": notify}
        # Live trips take the new thresholds at once; their checkpoints follow in the same
        # transaction as the stored contract.
        self._gate.commit(
            lambda engine: engine.put_shipper_rules(shipper, rule_values),
            lambda _: (),
            before=lambda: self._store.put_shipper(stored),
        )
        return stored
