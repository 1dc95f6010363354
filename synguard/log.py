"""Log lines: human ("synguard: ...") or JSON (one object per line with "event",
"ts", "level", "msg" and the event's fields), and event() to emit one."""

from __future__ import annotations

import json
import logging

log = logging.getLogger("synguard")


class JsonFormatter(logging.Formatter):
    def format(self, record):
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "event": getattr(record, "event", "log"), "msg": record.getMessage()}
        doc.update(getattr(record, "fields", {}))
        return json.dumps(doc, sort_keys=False)


def setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("synguard: %(message)s"))
    root = logging.getLogger("synguard")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def event(name: str, msg: str, level=logging.INFO, **fields) -> None:
    log.log(level, msg, extra={"event": name, "fields": fields})
