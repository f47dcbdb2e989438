"""cargowatch: the composition root — settings, the runtime and its services, the CLI, the demo.

It imports every engine package and none of them imports it; their shared base (the error
kinds and the clock) is ``core``. Data flows one way: broker -> ``telemetry`` (validate,
dead-letter, store) -> ``rules`` (batched arrays) -> ``alerts`` (alarm life cycle, deadlines,
webhooks) -> ``api`` (HTTP, live feed).
"""
