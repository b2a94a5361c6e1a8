"""Operator commands: ``zlog config check``, ``zlog status``, ``zlog tail``.

Each module is one subcommand of ``zlog`` (see ``zlog.cli``). They read the
broker's configuration, ask a running broker over its socket, or read Kafka;
none of them runs inside an application or a broker.
"""
