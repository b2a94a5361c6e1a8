"""A stand-in emitter: a raw ZeroMQ DEALER sending numbered events to a broker.

Run as a script by the integration tests (one process per simulated worker)::

    python sender.py SOCKET PROC COUNT [--ack-last] [--forever]

Every event is derived from (PROC, i) by ``make_event``, so a test can rebuild
what each record in Kafka must look like from the id inside it.
"""

from __future__ import annotations

import argparse
import os
import sys

import zmq

from zlog import protocol
from zlog.protocol import EventClass

CLASSES = (EventClass.APPLICATION, EventClass.AUDIT, EventClass.SECURITY)

# A realistic envelope is a few hundred bytes; pad to about that size.
PAD = b"x" * 300


def make_event(proc: int, i: int) -> tuple[EventClass, bytes, list, bytes]:
    """(class, key, headers, envelope) of event ``i`` of sender ``proc``."""
    event_class = CLASSES[i % 3]
    key = b"tenant-%d" % (i % 7)
    headers = [("x-tenant", key), ("x-id", b"%d-%d" % (proc, i))]
    value = b'{"id":"%d-%d","class":%d,"pad":"%s"}' % (proc, i, event_class, PAD)

    return event_class, key, headers, value


def send(socket_path: str, proc: int, count: int, ack_last: bool, forever: bool) -> int:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.sndhwm = 0  # never drop: the tests count every event
    dealer.connect(f"ipc://{socket_path}")
    host = os.uname().nodename.encode()
    pid = os.getpid()
    i = 0
    while forever or i < count:
        event_class, key, headers, value = make_event(proc, i)
        wants_ack = ack_last and i == count - 1
        dealer.send_multipart(
            protocol.encode_event(
                event_class,
                value,
                host=host,
                pid=pid,
                seq=i + 1,
                key=key,
                headers=protocol.encode_headers(headers),
                wants_ack=wants_ack,
            )
        )
        i += 1
    if ack_last:
        reply = protocol.decode_reply(dealer.recv_multipart())
        if isinstance(reply, protocol.FrameError) or reply.kind != protocol.Kind.ACK:
            print(f"expected an ack, got {reply}", file=sys.stderr)
            return 1
    dealer.close(linger=-1)
    context.term()

    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("proc", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--ack-last", action="store_true")
    parser.add_argument("--forever", action="store_true")
    args = parser.parse_args()
    sys.exit(send(args.socket, args.proc, args.count, args.ack_last, args.forever))
