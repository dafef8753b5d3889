"""Settings: built-in defaults, an optional TOML file, then RELAY_* environment variables."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A setting in the file or the environment is unknown or has the wrong type."""


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    public_url: str = ""
    max_body_bytes: int = 65536
    trust_forwarded_for: bool = False
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    embed_origins: list[str] = field(default_factory=list)  # sites that may frame the watch/replay pages
    shutdown_timeout_s: float = 10.0
    read_timeout_s: float = 10.0  # a request's head and body arrive within this of its first byte
    idle_timeout_s: float = 15.0  # an idle keep-alive connection is closed after this


@dataclass
class AuthSettings:
    admin_key: str = ""
    token_secret: str = ""
    metrics_key: str = ""
    shopper_secret: str = ""  # the brand signs shopper tokens (HS256) with it
    shop_key: str = ""  # the brand's shop posts orders and refunds with it, and can do nothing else


@dataclass
class IceSettings:
    addresses: list[str] = field(default_factory=list)
    consent_timeout_s: float = 30.0
    connect_timeout_s: float = 15.0  # a WHIP/WHEP session not connected by then is closed


@dataclass
class RtmpSettings:
    enabled: bool = True
    host: str = ""  # empty: [server] host
    port: int = 1935  # 0 picks a free one (the show views give the real one)


@dataclass
class MediaSettings:
    grace_period_s: float = 30.0
    keyframe_request_interval_s: float = 1.0
    udp_gso: bool = True
    gop_cache_max_frames: int = 600
    video_codecs: list[str] = field(default_factory=lambda: ["H264", "VP8"])
    publisher_timeout_s: float = 10.0
    figures_save_interval_s: float = 2.0  # live room figures go to the store this often


@dataclass
class RestreamSettings:
    connect_timeout_s: float = 10.0  # TCP, TLS, RTMP handshake and publish of a target, all of it
    write_timeout_s: float = 10.0  # a target that takes no data for this long is dropped and retried
    retry_min_s: float = 1.0  # a target that fails waits this long, doubled each time up to retry_max_s
    retry_max_s: float = 30.0
    max_targets_per_show: int = 10
    queue_frames: int = 300  # frames waiting for a slow target before it skips to the next keyframe
    aac_bitrate: int = 128000  # the AAC every target of a show gets, converted once from its Opus


@dataclass
class ReplaySettings:
    enabled: bool = True
    dir: str = ""  # empty: <data_dir>/replays; in a cluster, a disk the nodes share if they have one
    segment_target_s: float = 4.0
    retention_days: float = 30.0
    retention_check_interval_s: float = 3600.0
    max_queued_frames: int = 900


@dataclass
class LimitSettings:
    max_viewers_per_show: int = 0
    max_viewers_per_process: int = 500
    viewer_registrations_per_s: float = 20.0
    claims_per_s: float = 20.0
    attributions_per_s: float = 20.0  # per address: a viewer asks once per product link it opens
    whep_per_s: float = 10.0
    whip_per_s: float = 2.0
    max_pending_sessions_per_address: int = 10
    max_connections_per_address: int = 256
    registrations_per_address_per_show: int = 50
    idempotency_retention_s: float = 86400.0  # a claim's Idempotency-Key is honoured this long


@dataclass
class CommerceSettings:
    attribution_ttl_s: float = 7 * 86400.0  # a sale this long after the tap on Buy is still credited


@dataclass
class CommentSettings:
    per_viewer_per_s: float = 1.0  # comments a viewer may post per second (0: no limit) ...
    per_viewer_burst: int = 5  # ... and at once


@dataclass
class WebhookSettings:
    urls: list[str] = field(default_factory=list)
    secret: str = ""
    timeout_s: float = 5.0
    max_queue: int = 10000
    max_attempts: int = 8


@dataclass
class WebPushSettings:
    """Show reminders sent as Web Push messages (RFC 8030/8291/8292)."""

    # Subscriptions make the relay POST to a URL a stranger gave: only these push services
    # ("*.x" any subdomain of x); https only, but plain http to a loopback host listed here.
    push_service_hosts: list[str] = field(default_factory=lambda: [
        "fcm.googleapis.com", "updates.push.services.mozilla.com", "*.notify.windows.com", "web.push.apple.com"])
    subject: str = ""  # VAPID "sub": a mailto: or https: contact; empty: the base URL
    workers: int = 8  # concurrent sends; a show's subscribers queue behind them
    max_queue: int = 100000  # messages waiting; beyond it a go-live's messages are dropped (logged)
    timeout_s: float = 10.0
    max_attempts: int = 5  # a push service failing this often (5xx, 429, network) is given up on
    ttl_s: int = 3600  # how long the push service keeps a message for a browser that is offline
    subscriptions_per_s: float = 2.0  # per address


@dataclass
class StoreSettings:
    redis_url: str = ""
    redis_prefix: str = "relay"


@dataclass
class ClusterSettings:
    node_id: str = ""  # empty: <hostname>-<port>, and -w<i> after it for worker i
    advertise_url: str = ""  # empty: base_url; a worker's: its private port
    origin_ttl_s: float = 10.0  # a show's origin key outlives its node's last heartbeat this long
    edge_linger_s: float = 30.0  # an edge keeps pulling a show this long after its last viewer left
    max_viewers_per_node: int = 0  # beyond it a WHEP offer is sent (307) to the least loaded node; 0: off


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ice: IceSettings = field(default_factory=IceSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    rtmp: RtmpSettings = field(default_factory=RtmpSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    restream: RestreamSettings = field(default_factory=RestreamSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    commerce: CommerceSettings = field(default_factory=CommerceSettings)
    comments: CommentSettings = field(default_factory=CommentSettings)
    webpush: WebPushSettings = field(default_factory=WebPushSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    @property
    def base_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        return f"http://{self.server.host}:{self.server.port}"

    @property
    def rtmp_host(self) -> str:
        """The address the RTMP ingest binds."""
        return self.rtmp.host or self.server.host

    @property
    def replay_path(self) -> Path:
        return Path(self.replay.dir) if self.replay.dir else self.data_path / "replays"

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def node_id(self) -> str:
        return self.cluster.node_id or f"{socket.gethostname()}-{self.server.port}"

    @property
    def node_url(self) -> str:
        """Where other nodes of a cluster reach this one."""
        return (self.cluster.advertise_url or self.base_url).rstrip("/")


# Settings that must be more than zero (zero elsewhere means "off" or "no limit").
POSITIVE = {"ice.consent_timeout_s", "ice.connect_timeout_s", "media.publisher_timeout_s",
            "media.figures_save_interval_s", "cluster.origin_ttl_s",
            "media.gop_cache_max_frames", "replay.segment_target_s",
            "replay.retention_check_interval_s", "replay.max_queued_frames", "server.max_body_bytes",
            "server.shutdown_timeout_s", "server.read_timeout_s", "server.idle_timeout_s", "webhooks.timeout_s", "limits.idempotency_retention_s", "webhooks.max_queue", "webhooks.max_attempts",
            "commerce.attribution_ttl_s", "restream.connect_timeout_s", "restream.write_timeout_s",
            "restream.retry_min_s", "restream.retry_max_s", "restream.max_targets_per_show",
            "restream.queue_frames", "restream.aac_bitrate", "webpush.workers", "webpush.max_queue",
            "webpush.timeout_s", "webpush.max_attempts", "comments.per_viewer_burst"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(value: Any, default: Any, where: str) -> Any:
    expected = type(default).__name__
    if isinstance(default, bool):
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    try:
        if isinstance(default, list):
            if isinstance(value, str) and value.strip().startswith("["):
                value = json.loads(value)  # a JSON list, as a TOML-minded user writes it
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return list(value)
        if isinstance(value, bool):
            raise ValueError(value)
        if isinstance(default, int):
            number: float = int(value)
        elif isinstance(default, float):
            number = float(value)
        else:
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: expected {'a list of strings' if expected == 'list' else expected}, "
                          f"got {value!r}") from exc
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{where}: must be a finite number of 0 or more, got {value!r}")
    return number


def _check(settings: Settings, source: str) -> None:
    for name in POSITIVE:
        section, key = name.split(".")
        if getattr(getattr(settings, section), key) <= 0:
            raise ConfigError(f"{source}: {name} must be more than 0")
    for name, port in (("server.port", settings.server.port), ("rtmp.port", settings.rtmp.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{source}: {name} must be 0-65535, got {port}")
    for address in settings.ice.addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"{source}: ice.addresses: {address!r} is not an IP address") from None


def _apply(settings: Settings, data: Mapping[str, Any], source: str) -> None:
    for section_name, values in data.items():
        section = getattr(settings, section_name, None)
        if section is None or not dataclasses.is_dataclass(section):
            raise ConfigError(f"{source}: unknown section [{section_name}]")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: [{section_name}] must be a table")
        known = {f.name for f in dataclasses.fields(section)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown setting {section_name}.{key}")
            default = getattr(section, key)
            setattr(section, key, _coerce(value, default, f"{source}: {section_name}.{key}"))


def _from_env(settings: Settings, env: Mapping[str, str]) -> None:
    overrides: dict[str, dict[str, str]] = {}
    if env.get("RELAY_ADMIN_KEY"):
        overrides.setdefault("auth", {})["admin_key"] = env["RELAY_ADMIN_KEY"]
    for f in dataclasses.fields(settings):
        section = getattr(settings, f.name)
        for sf in dataclasses.fields(section):
            name = f"RELAY_{f.name}_{sf.name}".upper()
            if name in env:
                overrides.setdefault(f.name, {})[sf.name] = env[name]
    _apply(settings, overrides, "environment")


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file at `path` (if any), then RELAY_* variables from `env`."""
    settings = Settings()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        _apply(settings, data, str(path))
    _from_env(settings, os.environ if env is None else env)
    _check(settings, "settings")
    return settings
