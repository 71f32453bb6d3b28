"""Settings: one TOML file plus environment overrides, parsed into one frozen object.

The file is ``coffre.toml`` in the data folder (``coffre init --data DIR`` writes a
commented default). Any key may be overridden by an environment variable named
``COFFRE_<SECTION>_<KEY>`` in upper case, e.g. ``COFFRE_DICOM_PORT=11112``.

This module never reads the environment itself: the CLI passes ``os.environ`` in.
Every key is documented in ``docs/configuration.md``; ``DEFAULT_TOML`` below is what
``coffre init`` writes and is the reference for the defaults.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coffre.errors import ConfigurationError

SETTINGS_FILE = "coffre.toml"
ENV_PREFIX = "COFFRE_"


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    #: Called AE title of the archive; associations to another title are rejected.
    ae_title: str = "COFFRE"


@dataclass(frozen=True, slots=True)
class DicomSettings:
    host: str = "127.0.0.1"
    port: int = 11112
    #: Maximum PDU length we accept (PS3.8 9.3.1); 0 means unlimited (not advised).
    max_pdu: int = 262_144
    max_associations: int = 32
    #: Seconds without traffic before an association is aborted.
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    #: Refuse associations whose peer address does not resolve from the node's host.
    verify_peer_host: bool = True
    #: Processes serving DIMSE associations on ``port``; 1 = the serve process alone. With
    #: more, the serve process accepts and hands connections out in turn (``net.workers``).
    workers: int = 1


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8042
    #: Base path of the DICOMweb services (PS3.18).
    dicomweb_base: str = "/dicomweb"
    #: Origins allowed by CORS, comma-separated ("" = none, "*" = any).
    cors_origins: str = ""
    #: Largest STOW-RS request body, bytes (413 beyond, without reading it whole).
    max_request_bytes: int = 4 * 1024**3
    #: Most parts in one multipart request.
    max_parts: int = 10_000
    #: Largest header block of one multipart part, bytes.
    max_part_header_bytes: int = 16_384
    #: QIDO-RS results per page when the request gives no limit, and the most it may ask.
    qido_default_limit: int = 100
    qido_max_limit: int = 1000


@dataclass(frozen=True, slots=True)
class IndexSettings:
    #: SQLAlchemy URL; empty means SQLite at ``DATA/index.sqlite3``.
    url: str = ""
    #: SQLite busy timeout in milliseconds.
    sqlite_busy_timeout_ms: int = 30_000
    pool_size: int = 10


@dataclass(frozen=True, slots=True)
class StorageSettings:
    #: ``filesystem`` is the only persistent backend of this version.
    backend: str = "filesystem"
    #: Folder for the filesystem backend; empty means ``DATA/blobs``.
    path: str = ""
    #: fsync every blob and its folder before acknowledging (never turn off in production).
    fsync: bool = True


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    #: Largest encoded object accepted, bytes (C-STORE dataset, imported file).
    max_object_bytes: int = 2 * 1024**3
    #: Largest inflated size of a deflated transfer syntax dataset, bytes.
    max_inflated_bytes: int = 256 * 1024**2
    #: Deepest sequence nesting accepted.
    max_sequence_depth: int = 12
    #: Largest single non-pixel element value, bytes.
    max_element_bytes: int = 64 * 1024**2
    #: Elements larger than this are left out of the stored DICOM JSON (bulk data).
    bulk_data_threshold: int = 4096
    #: Most matches one C-FIND returns; past it the query ends with status 0xA700.
    max_query_results: int = 10_000
    #: Largest decoded pixel data a transcoding may produce, bytes.
    max_decoded_bytes: int = 1024**3


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    #: Lifetime of the access tokens Coffre signs for built-in users, seconds.
    token_ttl_seconds: int = 900
    #: PEM private key (Ed25519) signing those tokens; empty means DATA/secrets/token-signing-key.pem,
    #: created on first use with mode 0600.
    signing_key_file: str = ""
    #: "iss" and "aud" of the tokens Coffre signs.
    token_issuer: str = "coffre"  # noqa: S105 - a claim value, not a secret
    token_audience: str = "coffre"  # noqa: S105 - a claim value, not a secret
    #: An OpenID Connect provider whose access tokens are accepted ("" = none).
    oidc_issuer: str = ""
    oidc_audience: str = ""
    #: Its JWKS document (keys by "kid"); fetched at first use and cached.
    oidc_jwks_url: str = ""
    oidc_jwks_cache_seconds: int = 300
    #: Signature algorithms accepted from the provider, comma-separated (never "none" or HS*).
    oidc_algorithms: str = "RS256,ES256"
    #: Claims holding the user name, the roles (list) and the facility slugs (list).
    oidc_username_claim: str = "preferred_username"
    oidc_roles_claim: str = "roles"
    oidc_facilities_claim: str = "facilities"
    #: The portal's client at the provider (authorization code + PKCE); empty id: oidc_audience.
    oidc_client_id: str = ""
    #: Empty for a public client.
    oidc_client_secret: str = ""
    #: Empty: <origin of the request>/portal/oidc/callback.
    oidc_redirect_uri: str = ""
    oidc_scopes: str = "openid profile"
    #: Shown on the sign-in button; empty: the issuer's host name.
    oidc_provider_name: str = ""
    #: How long a token revocation may take to reach every process, seconds (≤ 10).
    revocation_cache_seconds: float = 5.0
    #: Wrong passwords in a row before a built-in user is locked, and for how long.
    max_failed_logins: int = 5
    lockout_seconds: int = 900


@dataclass(frozen=True, slots=True)
class TerritorySettings:
    #: "grant-required": another facility's data needs a grant; "shared": the territory's
    #: care teams see each other's data unless the person opposed sharing.
    policy: str = "grant-required"
    #: Duration of a break-the-glass access, minutes.
    break_glass_minutes: int = 240
    #: Longest care relationship a clinician may record, days.
    care_relationship_max_days: int = 365
    #: Default duration of a reading assignment, days.
    reading_assignment_days: int = 30
    #: Longest life of a share link, days, and of a recipient's session once the code is
    #: given, minutes.
    share_link_max_days: int = 30
    share_session_minutes: int = 60


@dataclass(frozen=True, slots=True)
class TlsSettings:
    #: Run a DICOM TLS listener (PS3.15 B.9 / B.12) beside the plain one.
    enabled: bool = False
    port: int = 2762
    #: PEM certificate chain and private key of the archive.
    certificate: str = ""
    private_key: str = ""
    #: PEM bundle of the CAs that issue the nodes' client certificates.
    ca_certificates: str = ""
    #: Lowest TLS version accepted: "1.2" or "1.3".
    min_version: str = "1.2"


@dataclass(frozen=True, slots=True)
class AuditSettings:
    #: External audit repository (DICOM PS3.15 A.5 messages over syslog, RFC 5424); "" = none.
    syslog_host: str = ""
    syslog_port: int = 6514
    #: "tls" (RFC 5425), "tcp" (RFC 6587 octet counting) or "udp" (RFC 5426).
    syslog_transport: str = "tls"
    #: PEM CA bundle to verify the repository's certificate ("" = the system's).
    syslog_ca: str = ""
    #: Seconds between two attempts to drain the spool.
    syslog_interval_seconds: float = 2.0
    #: AuditSourceID and AuditEnterpriseSiteID of the messages (PS3.15 A.5.1).
    source_id: str = "COFFRE"
    enterprise_site_id: str = ""


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    territory: TerritorySettings = field(default_factory=TerritorySettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)

    @property
    def signing_key_path(self) -> Path:
        if self.security.signing_key_file:
            return Path(self.security.signing_key_file)
        return self.data_dir / "secrets" / "token-signing-key.pem"

    @property
    def index_url(self) -> str:
        if self.index.url:
            return self.index.url
        return f"sqlite:///{self.data_dir / 'index.sqlite3'}"

    @property
    def blob_path(self) -> Path:
        return Path(self.storage.path) if self.storage.path else self.data_dir / "blobs"


_SECTIONS: dict[str, type[Any]] = {
    "archive": ArchiveSettings,
    "dicom": DicomSettings,
    "http": HttpSettings,
    "index": IndexSettings,
    "storage": StorageSettings,
    "limits": LimitsSettings,
    "security": SecuritySettings,
    "territory": TerritorySettings,
    "tls": TlsSettings,
    "audit": AuditSettings,
}


_ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce(section: str, key: str, raw: Any, target: Any) -> Any:
    where = f"[{section}] {key}"
    if target is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ConfigurationError(f"{where} must be true or false")
    if target is int:
        if isinstance(raw, bool | float):
            raise ConfigurationError(f"{where} must be an integer")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{where} must be an integer") from None
    if target is float:
        if isinstance(raw, bool):
            raise ConfigurationError(f"{where} must be a number")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigurationError(f"{where} must be a number") from None
        if not math.isfinite(value):
            raise ConfigurationError(f"{where} must be a finite number")
        return value
    if not isinstance(raw, str):
        raise ConfigurationError(f"{where} must be a string")
    return raw


def _build_section(section: str, values: Mapping[str, Any]) -> Any:
    cls = _SECTIONS[section]
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in types:
            raise ConfigurationError(f"unknown setting [{section}] {key}")
        target = {"bool": bool, "int": int, "float": float, "str": str}[str(types[key])]
        kwargs[key] = _coerce(section, key, raw, target)
    obj = cls(**kwargs)
    _validate(section, obj)
    return obj


def _validate(section: str, obj: Any) -> None:
    if section == "archive":
        title = obj.ae_title
        printable = all(0x20 <= ord(c) < 0x7F for c in title)
        if not 0 < len(title) <= 16 or not printable or "\\" in title or title != title.strip():
            raise ConfigurationError("[archive] ae_title must be 1-16 printable ASCII characters (PS3.5 6.2)")
    if section in {"dicom", "http"} and not 0 <= obj.port <= 65535:
        raise ConfigurationError(f"[{section}] port must be 0-65535")
    if section == "http":
        base = obj.dicomweb_base
        if not base.startswith("/") or base.endswith("/") or not all(c.isalnum() or c in "/-_" for c in base):
            raise ConfigurationError("[http] dicomweb_base must be a path like /dicomweb")
        numbers = ("max_request_bytes", "max_parts", "max_part_header_bytes", "qido_default_limit", "qido_max_limit")
        if any(getattr(obj, n) <= 0 for n in numbers) or obj.qido_default_limit > obj.qido_max_limit:
            raise ConfigurationError("[http] sizes and limits must be positive, default ≤ max")
    if section == "dicom" and min(obj.network_timeout, obj.acse_timeout, obj.dimse_timeout, obj.max_pdu) < 0:
        raise ConfigurationError("[dicom] timeouts and max_pdu must not be negative")
    if section == "dicom" and not 1 <= obj.workers <= 64:
        raise ConfigurationError("[dicom] workers must be 1-64")
    if section == "storage" and obj.backend != "filesystem":
        raise ConfigurationError("[storage] backend must be 'filesystem'")
    if section == "security":
        algorithms = {a.strip() for a in obj.oidc_algorithms.split(",") if a.strip()}
        if not algorithms or not algorithms <= _ASYMMETRIC:
            raise ConfigurationError(f"[security] oidc_algorithms must be among {', '.join(sorted(_ASYMMETRIC))}")
        if obj.token_ttl_seconds <= 0 or not 0 <= obj.revocation_cache_seconds <= 10:
            raise ConfigurationError("[security] token_ttl_seconds > 0 and revocation_cache_seconds 0-10")
        if obj.max_failed_logins <= 0 or obj.lockout_seconds <= 0 or obj.oidc_jwks_cache_seconds <= 0:
            raise ConfigurationError("[security] login limits and caches must be positive")
        if bool(obj.oidc_issuer) != bool(obj.oidc_jwks_url) or (obj.oidc_issuer and not obj.oidc_audience):
            raise ConfigurationError("[security] oidc_issuer, oidc_audience and oidc_jwks_url go together")
    if section == "territory":
        if obj.policy not in {"grant-required", "shared"}:
            raise ConfigurationError("[territory] policy must be 'grant-required' or 'shared'")
        for name in ("break_glass_minutes", "care_relationship_max_days", "reading_assignment_days",
                     "share_link_max_days", "share_session_minutes"):
            if getattr(obj, name) <= 0:
                raise ConfigurationError(f"[territory] {name} must be positive")
    if section == "tls":
        if obj.min_version not in {"1.2", "1.3"}:
            raise ConfigurationError("[tls] min_version must be '1.2' or '1.3'")
        if not 0 <= obj.port <= 65535:
            raise ConfigurationError("[tls] port must be 0-65535")
        if obj.enabled and not (obj.certificate and obj.private_key and obj.ca_certificates):
            raise ConfigurationError("[tls] enabled needs certificate, private_key and ca_certificates")
    if section == "audit":
        if obj.syslog_transport not in {"tls", "tcp", "udp"}:
            raise ConfigurationError("[audit] syslog_transport must be tls, tcp or udp")
        if not 0 <= obj.syslog_port <= 65535 or obj.syslog_interval_seconds <= 0:
            raise ConfigurationError("[audit] syslog_port 0-65535 and a positive interval")
    if section == "limits":
        for f in dataclasses.fields(obj):
            if getattr(obj, f.name) <= 0:
                raise ConfigurationError(f"[limits] {f.name} must be positive")


def load_settings(data_dir: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``DATA/coffre.toml`` (if present) and apply ``COFFRE_*`` overrides."""
    data_dir = Path(data_dir).resolve()
    values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    path = data_dir / SETTINGS_FILE
    if path.exists():
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{path}: {exc}") from None
        for section, table in document.items():
            if section not in _SECTIONS or not isinstance(table, dict):
                raise ConfigurationError(f"{path}: unknown section [{section}]")
            values[section].update(table)
    for name, raw in (environ or {}).items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                values[section][rest[len(section) + 1 :]] = raw
                break
        else:
            raise ConfigurationError(f"environment variable {name}: unknown settings section")
    sections = {name: _build_section(name, table) for name, table in values.items()}
    return Settings(data_dir=data_dir, **sections)


DEFAULT_TOML = """\
# Coffre settings. Every key is optional; the values below are the defaults.
# Any key can be overridden by an environment variable COFFRE_<SECTION>_<KEY>,
# for example COFFRE_DICOM_PORT=104. See docs/configuration.md.

[archive]
# Called AE title of the archive (PS3.5 6.2, 1-16 characters). Associations
# addressed to another title are rejected (reason 7, called AE title not recognised).
ae_title = "COFFRE"

[dicom]
# DIMSE listener (C-ECHO, C-STORE).
host = "127.0.0.1"
port = 11112
# Maximum PDU length the archive receives, in bytes (PS3.8 9.3.1).
max_pdu = 262144
max_associations = 32
# Seconds: idle network, association negotiation, DIMSE message.
network_timeout = 60.0
acse_timeout = 30.0
dimse_timeout = 60.0
# Refuse an association whose peer address is not the registered node's host.
verify_peer_host = true
# Processes serving associations on the DICOM port. 1 = the serve process alone; the
# number of cores spreads concurrent senders over them (connections handed out in turn).
workers = 1

[http]
# HTTP server: health check and DICOMweb (PS3.18).
host = "127.0.0.1"
port = 8042
# Base path of STOW-RS, QIDO-RS, WADO-RS and WADO-URI.
dicomweb_base = "/dicomweb"
# Origins allowed by CORS, comma-separated ("" = none, "*" = any), e.g. for a viewer
# served from another origin.
cors_origins = ""
# Largest STOW-RS request body, bytes; larger requests get 413 without being read.
max_request_bytes = 4294967296
# Most parts in one multipart request, and the largest header block of a part.
max_parts = 10000
max_part_header_bytes = 16384
# QIDO-RS page size when no limit is given, and the largest limit a client may ask.
qido_default_limit = 100
qido_max_limit = 1000

[index]
# SQLAlchemy URL. Empty: SQLite in DATA/index.sqlite3.
# PostgreSQL: "postgresql+psycopg://user:password@host:5432/coffre"
url = ""
sqlite_busy_timeout_ms = 30000
pool_size = 10

[storage]
# Blob store backend: "filesystem".
backend = "filesystem"
# Folder of the filesystem backend. Empty: DATA/blobs.
path = ""
# fsync each blob and its folder before acknowledging. Never disable in production.
fsync = true

[limits]
# Largest object accepted (C-STORE dataset or imported file), bytes.
max_object_bytes = 2147483648
# Largest inflated size of a Deflated Explicit VR Little Endian dataset, bytes.
max_inflated_bytes = 268435456
# Deepest nesting of sequences.
max_sequence_depth = 12
# Largest single element value other than pixel data, bytes.
max_element_bytes = 67108864
# Elements longer than this are kept out of the stored DICOM JSON (served as bulk data).
bulk_data_threshold = 4096
# Most matches one C-FIND returns; past it the query ends with status 0xA700.
max_query_results = 10000
# Largest decoded pixel data a transcoding on retrieve may produce, bytes.
max_decoded_bytes = 1073741824

[security]
# Access tokens Coffre signs for its built-in users: lifetime in seconds, signing key
# (Ed25519 PEM; empty: DATA/secrets/token-signing-key.pem, created with mode 0600),
# and their "iss" and "aud" claims.
token_ttl_seconds = 900
signing_key_file = ""
token_issuer = "coffre"
token_audience = "coffre"
# An OpenID Connect provider (e.g. Keycloak) whose access tokens are accepted.
# Empty: none. Issuer, audience and JWKS URL go together.
oidc_issuer = ""
oidc_audience = ""
oidc_jwks_url = ""
oidc_jwks_cache_seconds = 300
# Accepted signature algorithms (asymmetric only: never "none" or HS256).
oidc_algorithms = "RS256,ES256"
# Claims holding the user name, the roles and the facility slugs.
oidc_username_claim = "preferred_username"
oidc_roles_claim = "roles"
oidc_facilities_claim = "facilities"
# The portal's sign-in with the provider (authorization code + PKCE): client id (empty:
# oidc_audience), secret (empty: a public client), redirect URI (empty:
# <origin>/portal/oidc/callback), scopes, and the name on the sign-in button.
oidc_client_id = ""
oidc_client_secret = ""
oidc_redirect_uri = ""
oidc_scopes = "openid profile"
oidc_provider_name = ""
# A revoked token is refused everywhere within this many seconds (at most 10).
revocation_cache_seconds = 5.0
# Wrong passwords in a row before a built-in user is locked, and for how long (s).
max_failed_logins = 5
lockout_seconds = 900

[territory]
# "grant-required": another facility's data needs a grant (care relationship, reading
# assignment, share link, break-the-glass). "shared": care teams of the territory see
# each other's data unless the person opposed sharing.
policy = "grant-required"
# Break-the-glass access duration (minutes), longest care relationship (days),
# default reading assignment (days).
break_glass_minutes = 240
care_relationship_max_days = 365
reading_assignment_days = 30
# Longest life of a share link (days) and of a recipient's session after the access
# code was given (minutes).
share_link_max_days = 30
share_session_minutes = 60

[tls]
# DICOM TLS listener (PS3.15 B.9 / B.12), beside the plain one. Nodes present a client
# certificate issued by one of ca_certificates and bound to the node.
enabled = false
port = 2762
certificate = ""
private_key = ""
ca_certificates = ""
# Lowest TLS version: "1.2" or "1.3".
min_version = "1.2"

[audit]
# External audit repository: DICOM PS3.15 A.5 audit messages over syslog (RFC 5424),
# sent from a durable spool (the audit table itself). Empty host: no export.
syslog_host = ""
syslog_port = 6514
# "tls" (RFC 5425), "tcp" (RFC 6587) or "udp" (RFC 5426).
syslog_transport = "tls"
syslog_ca = ""
syslog_interval_seconds = 2.0
# AuditSourceID and AuditEnterpriseSiteID of the messages.
source_id = "COFFRE"
enterprise_site_id = ""
"""
