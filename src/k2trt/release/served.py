"""What a running Triton serves, read through its API: versions, releases, engine.

`chat`'s config is the deployment record: parameter `k2trt_release.N` names the release
version N serves ("NAME VERSION [ID]"; `k2trt package` writes version 1's without the id,
`k2trt release deploy` each new one with it). `preprocessing` and `postprocessing` version N
belong to the same release (chat N calls preprocessing N and detokenizes with its own copy of
the release's model files; postprocessing N serves other clients; see serving/chat.py).
Every model's config also carries the engine part it was packaged with (`k2trt_engine_id`,
`..._weights`, `..._options`); `tensorrt_llm`'s is what the engine really is.

    >>> status(TritonControl("127.0.0.1:8000"))["serving"]  # doctest: +SKIP
    {'version': 2, 'release': {'name': 'kimi-k2', 'version': '1.1.0', 'id': 'sha256:...'}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from k2trt.errors import K2Error
from k2trt.runtime.wire import CHAT_MODEL
from k2trt.triton_repo import spec
from k2trt.triton_repo.control import TritonControl, VersionState, first_line, parameters

SERVING_MODELS = (spec.PRE_MODEL, spec.POST_MODEL, CHAT_MODEL)  # what a rollout changes
ENGINE_PARAMS = (spec.P_ENGINE_ID, spec.P_ENGINE_WEIGHTS, spec.P_ENGINE_OPTIONS)


def parse_label(text: str) -> dict[str, str]:
    """A release record "NAME VERSION [ID]" as data.

    >>> parse_label("kimi-k2 1.1.0 sha256:ab")
    {'name': 'kimi-k2', 'version': '1.1.0', 'id': 'sha256:ab'}
    """
    parts = text.split()
    keys = ("name", "version", "id")
    return dict(zip(keys, parts[:3], strict=False)) if parts else {}


def label_text(record: dict[str, str] | None) -> str:
    """How a release record reads to people.

    >>> label_text({"name": "kimi-k2", "version": "1.1.0", "id": "sha256:0123456789abcdef"})
    'kimi-k2 1.1.0 (sha256:0123456789ab)'
    """
    if not record:
        return "unknown"
    text = f"{record.get('name', '?')} {record.get('version', '?')}"
    return text + (f" ({record['id'][:19]})" if record.get("id") else "")


def records(chat_params: dict[str, str]) -> dict[int, dict[str, str]]:
    """version -> release record, from chat's parameters."""
    out = {}
    for key, value in chat_params.items():
        number = key[len(spec.P_RELEASE) :]
        if key.startswith(spec.P_RELEASE) and number.isdigit():
            out[int(number)] = parse_label(value)
    return out


@dataclass
class Served:
    """The running serving models: chat's version, its release, the engine."""

    version: int
    release: dict[str, str]
    engine: dict[str, str]
    chat_params: dict[str, str] = field(default_factory=dict)
    index: list[VersionState] = field(default_factory=list)


def served(control: TritonControl) -> Served:
    """The running state; K2Error when it is not one k2trt repository serving one chat version."""
    index = control.index()
    names = {v.name for v in index}
    missing = [m for m in (*SERVING_MODELS, spec.LLM_MODEL) if m not in names]
    if missing:
        raise K2Error(
            f"triton at {control.url} has no {', '.join(missing)} model: not a k2trt repository"
        )
    chat = sorted(v.version for v in index if v.name == CHAT_MODEL and v.ready)
    if len(chat) != 1:
        raise K2Error(
            f"triton at {control.url}: chat serves versions {chat or 'none'}; expected exactly "
            f"one (a rollout in progress, or one that was interrupted: see k2trt release status)"
        )
    chat_params = parameters(control.model_config(CHAT_MODEL))
    engine = parameters(control.model_config(spec.LLM_MODEL))
    return Served(
        version=chat[0],
        release=records(chat_params).get(chat[0], {}),
        engine={k: engine[k] for k in ENGINE_PARAMS if k in engine},
        chat_params=chat_params,
        index=index,
    )


def status(control: TritonControl) -> dict[str, Any]:
    """Every model version the server knows, its state and the release it serves.

    Releases come from chat's records (pre/post version N: chat N's release); the engine
    from `tensorrt_llm`'s config."""
    index = control.index()
    loaded = {v.name for v in index if v.ready}
    configs = {m: parameters(control.model_config(m)) for m in sorted(loaded)}
    chat_records = records(configs.get(CHAT_MODEL, {}))
    rows = []
    for v in sorted(index, key=lambda v: (v.name, -v.version)):
        release = None
        if v.name in SERVING_MODELS or v.name.startswith("k2trt-"):
            release = chat_records.get(v.version)
        rows.append(
            {
                "model": v.name,
                "version": v.version,
                "state": v.state,
                "reason": first_line(v.reason),
                "release": release,
            }
        )
    serving = [v.version for v in index if v.name == CHAT_MODEL and v.ready]
    engine = configs.get(spec.LLM_MODEL, {})
    return {
        "triton": control.url,
        "serving": [{"version": n, "release": chat_records.get(n)} for n in sorted(serving)],
        "engine": {k: engine[k] for k in ENGINE_PARAMS if k in engine},
        "models": rows,
    }


def status_text(data: dict[str, Any]) -> str:
    """`k2trt release status` for people: a line per model version."""
    serving = ", ".join(
        f"version {s['version']} = {label_text(s['release'])}" for s in data["serving"]
    )
    engine = data["engine"].get(spec.P_ENGINE_ID, "not recorded")
    lines = [
        f"triton   {data['triton']}",
        f"serving  chat {serving or 'not ready'}",
        f"engine   {engine[:12]}",
        f"{'model':<16} {'version':>7}  {'state':<12} release",
    ]
    for row in data["models"]:
        release = label_text(row["release"]) if row["release"] else "-"
        note = f"  ({row['reason']})" if row["reason"] and row["state"] != "READY" else ""
        lines.append(f"{row['model']:<16} {row['version']:>7}  {row['state']:<12} {release}{note}")
    return "\n".join(lines)
