"""The worker side of zlog: everything that runs inside application processes.

``emitter`` owns the socket to the broker, ``envelope`` builds what Kafka
consumers read, ``jsonenc`` serializes anything, ``forward`` maps event dicts
into envelopes for ``processor`` (structlog) and ``handler`` (stdlib
logging), and ``compat`` keeps the old publisher API working.
"""
