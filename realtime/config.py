"""Configuration: ``config.toml`` parsed into frozen dataclasses, with overrides.

Precedence, lowest first: dataclass defaults, the TOML file, environment
variables ``AVATAR_<SECTION>_<KEY>``, then ``--set section.key=value`` pairs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL_BACKENDS = ("auto", "onnx", "torch")
MODEL_PRECISIONS = ("auto", "fp32", "int8")  # of the onnx denoiser (realtime.generator)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    ice_servers: tuple[dict[str, Any], ...] = ()
    max_sessions: int = 4
    workers: int = 0
    session_idle_timeout: float = 60.0
    connect_timeout: float = 20.0
    auth_token: str = ""
    cors_origins: tuple[str, ...] = ("*",)
    max_body_bytes: int = 60_000_000
    rate_limit_per_minute: int = 30
    # Reverse proxies (addresses or networks) whose X-Forwarded-For names the real client.
    trusted_proxies: tuple[str, ...] = ()
    log_format: str = "text"


@dataclass(frozen=True)
class LiveConfig:
    avatar: str = "default"
    fps: int = 25
    resolution: int = 512
    inference_steps: int = 3
    dynamic_scale: float = 1.0
    motion_scale: float = 1.0
    smooth_motion: float = 0.0
    align_mouth: float = 0.0
    # Playout delay beyond the model's lookahead: audio arrival jitter + compute time (ms).
    latency_margin_ms: float = 50.0
    # How far the margin may grow while the host is too slow for it (later frames, not repeated ones).
    latency_margin_max_ms: float = 100.0
    # Cap on the VP8 bitrate the peer's bandwidth estimate may raise the encoder to (0: aiortc's 1500).
    max_video_kbps: int = 0
    # Ask the peer for Opus DTX (``usedtx=1`` in the answer): in silence Chromium then sends two
    # packets every 400 ms instead of 50 a second, and the session fills the gaps itself.
    uplink_dtx: bool = True


@dataclass(frozen=True)
class ModelConfig:
    path: str = "models/motion"
    backend: str = "auto"
    precision: str = "auto"


@dataclass(frozen=True)
class AvatarsConfig:
    default_image: str = "models/avatars/astronaut.png"
    cache_dir: str = "cache/avatars"
    max_image_bytes: int = 20_000_000


@dataclass(frozen=True)
class OfflineConfig:
    workers: int = 1
    queue_size: int = 8
    output_dir: str = "outputs"
    output_ttl: float = 3600.0
    max_audio_bytes: int = 50_000_000
    max_audio_seconds: float = 900.0
    # Progress streams (GET /api/jobs/{id}/events) one client may hold open at once; 0 = no limit.
    max_event_streams_per_client: int = 8


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    avatars: AvatarsConfig = field(default_factory=AvatarsConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)

    def resolve(self, path: str) -> Path:
        """A config path made absolute against the project root."""
        p = Path(path)
        return p if p.is_absolute() else ROOT / p


class ConfigError(ValueError):
    """A configuration value is unknown or of the wrong type."""


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Convert ``value`` (from TOML, env or CLI) to the type of ``default``."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            if isinstance(default, tuple):
                value = [v for v in value.split(",") if v]
            else:
                raise ConfigError(f"{where}: cannot parse {value!r}") from None
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    return value


def _apply(section_obj: Any, values: Mapping[str, Any], section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(section_obj)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {section}.{key}")
        changes[key] = _coerce(value, getattr(section_obj, key), f"{section}.{key}")
    return dataclasses.replace(section_obj, **changes)


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load the TOML file (default: ``config.toml`` in the project root), then apply overrides."""
    env = os.environ if env is None else env
    cfg = Config()
    toml_path = Path(path) if path is not None else ROOT / "config.toml"
    data: dict[str, Any] = {}
    if toml_path.exists():
        with toml_path.open("rb") as fh:
            data = tomllib.load(fh)
    elif path is not None:
        raise ConfigError(f"config file not found: {toml_path}")

    layered: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        layered.setdefault(section, {}).update(values)
    sections = {f.name for f in dataclasses.fields(cfg)}
    for name, value in env.items():
        if not name.startswith("AVATAR_"):
            continue
        rest = name[len("AVATAR_") :].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                layered.setdefault(section, {})[rest[len(section) + 1 :]] = value
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, setting = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        layered.setdefault(section, {})[setting] = value

    changes = {}
    for section, values in layered.items():
        if section not in sections:
            raise ConfigError(f"unknown config section [{section}]")
        changes[section] = _apply(getattr(cfg, section), values, section)
    cfg = dataclasses.replace(cfg, **changes)
    proxy_networks(cfg.server.trusted_proxies)  # refuse a bad entry at start, not per request
    # refused here, at start, rather than when the first session or job loads the model
    if cfg.model.backend not in MODEL_BACKENDS:
        raise ConfigError(f"model.backend must be auto, onnx or torch, got {cfg.model.backend!r}")
    if cfg.live.max_video_kbps and not 250 <= cfg.live.max_video_kbps <= 1500:
        raise ConfigError(
            f"live.max_video_kbps must be 0 (no cap) or 250..1500, got {cfg.live.max_video_kbps}"
        )
    live = cfg.live
    if not 0 <= live.latency_margin_ms <= live.latency_margin_max_ms <= 1000:
        raise ConfigError(
            "need 0 <= live.latency_margin_ms <= live.latency_margin_max_ms <= 1000, got "
            f"{live.latency_margin_ms:g} and {live.latency_margin_max_ms:g}"
        )
    if cfg.model.precision not in MODEL_PRECISIONS:
        raise ConfigError(f"model.precision must be auto, fp32 or int8, got {cfg.model.precision!r}")
    return cfg


def proxy_networks(entries: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``server.trusted_proxies`` as networks (a bare address is a /32 or /128)."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies: {entry!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
    return tuple(out)
