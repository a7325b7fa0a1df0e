"""The local EventBridge scheduler: runs the template's ``Schedule`` events.

Every ``Schedule`` event of every function in the template is a rule (``rate()`` and
``cron()`` read as EventBridge reads them, UTC; disabled rules do not run). Each run
invokes the function through the Lambda Invoke API on an UP instance of its service
from the registry, one thread per rule: a rule never overlaps itself, and ticks missed
meanwhile are skipped and counted, as EventBridge would not queue them. A rule may run
at a local interval (``Metadata: payfn:local-schedule``): the relay drains the outbox
every second locally, while AWS runs it every minute. Serves ``/metrics`` and
``/health``; registered as app ``SCHEDULER``.

Command line, local intervals and metrics: docs/EVENTS.md#infraeventsourcescheduler
"""

from __future__ import annotations

import argparse
import calendar
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from payfn_shared.platform.config import ConfigError, Settings, merged_environment
from payfn_shared.platform.numbers import parse_decimal
from payfn_shared.platform.registry import RegistryClient
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infra.net.invoke import InvokeUnavailable, ServiceInvoker
from infra.net.serving import BackgroundWork, background_main, background_parser
from infra.runtime.functions import ACCOUNT_ID, REGION, template_parameters
from infra.sam.template import Template, TemplateError, load_template

log = logging.getLogger("payfn.scheduler")

APP_NAME = "SCHEDULER"
LOCAL_SCHEDULE_METADATA = "payfn:local-schedule"
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
CRON = re.compile(r"^cron\((.+)\)$")
UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


class ScheduleError(ValueError):
    """A schedule expression the scheduler does not understand (message says which)."""


class Schedule(Protocol):
    def next_after(self, moment: datetime) -> datetime: ...


@dataclass(frozen=True)
class Rate:
    """``rate(N unit)``, or a local interval in seconds."""

    seconds: float

    def next_after(self, moment: datetime) -> datetime:
        return moment + timedelta(seconds=self.seconds)


_MONTHS = {name: i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {name.upper(): i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 1)}


def _cron_field(text: str, low: int, high: int, names: Mapping[str, int] | None = None) -> frozenset[int]:
    """One cron field (``*``, ``?``, ``a``, ``a-b``, ``*/n``, ``a/n``, ``a-b/n``, lists) → allowed values."""
    names = {k.upper(): v for k, v in (names or {}).items()}

    def value(token: str) -> int:
        number = parse_decimal(token, 4)
        number = names.get(token.upper()) if number is None else number
        if number is None or not low <= number <= high:
            raise ScheduleError(f"cron value {token!r} is not in {low}-{high}")
        return number

    allowed: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ScheduleError(f"cron step in {part!r} must be positive")
        if span in ("*", "?"):
            start, end = low, high
        elif "-" in span:
            first, last = span.split("-", 1)
            start, end = value(first), value(last)
        else:
            start = value(span)
            end = high if step_text else start
        allowed.update(range(start, end + 1, step))
    return frozenset(allowed)


@dataclass(frozen=True)
class Cron:
    """EventBridge's six-field ``cron(minutes hours day-of-month month day-of-week year)`` in UTC.

    Our own parser, not croniter: croniter reads Unix cron (6th field seconds, 0 = Sunday,
    day-of-month OR day-of-week), so EventBridge's fields would need a translation about as
    long as this, and the template only uses ``rate()``. ``L``, ``W`` and ``#`` are rejected
    as invalid values, never silently misread.
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    years: frozenset[int]

    @classmethod
    def parse(cls, fields: str) -> Cron:
        parts = fields.split()
        if len(parts) != 6:
            raise ScheduleError(f"cron({fields}) needs 6 fields, has {len(parts)}")
        return cls(
            _cron_field(parts[0], 0, 59), _cron_field(parts[1], 0, 23), _cron_field(parts[2], 1, 31),
            _cron_field(parts[3], 1, 12, _MONTHS), _cron_field(parts[4], 1, 7, _DAYS),
            _cron_field(parts[5], 1970, 2199),
        )

    def _day_matches(self, day: datetime) -> bool:
        aws_weekday = (day.weekday() + 1) % 7 + 1  # EventBridge: 1 = Sunday … 7 = Saturday
        return (day.year in self.years and day.month in self.months and day.day in self.days
                and aws_weekday in self.weekdays)

    def next_after(self, moment: datetime) -> datetime:
        start = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.replace(hour=0, minute=0)
        for _ in range(366 * 5):
            if self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        candidate = day.replace(hour=hour, minute=minute)
                        if candidate >= start:
                            return candidate
            day += timedelta(days=1)
        raise ScheduleError("cron expression never fires in the next five years")


def parse_schedule(expression: str) -> Schedule:
    """``rate(...)`` or ``cron(...)`` as EventBridge writes them."""
    text = expression.strip()
    rate = RATE.match(text)
    if rate:
        count, unit = int(rate.group(1)), rate.group(2).rstrip("s")
        if count < 1:
            raise ScheduleError(f"{expression}: the rate must be positive")
        return Rate(count * UNIT_SECONDS[unit])
    cron = CRON.match(text)
    if cron:
        return Cron.parse(cron.group(1))
    raise ScheduleError(f"unsupported schedule expression {expression!r}")


@dataclass(frozen=True)
class Rule:
    """One ``Schedule`` event of one function."""

    name: str
    function: str
    service: str
    expression: str
    schedule: Schedule
    timeout: float
    enabled: bool = True
    input: Any = None

    @property
    def arn(self) -> str:
        return f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{self.name}"


def rules_from_template(template: Template, env: Mapping[str, str] | None = None) -> list[Rule]:
    """Every ``Schedule`` event in the template, with the local interval overrides applied."""
    environment = merged_environment(env)
    rules = []
    for spec in template.functions():
        metadata = template.resources[spec.logical_id].get("Metadata") or {}
        overrides = metadata.get(LOCAL_SCHEDULE_METADATA, {})
        for event in spec.events:
            if event.type != "Schedule":
                continue
            properties = event.properties
            if not spec.service:
                raise TemplateError(f"{spec.logical_id}: a scheduled function needs a payfn:service tag")
            expression = str(properties["Schedule"])
            schedule = parse_schedule(expression)
            override = overrides.get(event.name)
            if override:
                variable = str(override.get("IntervalSecondsVariable", ""))
                seconds = float(environment.get(variable) or override.get("DefaultIntervalSeconds", 60))
                if seconds <= 0:
                    raise TemplateError(f"{variable} must be a positive number of seconds")
                schedule, expression = Rate(seconds), f"local every {seconds:g} s ({expression} deployed)"
            state = str(properties.get("State", "ENABLED")).upper()
            enabled = bool(properties.get("Enabled", True)) and state != "DISABLED"
            raw_input = properties.get("Input")
            rules.append(Rule(
                name=str(properties.get("Name") or f"payfn-{spec.logical_id}-{event.name}"),
                function=spec.logical_id, service=spec.service, expression=expression, schedule=schedule,
                timeout=spec.timeout, enabled=enabled,
                input=None if raw_input is None else json.loads(str(raw_input)),
            ))
    return rules


def scheduled_event(rule: Rule, moment: datetime) -> dict[str, Any]:
    """EventBridge's ``Scheduled Event`` for ``rule`` firing at ``moment`` (or its constant Input)."""
    if rule.input is not None:
        return rule.input
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [rule.arn],
        "detail": {},
    }


class SchedulerMetrics:
    """The scheduler's own series plus the gauges functions report in their results."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.invocations = Counter("payfn_scheduler_invocations", "Scheduled invocations by outcome",
                                   ["rule", "function", "outcome"], registry=self.registry)
        self.skipped = Counter("payfn_scheduler_skipped", "Ticks skipped because the previous run was busy",
                               ["rule"], registry=self.registry)
        self.duration = Histogram("payfn_scheduler_invocation_duration_seconds", "Scheduled run duration",
                                  ["rule"], registry=self.registry)
        self._gauges: dict[str, Gauge] = {}
        self._lock = threading.Lock()

    def report(self, function: str, values: Any) -> None:
        """Expose ``{metric_name: number}`` from a function result as gauges ``{function=…}``."""
        if not isinstance(values, dict):
            return
        for name, value in values.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if not numeric or not METRIC_NAME.match(str(name)):
                continue
            with self._lock:
                gauge = self._gauges.get(name)
                if gauge is None:
                    gauge = Gauge(name, f"{name} as reported by a scheduled function", ["function"],
                                  registry=self.registry)
                    self._gauges[name] = gauge
            gauge.labels(function=function).set(value)


class Scheduler:
    """One thread per enabled rule; each runs its invocations strictly in sequence."""

    def __init__(self, rules: list[Rule], invoker_for: Callable[[str], ServiceInvoker],
                 metrics: SchedulerMetrics,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.rules = [rule for rule in rules if rule.enabled]
        self.invoker_for = invoker_for
        self.metrics = metrics
        self.clock = clock
        self.stop_event = threading.Event()
        self.last_runs: dict[str, dict[str, Any]] = {}
        self._threads = [
            threading.Thread(target=self._loop, args=(rule,), name=f"rule-{rule.name}", daemon=True)
            for rule in self.rules
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling; a run in progress is allowed to finish (up to ``timeout``)."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))

    def _loop(self, rule: Rule) -> None:
        due = rule.schedule.next_after(self.clock())
        while not self.stop_event.wait(max((due - self.clock()).total_seconds(), 0)):
            self.run_once(rule, due)
            due = rule.schedule.next_after(due)
            now = self.clock()
            while due <= now:
                self.metrics.skipped.labels(rule=rule.name).inc()
                due = rule.schedule.next_after(due)

    def run_once(self, rule: Rule, moment: datetime) -> str:
        """Invoke the rule's function once; returns the outcome (ok, error, unavailable)."""
        started = time.monotonic()
        try:
            result = self.invoker_for(rule.service).invoke(rule.function, scheduled_event(rule, moment),
                                                           timeout=rule.timeout + 5)
        except InvokeUnavailable as exc:
            outcome, detail = "unavailable", str(exc)
            log.warning("rule %s: %s", rule.name, exc)
        else:
            if result.status == 200 and result.function_error is None:
                outcome, detail = "ok", ""
                body = result.json()
                if isinstance(body, dict):
                    self.metrics.report(rule.function, body.get("metrics"))
            else:
                outcome, detail = "error", f"{result.error_type}: {result.error_message}"
                log.warning("rule %s: %s failed: %s", rule.name, rule.function, detail)
        elapsed = time.monotonic() - started
        self.metrics.invocations.labels(rule=rule.name, function=rule.function, outcome=outcome).inc()
        self.metrics.duration.labels(rule=rule.name).observe(elapsed)
        self.last_runs[rule.name] = {"at": moment.isoformat(), "outcome": outcome, "detail": detail,
                                     "seconds": round(elapsed, 3)}
        return outcome

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "rules": {rule.name: {"function": rule.function, "schedule": rule.expression,
                                                      "lastRun": self.last_runs.get(rule.name)}
                                          for rule in self.rules}}


def build_scheduler(args: argparse.Namespace, settings: Settings, registry: RegistryClient) -> BackgroundWork:
    """The scheduler of the template's rules (only those of ``--functions`` when given)."""
    template = load_template(args.template.resolve(), template_parameters(settings))
    rules = rules_from_template(template)
    if args.functions:
        rules = [rule for rule in rules if rule.function in args.functions]
    invokers: dict[str, ServiceInvoker] = {}

    def invoker_for(service: str) -> ServiceInvoker:
        return invokers.setdefault(service, ServiceInvoker(registry, service, settings.invoke_token))

    metrics = SchedulerMetrics()
    scheduler = Scheduler(rules, invoker_for, metrics)

    def start() -> None:
        for rule in scheduler.rules:
            log.info("rule %s → %s (%s) every %s", rule.name, rule.function, rule.service, rule.expression)
        scheduler.start()

    return BackgroundWork(metrics.registry, scheduler.health, start, scheduler.stop, "scheduler")


def main(argv: list[str] | None = None) -> int:
    parser = background_parser("python -m infra.eventsource.scheduler",
                               "Run the template's Schedule events against the function hosts.")
    return background_main(parser, APP_NAME, build_scheduler, argv,
                           startup_errors=(ConfigError, TemplateError, ScheduleError))


if __name__ == "__main__":
    sys.exit(main())
