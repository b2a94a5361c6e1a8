"""The events every path sends: one application event, and the loghub replay.

Pure code, shared by the harness and the workers. An *item* is what one log
call receives: a structlog method name, a message and the event's keys. The
paths that replace zlog serialize an item into the envelope the old publisher
wrote (``old_envelope``); zlog's path hands the same item to its structlog
processor, which builds its own envelope.

Every item carries ``sent_ns``, the wall clock when the caller logged it, so
the harness can read end-to-end latency out of Kafka.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from zlog.demo.parsers import SOURCES, parse_line

ROOT = Path(__file__).resolve().parent.parent
LOGHUB_DIR = ROOT / "examples" / "data" / "loghub"

WORKLOADS = ("app", "loghub")

# The event types the old publisher wrote, one per class.
EVENT_TYPES = {
    "application": "omninode.logging.application.v1",
    "audit": "omninode.logging.audit.v1",
    "security": "omninode.logging.security.v1",
}

SENT_NS = re.compile(rb'"sent_ns":\s*(\d+)')


def app_item(index: int, rng: random.Random) -> tuple[str, str, dict]:
    """A web service's "order placed" line: 550 to 600 bytes as an envelope."""
    fields = {
        "logger": "shop.orders",
        "order_id": 100_000 + index,
        "amount": round(rng.uniform(1, 500), 2),
        "status": 201,
        "duration_ms": round(rng.uniform(0.5, 40), 3),
    }

    return "info", "order placed", fields


def loghub_items() -> list[tuple[str, str, dict]]:
    """Every line of the loghub samples, parsed, interleaved file by file."""
    per_file = []
    for name in sorted(SOURCES):
        lines = (LOGHUB_DIR / name).read_text(encoding="utf-8").splitlines()
        parsed = [parse_line(name, n, text) for n, text in enumerate(lines, 1)]
        per_file.append([(e.method, e.message, e.fields) for e in parsed])
    longest = max(len(items) for items in per_file)

    return [items[i] for i in range(longest) for items in per_file if i < len(items)]


def items_for(workload: str, worker: int, workers: int, count: int) -> list:
    """The ``count`` items worker ``worker`` of ``workers`` sends, in order."""
    if workload == "app":
        rng = random.Random(worker)
        return [app_item(worker * count + i, rng) for i in range(count)]
    replay = loghub_items()

    return [replay[(worker + i * workers) % len(replay)] for i in range(count)]


def event_class(fields: dict) -> str:
    return str(fields.get("event_class", "application"))


def old_envelope(method: str, message: str, fields: dict, sent_ns: int) -> bytes:
    """The envelope as the old publisher built it: a dict and ``json.dumps``."""
    name = event_class(fields)
    context = {k: v for k, v in fields.items() if k not in ("event_class", "logger")}
    context["sent_ns"] = sent_ns
    if name == "application":
        payload = {
            "service_name": "bench",
            "level": method.upper(),
            "logger": fields.get("logger", "bench"),
            "message": message,
            "context": context,
        }
    else:
        payload = {"message": message, "context": context}
    envelope = {
        "event_type": EVENT_TYPES[name],
        "event_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "tenant_id": "default",
        "namespace": "bench",
        "source": "bench",
        "correlation_id": None,
        "causation_id": None,
        "schema_ref": f"registry://bench/{name}/v1",
        "payload": payload,
    }

    return json.dumps(envelope).encode()
