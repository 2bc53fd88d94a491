"""SQLite persistence of schedules (write functions run on the group-commit thread)."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

from dtq_server.errors import ScheduleExists
from dtq_server.schedules import MissedTicks, Schedule
from dtq_server.store.connection import Connection
from dtq_server.validation import SpecInput

COLUMNS = (
    "name, cron, interval_s, time_zone, template, paused, missed, next_fire_at, last_fire_at, "
    "fired_count, created_at"
)


def template_to_json(spec: SpecInput) -> str:
    """A task template as stored (payload in base64)."""
    fields = dataclasses.asdict(spec)
    fields["payload"] = base64.b64encode(spec.payload).decode()
    return json.dumps(fields, sort_keys=True)


def template_from_json(text: str) -> SpecInput:
    """A stored task template."""
    fields: dict[str, Any] = json.loads(text)
    fields["payload"] = base64.b64decode(fields["payload"])
    fields["depends_on"] = tuple(fields.get("depends_on", ()))  # JSON has no tuples
    fields["headers"] = tuple((key, value) for key, value in fields.get("headers", ()))
    return SpecInput(**fields)


def row_to_schedule(row: Any) -> Schedule:
    """A schedules row as a Schedule."""
    (name, cron, interval_s, zone, template, paused, missed, next_at, last_at, fired, created) = row
    return Schedule(
        name=name,
        cron=cron,
        interval_s=interval_s,
        time_zone=zone,
        template=template_from_json(template),
        paused=bool(paused),
        missed=MissedTicks(missed),
        next_fire_at=next_at,
        last_fire_at=last_at,
        fired_count=fired,
        created_at=created,
    )


def create(conn: Connection, schedule: Schedule) -> tuple[Schedule, bool]:
    """Insert a schedule, or return the identical one already stored."""
    found = conn.execute(
        f"SELECT {COLUMNS} FROM schedules WHERE name = ?", (schedule.name,)
    ).fetchone()
    if found is not None:
        existing = row_to_schedule(found)
        if not existing.same_definition(schedule):
            raise ScheduleExists(schedule.name)
        return existing, False
    conn.execute(
        f"INSERT INTO schedules ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            schedule.name, schedule.cron, schedule.interval_s, schedule.time_zone,
            template_to_json(schedule.template), int(schedule.paused), int(schedule.missed),
            schedule.next_fire_at, schedule.last_fire_at, schedule.fired_count,
            schedule.created_at,
        ),
    )  # fmt: skip
    return schedule, True


def advance(
    conn: Connection,
    name: str,
    expected_next: float,
    next_at: float,
    fired: list[float],
    ended: bool,
) -> bool:
    """Move a schedule past the ticks just fired (pausing it if they were its last),
    fenced on the tick it was at and on not being paused (a pause that commits first
    wins)."""
    cur = conn.execute(
        "UPDATE schedules SET next_fire_at = ?, last_fire_at = COALESCE(?, last_fire_at), "
        "fired_count = fired_count + ?, paused = ? "
        "WHERE name = ? AND next_fire_at = ? AND paused = 0",
        (next_at, max(fired) if fired else None, len(fired), int(ended), name, expected_next),
    )
    return cur.rowcount == 1


def set_paused(conn: Connection, name: str, paused: bool, next_at: float) -> bool:
    """Pause or resume; a resumed schedule continues at ``next_at``."""
    cur = conn.execute(
        "UPDATE schedules SET paused = ?, next_fire_at = ? WHERE name = ?",
        (int(paused), next_at, name),
    )
    return cur.rowcount == 1


def delete(conn: Connection, name: str) -> bool:
    """Delete a schedule."""
    return conn.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount == 1


def load_all(conn: Connection) -> list[Schedule]:
    """Every schedule, by name."""
    return [
        row_to_schedule(r) for r in conn.execute(f"SELECT {COLUMNS} FROM schedules ORDER BY name")
    ]
