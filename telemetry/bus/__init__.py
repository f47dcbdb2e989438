"""The partitioned engine's transport over NATS JetStream.

Devices publish over MQTT to the NATS server's MQTT listener; the server maps every device's
subject onto one of P partitions (``config``), a JetStream stream keeps them (``streams``),
workers claim partitions with leases (``leases``), read each one with a durable pull consumer
in batches (``consumer``) and re-key validated messages onto a stream partitioned by trip
(``rekey``), so one worker sees all of a trip's messages. ``partitions`` holds the pure
functions that name subjects and compute partitions exactly as the server does.
"""
