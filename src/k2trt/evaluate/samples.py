"""Our own tool-call sample set (data/toolcalls-sample.jsonl), made deterministically here.

    python -m k2trt.evaluate.samples src/k2trt/evaluate/data/toolcalls-sample.jsonl

Every line is a K2-Vendor-Verifier request body (messages, tools, temperature, max_tokens,
stream every other line, role `_input` for some system prompts). The tools cover nested
objects, arrays, enums, required fields, bounded numbers and patterns; requests offer one to
four tools; some carry a multi-turn history with Kimi tool-call ids (`functions.NAME:IDX`) and
tool results; some need no tool at all. Each case also has the reply a correct model would give
(Kimi-format text with tool-call markers), which tests replay through a scripted gateway.
Nothing here comes from K2VV's data set.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
SAMPLE_PATH = DATA / "toolcalls-sample.jsonl"
GATE_PATH = DATA / "toolcalls-gate.yaml"
CASES, SEED = 120, 20260101

CITIES = ["Paris", "Oslo", "Nairobi", "Lima", "Osaka", "Quebec", "Tbilisi", "Perth"]
AIRPORTS = ["CDG", "OSL", "NBO", "LIM", "KIX", "YQB", "TBS", "PER"]
CURRENCIES = ["EUR", "USD", "JPY", "GBP", "KES", "PEN"]
ROOMS = ["kitchen", "bedroom", "office", "living_room"]
TABLES = ["orders", "customers", "invoices"]


def obj(props: dict[str, Any], required: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required, **extra}


def tool(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


INT = {"type": "integer"}
STR = {"type": "string"}
TOOLS = {
    "get_weather": tool("get_weather", "Weather forecast for a city.", obj({
        "city": STR,
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {**INT, "minimum": 1, "maximum": 14},
    }, ["city"])),
    "search_flights": tool("search_flights", "Search flights between two airports.", obj({
        "origin": obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}, ["code"]),
        "destination": obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}, ["code"]),
        "date": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$"},
        "passengers": obj({
            "adults": {**INT, "minimum": 1, "maximum": 9},
            "children": {**INT, "minimum": 0, "maximum": 9},
        }, ["adults"], additionalProperties=False),
        "cabin": {"type": "string", "enum": ["economy", "premium", "business", "first"]},
    }, ["origin", "destination", "date", "passengers"])),
    "create_event": tool("create_event", "Create a calendar event.", obj({
        "title": {"type": "string", "minLength": 1},
        "start": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}$"},
        "duration_minutes": {**INT, "minimum": 5, "maximum": 480},
        "attendees": {"type": "array", "minItems": 1, "items": obj({
            "email": {"type": "string", "pattern": "^[^@ ]+@[^@ ]+$"},
            "optional": {"type": "boolean"},
        }, ["email"])},
        "reminders": {"type": "array", "items": {**INT, "minimum": 0, "maximum": 1440}},
    }, ["title", "start", "attendees"])),
    "query_records": tool("query_records", "Query a table with filters.", obj({
        "table": {"type": "string", "enum": TABLES},
        "filters": {"type": "array", "items": obj({
            "column": STR,
            "op": {"type": "string", "enum": ["=", "!=", "<", ">", "contains"]},
            "value": {"type": ["string", "number"]},
        }, ["column", "op", "value"])},
        "limit": {**INT, "minimum": 1, "maximum": 1000},
    }, ["table"])),
    "send_email": tool("send_email", "Send an email.", obj({
        "to": {"type": "array", "minItems": 1, "maxItems": 10, "items": STR},
        "subject": STR,
        "body": STR,
        "priority": {"type": "string", "enum": ["low", "normal", "high"]},
    }, ["to", "subject", "body"])),
    "convert_currency": tool("convert_currency", "Convert an amount of money.", obj({
        "amount": {"type": "number", "exclusiveMinimum": 0},
        "from": {"type": "string", "enum": CURRENCIES},
        "to": {"type": "string", "enum": CURRENCIES},
    }, ["amount", "from", "to"])),
    "set_thermostat": tool("set_thermostat", "Set a room's thermostat.", obj({
        "room": {"type": "string", "enum": ROOMS},
        "temperature": {"type": "number", "minimum": 10, "maximum": 30},
        "mode": {"type": "string", "enum": ["heat", "cool", "auto"]},
    }, ["room", "temperature"])),
    "book_table": tool("book_table", "Book a restaurant table.", obj({
        "restaurant": STR,
        "party_size": {**INT, "minimum": 1, "maximum": 20},
        "time": {"type": "string", "pattern": "^([01]\\d|2[0-3]):[0-5]\\d$"},
        "preferences": obj({
            "outdoor": {"type": "boolean"},
            "dietary": {"type": "array", "uniqueItems": True, "items": {
                "type": "string", "enum": ["vegan", "vegetarian", "gluten_free", "halal"]}},
        }, []),
    }, ["restaurant", "party_size", "time"])),
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One request of the set and the reply a correct model gives it."""

    request: dict[str, Any]
    reply: str


Ask = tuple[str, dict[str, Any]]  # the user's question and the arguments that answer it


def ask_weather(r: random.Random) -> Ask:
    city, days = r.choice(CITIES), r.randint(1, 14)
    unit = r.choice(["celsius", "fahrenheit"])
    return f"What will the weather be in {city} for {days} days, in {unit}?", {
        "city": city, "unit": unit, "days": days}  # fmt: skip


def ask_flights(r: random.Random) -> Ask:
    a, b = r.sample(AIRPORTS, 2)
    adults, children = r.randint(1, 4), r.randint(0, 3)
    date, cabin = f"2026-0{r.randint(1, 9)}-1{r.randint(0, 9)}", r.choice(["economy", "business"])
    args = {"origin": {"code": a}, "destination": {"code": b}, "date": date,
            "passengers": {"adults": adults, "children": children}, "cabin": cabin}  # fmt: skip
    return f"Find {cabin} flights {a} to {b} on {date}, {adults} adults, {children} kids.", args


def ask_event(r: random.Random) -> Ask:
    names = r.sample(["ana", "bo", "chen", "dara", "eli"], r.randint(1, 3))
    start = f"2026-03-{r.randint(10, 28)}T{r.randint(8, 17):02d}:30"
    args = {"title": "Design review", "start": start, "duration_minutes": 45,
            "attendees": [{"email": f"{n}@example.com", "optional": i > 0}
                          for i, n in enumerate(names)],
            "reminders": [10, 60]}  # fmt: skip
    return f"Schedule a 45 minute design review at {start} with {', '.join(names)}.", args


def ask_query(r: random.Random) -> Ask:
    table, amount, country = r.choice(TABLES), r.randint(10, 999), r.choice(["FR", "NO", "KE"])
    args = {"table": table, "limit": 50, "filters": [
        {"column": "total", "op": ">", "value": amount},
        {"column": "country", "op": "=", "value": country}]}  # fmt: skip
    return f"List up to 50 {table} over {amount} from {country}.", args


def ask_email(r: random.Random) -> Ask:
    who = r.sample(["ops@example.com", "cfo@example.com", "team@example.com"], 2)
    args = {"to": who, "subject": "Outage report", "body": "The outage is resolved.",
            "priority": r.choice(["normal", "high"])}  # fmt: skip
    return f"Email {' and '.join(who)} that the outage is resolved ({args['priority']}).", args


def ask_currency(r: random.Random) -> Ask:
    a, b = r.sample(CURRENCIES, 2)
    amount = round(r.uniform(1, 5000), 2)
    return f"How much is {amount} {a} in {b}?", {"amount": amount, "from": a, "to": b}


def ask_thermostat(r: random.Random) -> Ask:
    room, temp = r.choice(ROOMS), r.randint(16, 26) + r.choice([0, 0.5])
    mode = r.choice(["heat", "cool", "auto"])
    return f"Set the {room.replace('_', ' ')} to {temp} degrees, {mode} mode.", {
        "room": room, "temperature": temp, "mode": mode}  # fmt: skip


def ask_table(r: random.Random) -> Ask:
    size, hour = r.randint(2, 12), r.randint(18, 22)
    diet = r.sample(["vegan", "gluten_free", "halal"], r.randint(0, 2))
    args = {"restaurant": "Chez Lune", "party_size": size, "time": f"{hour}:00",
            "preferences": {"outdoor": hour < 20, "dietary": diet}}  # fmt: skip
    needs = f" ({', '.join(diet)})" if diet else ""
    return f"Book Chez Lune for {size} at {hour}:00{needs}.", args


ASKS: dict[str, Callable[[random.Random], Ask]] = {
    "get_weather": ask_weather,
    "search_flights": ask_flights,
    "create_event": ask_event,
    "query_records": ask_query,
    "send_email": ask_email,
    "convert_currency": ask_currency,
    "set_thermostat": ask_thermostat,
    "book_table": ask_table,
}
CHAT = ["Thanks, that is all.", "Tell me a fun fact about octopuses.", "Say hello in Norwegian."]


def kimi_calls(calls: list[tuple[str, dict[str, Any]]], first: int = 0) -> str:
    """Kimi K2's output for tool calls: the section and call markers, ids functions.NAME:IDX."""
    body = "".join(
        f"<|tool_call_begin|>functions.{name}:{first + i}<|tool_call_argument_begin|>"
        f"{json.dumps(args, ensure_ascii=False)}<|tool_call_end|>"
        for i, (name, args) in enumerate(calls)
    )
    return f"<|tool_calls_section_begin|>{body}<|tool_calls_section_end|>"


def history(r: random.Random, name: str) -> tuple[list[dict[str, Any]], int]:
    """An earlier turn that called `name` (Kimi id) and got its result; the next call index."""
    question, args = ASKS[name](r)
    call_id = f"functions.{name}:0"
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "", "tool_calls": [{"id": call_id, "type": "function",
         "function": {"name": name, "arguments": json.dumps(args)}}]},
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"ok": True})},
        {"role": "assistant", "content": "Done."},
    ], 1  # fmt: skip


def build_case(n: int, r: random.Random) -> Case:
    """Case `n`: tools offered, an optional history, the question, the correct reply."""
    names = r.sample(sorted(TOOLS), r.randint(1, 4))
    messages: list[dict[str, Any]] = []
    if n % 3 == 0:
        role = "_input" if n % 2 else "system"  # K2VV's `_input` is sent as system
        messages.append({"role": role, "content": "You are a careful assistant. Use tools."})
    first = 0
    if n % 4 == 1:
        earlier, first = history(r, names[-1])
        messages += earlier
    if n % 10 == 7:  # no tool fits: a correct model answers in text
        question, reply = f"Ticket {n:03d}: {r.choice(CHAT)}", "Here you go."
    else:
        calls = [(names[0], ASKS[names[0]](r))]
        if len(names) > 1 and n % 5 == 2:  # two calls at once
            calls.append((names[1], ASKS[names[1]](r)))
        question = f"Ticket {n:03d}: " + " Also: ".join(q for _, (q, _) in calls)
        reply = kimi_calls([(name, args) for name, (_, args) in calls], first)
    messages.append({"role": "user", "content": question})
    request: dict[str, Any] = {
        "messages": messages,
        "tools": [TOOLS[name] for name in names],
        "temperature": 0.6,
        "max_tokens": 1024,
        "stream": n % 2 == 1,
    }
    return Case(request, reply)


def build_cases(count: int = CASES, seed: int = SEED) -> list[Case]:
    """The whole set, the same every time for the same count and seed."""
    r = random.Random(seed)
    return [build_case(n, r) for n in range(count)]


def render(cases: list[Case]) -> str:
    """The JSONL text of the set."""
    return "".join(json.dumps(c.request, ensure_ascii=False) + "\n" for c in cases)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else SAMPLE_PATH
    out.write_text(render(build_cases()), encoding="utf-8")
    print(f"wrote {CASES} requests to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
