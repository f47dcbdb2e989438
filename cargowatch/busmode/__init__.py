"""Bus mode: the partitioned engine over NATS JetStream (contract §8).

Two stages, each a set of partitions claimed with leases (``telemetry.bus``):

1. ``devicestage``: a worker task per owned DEVICES partition validates each message (dead
   letters stored), finds the device's current trip and re-keys the message onto the TRIPS
   partition of that trip (``telemetry.bus.rekey``).
2. ``tripstage``: a worker task per owned TRIPS partition runs its own ``EngineGate`` holding
   only that partition's trips: telemetry, rules, alarms and checkpoints in one transaction,
   then the acknowledgement; the wall-clock rules tick per partition.

``worker.BusWorker`` (in ``cargowatch.worker``) runs both stages; ``apigate`` is the engine
gate of ``serve --bus`` (API changes, never telemetry); ``control`` tells the workers about
those changes; ``live`` carries the live feed between processes.
"""
