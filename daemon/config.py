"""Configuration: one TOML file, ``conf.d/*.toml`` drop-ins and ``MYCOEDGE_*`` environment overrides.

Everything is validated at start-up into frozen dataclasses; an invalid configuration is refused with every
problem named by its key (``mqtt.port: ...``), so an operator fixes it in one pass. The schema below is
also the source of ``docs/configuration.md``: each field's ``doc`` metadata is its documentation.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/mycoedge/mycoedge.toml")
ENV_PREFIX = "MYCOEDGE_"
# Environment variables under the prefix that are not config overrides.
_ENV_RESERVED = {"MYCOEDGE_CONFIG"}


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Identity of this node and where it keeps its state."""

    id: str = field(default_factory=socket.gethostname, metadata=_doc(
        "Node id used in MQTT topics, mDNS and upstream records. Default: the host name."))
    state_dir: Path = field(default=Path("/var/lib/mycoedge"), metadata=_doc(
        "Directory for the database, keys and the admin token (systemd StateDirectory)."))
    runtime_dir: Path = field(default=Path("/run/mycoedge"), metadata=_doc(
        "Directory for the API unix socket (systemd RuntimeDirectory)."))


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The local HTTP API."""

    listen: str = field(default="127.0.0.1:8787", metadata=_doc(
        "TCP address `host:port` of the HTTP API; an empty string serves the unix socket only."))
    unix_socket: bool = field(default=True, metadata=_doc(
        "Also serve the API on `<runtime_dir>/api.sock` (mode 0660)."))


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The link to the local Mosquitto broker."""

    enabled: bool = field(default=True, metadata=_doc("Connect to the broker at all."))
    host: str = field(default="127.0.0.1", metadata=_doc("Broker host."))
    port: int = field(default=1883, metadata=_doc("Broker TCP port.", port=True))
    username: str = field(default="", metadata=_doc("Broker user name for the daemon (empty: anonymous)."))
    password: str = field(default="", metadata=_doc("Broker password for the daemon.", secret=True))
    topic_root: str = field(default="mycoedge", metadata=_doc(
        "Topic root; the node publishes under `<topic_root>/<node.id>/`."))
    keepalive_s: int = field(default=30, metadata=_doc("MQTT keepalive in seconds.", minimum=5))
    reconnect_max_s: float = field(default=30.0, metadata=_doc(
        "Cap of the jittered exponential reconnect backoff, in seconds.", minimum=0.1))
    ha_discovery: bool = field(default=True, metadata=_doc("Publish Home Assistant MQTT discovery configs."))
    ha_prefix: str = field(default="homeassistant", metadata=_doc("Home Assistant discovery prefix."))


DEVICE_KINDS = ("mycobrain", "bme688", "lora-gateway", "rui3")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One serial device. Keys that do not apply to a kind are ignored by that kind's driver."""

    kind: str = field(default="", metadata=_doc(
        "Driver: `mycobrain`, `bme688`, `lora-gateway` or `rui3`.", choices=DEVICE_KINDS, required=True))
    port: str = field(default="", metadata=_doc(
        "Serial port path, preferably `/dev/serial/by-id/...` so it survives renumbering.", required=True))
    name: str = field(default="", metadata=_doc("Optional label shown in the API and Home Assistant."))
    baudrate: int = field(default=115200, metadata=_doc("Serial speed (all supported boards use 8N1).",
                                                        minimum=1200))
    stream_rate_hz: float = field(default=1.0, metadata=_doc(
        "MycoBrain: telemetry rate requested with `stream_sensors` (firmware minimum 0.1).", minimum=0.1))
    rate_ms: int = field(default=3000, metadata=_doc("BME688 bridge: measurement period.", minimum=100))
    heater_temp_c: int = field(default=320, metadata=_doc("BME688 forced mode heater target.", minimum=200))
    heater_dur_ms: int = field(default=150, metadata=_doc("BME688 forced mode heater duration.", minimum=1))
    frequency_hz: int = field(default=868_100_000, metadata=_doc("LoRa P2P frequency in Hz.", minimum=1))
    spreading_factor: int = field(default=7, metadata=_doc("LoRa spreading factor 7..12.", minimum=5))
    bandwidth_khz: int = field(default=125, metadata=_doc("LoRa bandwidth in kHz (125, 250, 500).", minimum=7))
    coding_rate: int = field(default=1, metadata=_doc("LoRa coding rate index 1..4 = 4/5..4/8.", minimum=1))
    preamble: int = field(default=8, metadata=_doc("LoRa preamble length in symbols.", minimum=6))
    tx_power_dbm: int = field(default=14, metadata=_doc("LoRa transmit power.", minimum=0))
    duty_cycle_pct: float = field(default=1.0, metadata=_doc(
        "LoRa duty-cycle budget in percent of each hour (EU868 g1: 1 %).", minimum=0.0))


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """The local SQLite store."""

    embedder: str = field(default="none", metadata=_doc(
        "Memory embeddings: `none` (callers supply vectors), `local` (all-MiniLM-L6-v2, 384 dimensions; the "
        "`local-embeddings` extra, see install-and-operate.md), `http`.",
        choices=("none", "local", "http")))
    embedder_url: str = field(default="", metadata=_doc("OpenAI-compatible embeddings endpoint for `http`."))
    embedder_model: str = field(default="text-embedding-3-small", metadata=_doc("Model name sent to `http`."))
    embedder_api_key: str = field(default="", metadata=_doc("Bearer key for the `http` embedder.", secret=True))
    embedding_dim: int = field(default=384, metadata=_doc(
        "Vector dimension of memory embeddings (recorded in the database; changing it later is refused).",
        minimum=1))
    vector_index: str = field(default="ivf", metadata=_doc(
        "Vector index: `ivf` (exact until 20k vectors, then partitioned with exact rescoring), `exact`, `binary`.",
        choices=("ivf", "exact", "binary")))
    integrity_check: str = field(default="full", metadata=_doc(
        "`PRAGMA integrity_check` at open: `full`, `quick` (faster on multi-GB stores) or `off`.",
        choices=("full", "quick", "off")))
    encrypt_payloads: bool = field(default=False, metadata=_doc(
        "Encrypt MAIF block payloads with AES-256-GCM (key in `<state_dir>/maif.key`, mode 0600)."))


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Store-and-forward uplink to the upstream ingest endpoint."""

    url: str = field(default="", metadata=_doc("Upstream ingest base URL; empty disables the uplink."))
    token: str = field(default="", metadata=_doc("Bearer token for the upstream.", secret=True))
    client_cert: str = field(default="", metadata=_doc("PEM client certificate for mTLS (optional)."))
    client_key: str = field(default="", metadata=_doc("PEM client key for mTLS (optional).", secret=True))
    interval_s: float = field(default=30.0, metadata=_doc("Period between sync runs.", minimum=0.1))
    batch_max_records: int = field(default=500, metadata=_doc("Records per batch at most.", minimum=1))
    batch_max_bytes: int = field(default=1_000_000, metadata=_doc("Bytes per batch at most.", minimum=1024))
    spool_max_bytes: int = field(default=512 * 1024 * 1024, metadata=_doc(
        "Disk cap of the spool; telemetry is dropped oldest-first beyond it.", minimum=1024))
    telemetry_max_age_s: float = field(default=7 * 86400.0, metadata=_doc(
        "Telemetry older than this is dropped unsent (counted).", minimum=1.0))
    events_max_age_s: float = field(default=30 * 86400.0, metadata=_doc(
        "Device events older than this are dropped unsent (counted).", minimum=1.0))
    ca_file: str = field(default="", metadata=_doc("PEM CA bundle for the upstream's TLS (empty: system CAs)."))
    request_timeout_s: float = field(default=30.0, metadata=_doc("Timeout of one upstream request.", minimum=0.1))
    backoff_initial_s: float = field(default=1.0, metadata=_doc("First retry delay after a failure.", minimum=0.01))
    backoff_max_s: float = field(default=300.0, metadata=_doc("Cap of the jittered retry backoff.", minimum=0.1))


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """TPM attestation of the node, verification of agents' and peers' quotes, and trust gates."""

    tcti: str = field(default="", metadata=_doc(
        "TPM TCTI (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, `tabrmd`); empty: `/dev/tpmrm0` if"
        " present, else a software key (trust capped at level 2); `none`: always the software key."))
    ek_kind: str = field(default="rsa2048", metadata=_doc(
        "Which endorsement key to use.", choices=("rsa2048", "ecc256", "ecc384")))
    ek_ca_bundle: str = field(default="", metadata=_doc(
        "PEM bundle of the CAs that EK certificates (this node's and agents') must chain to."))
    enrolled_ek_ids: str = field(default="", metadata=_doc(
        "Comma-separated `sha256:<hex>` ids of EKs trusted without a certificate."))
    pcr_selection: str = field(default="sha256:0-7", metadata=_doc("PCRs quoted, as `bank:list`."))
    event_log: str = field(default="", metadata=_doc(
        "Measured-boot event log replayed against the quoted PCRs (e.g. the kernel's binary_bios_measurements)."))
    require_tpm: bool = field(default=False, metadata=_doc("Refuse to start without a TPM."))
    attest_interval_s: float = field(default=300.0, metadata=_doc("Period of the node's self-attestation.",
                                                                  minimum=1.0))
    quote_max_age_s: float = field(default=900.0, metadata=_doc(
        "A level earned by a quote expires after this.", minimum=1.0))


@dataclass(frozen=True, slots=True)
class HubConfig:
    """The agent hub: registry, messages, handoffs, pools, policy, broker credentials and MCP."""

    enabled: bool = field(default=True, metadata=_doc("Run the agent hub (agents, messages, handoffs, pools)."))
    enrolment_tokens: str = field(default="", metadata=_doc(
        "Comma-separated tokens that let an agent register itself (besides the admin token).", secret=True))
    mosquitto_password_file: str = field(default="", metadata=_doc(
        "Mosquitto `password_file` the hub writes agents' credentials to; empty: broker auth not managed."))
    mosquitto_acl_file: str = field(default="", metadata=_doc(
        "Mosquitto `acl_file` the hub writes per-agent topic rights to."))
    mosquitto_pid_file: str = field(default="/run/mosquitto/mosquitto.pid", metadata=_doc(
        "PID file of the broker, sent SIGHUP to reload the two files."))
    mosquitto_dynsec: bool = field(default=False, metadata=_doc(
        "Provision agents' MQTT users and rights through Mosquitto's dynamic-security plugin (the daemon's MQTT"
        " user must be a dynsec admin) instead of password/ACL files; the way that works under the hardened"
        " unit."))
    jwks_path: str = field(default="", metadata=_doc(
        "JWKS (JSON) of the MAS identity provider; a JWT verified against it earns trust level 2."))
    jwt_issuer: str = field(default="", metadata=_doc("Expected JWT `iss` (empty: not checked)."))
    jwt_audience: str = field(default="", metadata=_doc("Expected JWT `aud` (empty: not checked)."))
    agent_rate_per_s: float = field(default=200.0, metadata=_doc("Requests per second per agent.", minimum=0.1))
    agent_burst: float = field(default=400.0, metadata=_doc("Burst size per agent.", minimum=1.0))
    session_rate_per_s: float = field(default=50.0, metadata=_doc("Requests per second per session.",
                                                                   minimum=0.1))
    session_burst: float = field(default=100.0, metadata=_doc("Burst size per session.", minimum=1.0))
    heartbeat_timeout_s: float = field(default=90.0, metadata=_doc(
        "An agent with no heartbeat for this long is offline.", minimum=1.0))
    trust_gates: str = field(default="", metadata=_doc(
        "Overrides of the trust level each operation needs, e.g. `read_sensitive=3,write_shared=4`."))
    mcp: bool = field(default=True, metadata=_doc("Serve the hub's operations as MCP tools at `/mcp`."))
    audit_messages: bool = field(default=False, metadata=_doc(
        "Audit every delivered message (refusals and dead letters are always audited)."))


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """mDNS announcement of the node and udev hot-plug of serial devices."""

    mdns: bool = field(default=True, metadata=_doc("Announce the node as `_mycoedge._tcp.local.` (zeroconf)."))
    mdns_interfaces: str = field(default="", metadata=_doc(
        "Comma-separated IPv4 addresses to announce on; empty: every interface."))
    hotplug: bool = field(default=True, metadata=_doc(
        "Follow udev: a device's `add` wakes its backing-off link at once; unknown ports are probed read-only."))


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Logging to stderr (the journal under systemd)."""

    level: str = field(default="INFO", metadata=_doc(
        "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")))
    json: bool = field(default=False, metadata=_doc("One JSON object per line instead of key=value text."))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    node: NodeConfig = field(default_factory=NodeConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    devices: tuple[DeviceConfig, ...] = ()
    store: StoreConfig = field(default_factory=StoreConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def admin_token_path(self) -> Path:
        return self.node.state_dir / "admin.token"

    @property
    def socket_path(self) -> Path:
        return self.node.runtime_dir / "api.sock"


SECTIONS: dict[str, type[Any]] = {
    "node": NodeConfig,
    "api": ApiConfig,
    "mqtt": MqttConfig,
    "store": StoreConfig,
    "sync": SyncConfig,
    "trust": TrustConfig,
    "hub": HubConfig,
    "discovery": DiscoveryConfig,
    "logging": LoggingConfig,
}
LIST_SECTIONS: dict[str, type[Any]] = {"devices": DeviceConfig}


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); raises ValueError with a readable reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1..65535")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host {host!r} is not an IP address or 'localhost'") from None
    return host, port


def parse_gates(text: str) -> dict[str, int]:
    """``name=level,...`` → ``{name: level}`` with levels 0..5 (ARCHITECTURE.md, "Trust")."""
    gates: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, level = item.partition("=")
        if not sep or not name.strip() or not level.strip().isdigit() or not 0 <= int(level) <= 5:
            raise ValueError(f"expected name=level with level 0..5, got {item!r}")
        gates[name.strip()] = int(level)
    return gates


def _field_type(cls: type[Any], f: dataclasses.Field[Any]) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _coerce(key: str, value: Any, expected: Any, meta: Mapping[str, Any], from_env: bool) -> Any:
    """Check one value against its declared type and constraints; returns the typed value."""
    if from_env and isinstance(value, str):
        value = _parse_env_value(key, value, expected)
    if expected is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {type(value).__name__} {value!r}")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {type(value).__name__} {value!r}")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {type(value).__name__} {value!r}")
        value = float(value)
    elif expected is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__} {value!r}")
    elif expected is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a non-empty path string, got {value!r}")
        value = Path(value)
    else:  # pragma: no cover - the schema uses only the types above
        raise TypeError(f"unsupported config type {expected!r} for {key}")
    if meta.get("port") and not 1 <= value <= 65535:
        raise ValueError(f"must be a TCP port in 1..65535, got {value}")
    minimum = meta.get("minimum")
    if minimum is not None and value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def _parse_env_value(key: str, text: str, expected: Any) -> Any:
    if expected is bool:
        lowered = text.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        return text
    if expected is int:
        try:
            return int(text)
        except ValueError:
            return text
    if expected is float:
        try:
            return float(text)
        except ValueError:
            return text
    return text


def _build_section(
    name: str, cls: type[Any], raw: Any, problems: list[tuple[str, str]], env_keys: set[str]
) -> Any:
    if not isinstance(raw, Mapping):
        problems.append((name, f"must be a table, got {type(raw).__name__}"))
        return cls()
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{name}.{key}"
        if key not in known:
            problems.append((full, f"unknown key (known: {', '.join(sorted(known))})"))
            continue
        f = known[key]
        try:
            values[key] = _coerce(full, value, _field_type(cls, f), f.metadata, full in env_keys)
        except ValueError as exc:
            problems.append((full, str(exc)))
    for key, f in known.items():
        if f.metadata.get("required") and key not in raw:
            problems.append((f"{name}.{key}", "is required"))
    if name == "hub" and values.get("trust_gates"):
        try:
            parse_gates(values["trust_gates"])
        except ValueError as exc:
            problems.append(("hub.trust_gates", str(exc)))
    if name == "api" and "listen" in values and values["listen"]:
        try:
            parse_listen(values["listen"])
        except ValueError as exc:
            problems.append(("api.listen", str(exc)))
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - unknown keys were filtered above
        problems.append((name, str(exc)))
        return cls()


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            # Arrays of tables (devices) are replaced, not appended: a drop-in that lists devices owns
            # the list, which is what an operator expects from "the last file wins".
            merged[key] = value
    return merged


def _read_toml(path: Path, problems: list[tuple[str, str]]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append((str(path), "file not found"))
    except PermissionError:
        problems.append((str(path), "permission denied"))
    except tomllib.TOMLDecodeError as exc:
        problems.append((str(path), f"not valid TOML: {exc}"))
    return {}


def _env_overrides(
    environ: Mapping[str, str], problems: list[tuple[str, str]]
) -> tuple[dict[str, Any], set[str]]:
    """``MYCOEDGE_<SECTION>_<KEY>=value``: section names have no underscore, so the first one splits."""
    overlay: dict[str, Any] = {}
    keys: set[str] = set()
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in _ENV_RESERVED:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section not in SECTIONS:
            if section in LIST_SECTIONS:
                problems.append((name, "device lists cannot be set from the environment"))
            continue  # another tool's MYCOEDGE_* variable; not ours to refuse
        if not key:
            problems.append((name, "names no key"))
            continue
        overlay.setdefault(section, {})[key] = value
        keys.add(f"{section}.{key}")
    return overlay, keys


def load(path: Path | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate; raises ``ConfigError`` listing every problem by key.

    A missing default file is not an error (the embedded defaults apply); a missing file the operator
    named explicitly is.
    """
    problems: list[tuple[str, str]] = []
    environ = os.environ if environ is None else environ
    explicit = path is not None or "MYCOEDGE_CONFIG" in environ
    path = path or Path(environ.get("MYCOEDGE_CONFIG", str(DEFAULT_CONFIG_PATH)))
    raw: dict[str, Any] = {}
    if path.exists() or explicit:
        raw = _read_toml(path, problems)
        dropins = path.parent / "conf.d"
        if dropins.is_dir():
            for dropin in sorted(dropins.glob("*.toml")):
                raw = _deep_merge(raw, _read_toml(dropin, problems))
    env_overlay, env_keys = _env_overrides(environ, problems)
    raw = _deep_merge(raw, env_overlay)
    config = from_mapping(raw, problems, env_keys)
    if problems:
        raise ConfigError(problems)
    return config


def from_mapping(
    raw: Mapping[str, Any], problems: list[tuple[str, str]] | None = None, env_keys: set[str] | None = None
) -> Config:
    """Validate an already-merged mapping; collects into ``problems`` when given, else raises."""
    own_problems: list[tuple[str, str]] = [] if problems is None else problems
    env_keys = env_keys or set()
    sections: dict[str, Any] = {}
    for key in raw:
        if key not in SECTIONS and key not in LIST_SECTIONS:
            own_problems.append((key, f"unknown section (known: {', '.join([*SECTIONS, *LIST_SECTIONS])})"))
    for name, cls in SECTIONS.items():
        if name in raw:
            sections[name] = _build_section(name, cls, raw[name], own_problems, env_keys)
    devices: list[DeviceConfig] = []
    raw_devices = raw.get("devices", [])
    if not isinstance(raw_devices, list):
        own_problems.append(("devices", "must be an array of tables ([[devices]])"))
        raw_devices = []
    for index, entry in enumerate(raw_devices):
        devices.append(_build_section(f"devices[{index}]", DeviceConfig, entry, own_problems, env_keys))
    ports = [d.port for d in devices if d.port]
    for port in {p for p in ports if ports.count(p) > 1}:
        own_problems.append(("devices", f"port {port} is listed more than once"))
    config = Config(**sections, devices=tuple(devices))
    if problems is None and own_problems:
        raise ConfigError(own_problems)
    return config


def to_mapping(config: Config, *, redact: bool = True) -> dict[str, Any]:
    """The merged configuration as plain data (secrets masked), for ``mycoedge config check``."""

    def section(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, Path):
                value = str(value)
            if redact and f.metadata.get("secret") and value:
                value = "***"
            out[f.name] = value
        return out

    result: dict[str, Any] = {name: section(getattr(config, name)) for name in SECTIONS}
    result["devices"] = [section(d) for d in config.devices]
    return result
