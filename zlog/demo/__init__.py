"""``zlog demo``: real system logs replayed from a worker pool, checked in Kafka.

- ``parsers``: one line of a Loghub sample to one event (pure);
- ``replay``: the multiprocessing pool that logs every line through structlog
  and ``zlog.ZlogProcessor``;
- ``broker_process``: the broker subprocess and the topics of one run;
- ``verify``: read the topics back, judge exactly once, print the table;
- ``runner`` and ``cli``: one run, and its command line.
"""
