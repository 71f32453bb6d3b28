"""DICOM audit messages (PS3.15 A.5) from Coffre's audit events. Pure: no IO.

One table (:data:`ACTIONS`, then :data:`PREFIXES`) maps each action string that the
services record to an Event ID of DCID 400 (PS3.16), an Event Action Code and, where
the family has one, an Event Type Code (DCID 401 User Authentication, DCID 403 Security
Alert types, DCID 402 Application Activity). Unknown actions are Application Activity.

The XML follows the DICOM Audit Message Schema (PS3.15 A.5.1): coded values carry
``csd-code``, ``codeSystemName`` and ``originalText``. Patients appear by the
territory's person id only (``ParticipantObjectIDTypeCode`` RFC-3881 "2" Patient
Number, CX ``ID^^^AUTHORITY``), never by name. Every message also names the audit
record it came from (``urn:coffre:audit:SOURCE:ID``) with the record's chain hash as a
``ParticipantObjectDetail``, so the repository holds the anchor of the hash chain.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value: (code, coding scheme, meaning)."""

    code: str
    scheme: str
    meaning: str


# DCID 400 Audit Event ID
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
AUDIT_LOG_USED = Code("110101", "DCM", "Audit Log Used")
INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DCM", "DICOM Study Deleted")
EXPORT = Code("110106", "DCM", "Export")
IMPORT = Code("110107", "DCM", "Import")
PATIENT_RECORD = Code("110110", "DCM", "Patient Record")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")

# Event Type Codes: DCID 402 (application activity), 401 (authentication), 403 (security alert)
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = Code("110127", "DCM", "Emergency Override Started")
SECURITY_CONFIGURATION = Code("110129", "DCM", "Security Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
OBJECT_SECURITY_ATTRIBUTES_CHANGED = Code("110135", "DCM", "Object Security Attributes Changed")
SECURITY_ROLES_CHANGED = Code("110136", "DCM", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "DCM", "User security Attributes Changed")

# Active participant roles (DCID 402) and participant object id types
ROLE_APPLICATION = Code("110150", "DCM", "Application")
ROLE_DESTINATION = Code("110152", "DCM", "Destination Role ID")
ROLE_SOURCE = Code("110153", "DCM", "Source Role ID")
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
NODE_ID = Code("110182", "DCM", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")
#: PS3.4 C.6 Query/Retrieve FIND SOP Classes, the id type of a query participant
FIND_SOP_CLASS = {
    "patient-root": Code("1.2.840.10008.5.1.4.1.2.1.1", "DCM", "Patient Root Query/Retrieve Information Model - FIND"),
    "study-root": Code("1.2.840.10008.5.1.4.1.2.2.1", "DCM", "Study Root Query/Retrieve Information Model - FIND"),
}
#: HL7 ActReason (PurposeOfUse) for the grant behind an access
PURPOSE = {
    "break-glass": Code("ETREAT", "2.16.840.1.113883.5.8", "Emergency Treatment"),
    "care": Code("TREAT", "2.16.840.1.113883.5.8", "Treatment"),
    "reading": Code("TREAT", "2.16.840.1.113883.5.8", "Treatment"),
    "own": Code("TREAT", "2.16.840.1.113883.5.8", "Treatment"),
    "shared": Code("TREAT", "2.16.840.1.113883.5.8", "Treatment"),
}
#: private coding scheme of Coffre's own codes (user roles, object kinds)
LOCAL_SCHEME = "99COFFRE"


@dataclass(frozen=True, slots=True)
class EventKind:
    """What an action is in DICOM terms."""

    event_id: Code
    #: EventActionCode: C create, R read, U update, D delete, E execute
    action_code: str
    type_code: Code | None = None


_TRANSFER = EventKind(INSTANCES_TRANSFERRED, "R")
_ACCESS = EventKind(INSTANCES_ACCESSED, "R")
_GRANT = EventKind(SECURITY_ALERT, "C", OBJECT_SECURITY_ATTRIBUTES_CHANGED)
_CONFIG = EventKind(SECURITY_ALERT, "U", SECURITY_CONFIGURATION)
_AUDIT = EventKind(AUDIT_LOG_USED, "R")
_PATIENT = EventKind(PATIENT_RECORD, "U")
_PATIENT_READ = EventKind(PATIENT_RECORD, "R")
_USER = EventKind(SECURITY_ALERT, "U", USER_SECURITY_ATTRIBUTES_CHANGED)
DEFAULT = EventKind(APPLICATION_ACTIVITY, "E")

#: exact action strings recorded by the services (docs/audit.md has the same table)
ACTIONS: dict[str, EventKind] = {
    "store": EventKind(INSTANCES_TRANSFERRED, "C"),
    "query": EventKind(QUERY, "E"),
    "move": _TRANSFER,
    "get": _TRANSFER,
    "wado-rs": _TRANSFER,
    "wado-uri": _TRANSFER,
    "wado-rs-metadata": _ACCESS,
    "wado-rs-frames": _ACCESS,
    "wado-rs-bulkdata": _ACCESS,
    "wado-rs-rendered": _ACCESS,
    "wado-rs-thumbnail": _ACCESS,
    "viewer": _ACCESS,
    "association": EventKind(SECURITY_ALERT, "E", NODE_AUTHENTICATION),
    "authenticate": EventKind(USER_AUTHENTICATION, "E", LOGIN),
    "login": EventKind(USER_AUTHENTICATION, "E", LOGIN),
    "logout": EventKind(USER_AUTHENTICATION, "E", LOGOUT),
    "break-glass": EventKind(SECURITY_ALERT, "E", EMERGENCY_OVERRIDE_STARTED),
    "break-glass-reviewed": EventKind(SECURITY_ALERT, "U", OBJECT_SECURITY_ATTRIBUTES_CHANGED),
    "grant-care": _GRANT,
    "grant-reading": _GRANT,
    "grant-share": _GRANT,
    "share": _GRANT,
    "grant-revoked": EventKind(SECURITY_ALERT, "D", OBJECT_SECURITY_ATTRIBUTES_CHANGED),
    "opposition": _PATIENT,
    "opposition-withdrawn": _PATIENT,
    "identity-link": _PATIENT,
    "identity-unlink": _PATIENT,
    "person-merge": _PATIENT,
    "person-split": _PATIENT,
    "person-search": _PATIENT_READ,
    "person-list": _PATIENT_READ,
    "person-read": _PATIENT_READ,
    "person-history": _PATIENT_READ,
    "reconciliation-list": _PATIENT_READ,
    "timeline": _PATIENT_READ,
    "share-open": EventKind(USER_AUTHENTICATION, "E", LOGIN),
    "share-code-refused": EventKind(USER_AUTHENTICATION, "E", LOGIN),
    "share-locked": EventKind(SECURITY_ALERT, "E", USE_OF_RESTRICTED_FUNCTION),
    "share-view": _ACCESS,
    "share-download": EventKind(EXPORT, "R"),
    "token-create": EventKind(SECURITY_ALERT, "C", USER_SECURITY_ATTRIBUTES_CHANGED),
    "token-revoke": EventKind(SECURITY_ALERT, "D", USER_SECURITY_ATTRIBUTES_CHANGED),
    "token-revoked": EventKind(SECURITY_ALERT, "D", USER_SECURITY_ATTRIBUTES_CHANGED),
    "token-issue": EventKind(SECURITY_ALERT, "C", USER_SECURITY_ATTRIBUTES_CHANGED),
    "user-create": EventKind(SECURITY_ALERT, "C", USER_SECURITY_ATTRIBUTES_CHANGED),
    "user-password": _USER,
    "user-roles": EventKind(SECURITY_ALERT, "U", SECURITY_ROLES_CHANGED),
    "user-facilities": EventKind(SECURITY_ALERT, "U", SECURITY_ROLES_CHANGED),
    "user-disable": _USER,
    "user-enable": _USER,
    "user-tokens-revoke": EventKind(SECURITY_ALERT, "D", USER_SECURITY_ATTRIBUTES_CHANGED),
    "facility-add": EventKind(SECURITY_ALERT, "C", SECURITY_CONFIGURATION),
    "node-add": EventKind(SECURITY_ALERT, "C", SECURITY_CONFIGURATION),
    "node-remove": EventKind(SECURITY_ALERT, "D", SECURITY_CONFIGURATION),
    "node-bind-certificate": _CONFIG,
    "node-unbind-certificate": _CONFIG,
    "facility-require-tls": _CONFIG,
    "check": DEFAULT,
    "application-start": EventKind(APPLICATION_ACTIVITY, "E", APPLICATION_START),
    "application-stop": EventKind(APPLICATION_ACTIVITY, "E", APPLICATION_STOP),
    "study-delete": EventKind(STUDY_DELETED, "D"),
    "export": EventKind(EXPORT, "R"),
    "import": EventKind(IMPORT, "C"),
}

#: families of actions by prefix, for action strings not in :data:`ACTIONS` (first match)
PREFIXES: tuple[tuple[str, EventKind], ...] = (
    ("audit-", _AUDIT),
    ("wado-", _ACCESS),
    ("grant-", _GRANT),
    ("break-glass", EventKind(SECURITY_ALERT, "U", OBJECT_SECURITY_ATTRIBUTES_CHANGED)),
    ("share-", EventKind(EXPORT, "R")),
    ("export-", EventKind(EXPORT, "R")),
    ("login", EventKind(USER_AUTHENTICATION, "E", LOGIN)),
    ("logout", EventKind(USER_AUTHENTICATION, "E", LOGOUT)),
    ("user-role", EventKind(SECURITY_ALERT, "U", SECURITY_ROLES_CHANGED)),
    ("role-", EventKind(SECURITY_ALERT, "U", SECURITY_ROLES_CHANGED)),
    ("user-", _USER),
    ("password", _USER),
    ("token-", _USER),
    ("person-search", _PATIENT_READ),
    ("person-list", _PATIENT_READ),
    ("person-read", _PATIENT_READ),
    ("person-", _PATIENT),
    ("identity-", _PATIENT),
    ("reconcil", _PATIENT),
    ("link", _PATIENT),
    ("unlink", _PATIENT),
    ("merge", _PATIENT),
    ("split", _PATIENT),
    ("ins", _PATIENT),
    ("opposition", _PATIENT),
    ("facility-", _CONFIG),
    ("node-", _CONFIG),
    ("tls-", _CONFIG),
    ("study-delete", EventKind(STUDY_DELETED, "D")),
    ("delete", EventKind(STUDY_DELETED, "D")),
)

#: EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure, 12 major failure
OUTCOMES: dict[str, str] = {
    "success": "0", "no-match": "0", "alert": "0", "duplicate": "0",
    "refused": "4", "denied": "4", "invalid": "4", "locked": "4", "partial": "4",
    "failure": "8", "error": "8",
    "aborted": "12", "unavailable": "12",
}


class Event(Protocol):
    """What a message is built from (``index.audit.AuditRow`` has these fields)."""

    @property
    def id(self) -> int: ...
    @property
    def at(self) -> datetime: ...
    @property
    def action(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def actor_kind(self) -> str: ...
    @property
    def actor_name(self) -> str: ...
    @property
    def actor_address(self) -> str: ...
    @property
    def object_type(self) -> str: ...
    @property
    def object_id(self) -> str: ...
    @property
    def person_id(self) -> int | None: ...
    @property
    def detail(self) -> Mapping[str, Any]: ...
    @property
    def hash(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Source:
    """The archive as the audit source and as an active participant."""

    #: AuditSourceID (settings ``[audit] source_id``), also the authority of person ids
    source_id: str
    #: AuditEnterpriseSiteID ("" = omitted)
    enterprise_site_id: str = ""
    #: the archive's AE title and host name
    ae_title: str = "COFFRE"
    hostname: str = ""
    process_id: str = ""


class MessageTooLarge(ValueError):
    """Even the reduced message exceeds the transport's limit."""


def kind_of(action: str, detail: Mapping[str, Any] | None = None) -> EventKind:
    """The DICOM event kind of an action (exact match, then prefix, else Application Activity)."""
    kind = ACTIONS.get(action)
    if kind is None:
        kind = next((k for prefix, k in PREFIXES if action.startswith(prefix)), DEFAULT)
    detail = detail or {}
    if action == "store":
        if str(detail.get("source", "")).startswith("import"):
            kind = EventKind(IMPORT, "C")
        elif detail.get("status") == "new-version":
            kind = EventKind(INSTANCES_TRANSFERRED, "U")
    return kind


def outcome_indicator(outcome: str) -> str:
    return OUTCOMES.get(outcome, "8")


def severity(event: Event) -> int:
    """RFC 5424 severity: 1 alert (break-the-glass), 3-4 failures, 5 security, 6 the rest."""
    if event.outcome == "alert":
        return 1
    indicator = outcome_indicator(event.outcome)
    kind = kind_of(event.action, event.detail)
    if indicator == "12":
        return 3
    if indicator == "8" or (indicator == "4" and kind.event_id in (SECURITY_ALERT, USER_AUTHENTICATION)):
        return 4
    if indicator == "4" or kind.event_id in (SECURITY_ALERT, USER_AUTHENTICATION):
        return 5
    return 6


# -- XML ------------------------------------------------------------------------------


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.scheme,
                                       "originalText": code.meaning})


def _token(value: str, limit: int = 256) -> str:
    """Attribute text: no control characters, bounded."""
    return "".join(c if c.isprintable() else " " for c in value)[:limit]


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def _host(address: str) -> str:
    """``10.0.0.5:40000`` / ``[::1]:5000`` / ``host`` → the host part."""
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    if address.count(":") == 1:
        return address.split(":", 1)[0]
    return address


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _by(detail: Mapping[str, Any]) -> Mapping[str, Any]:
    by = detail.get("by")
    return by if isinstance(by, Mapping) else {}


def _requestor(root: ET.Element, event: Event, kind: EventKind) -> None:
    by = _by(event.detail)
    subject = str(by.get("subject", "")) if event.actor_kind == "user" else ""
    attrs = {"UserID": _token(subject or event.actor_name or event.actor_kind), "UserIsRequestor": "true"}
    if by.get("facility"):
        attrs["AlternativeUserID"] = _token(str(by["facility"]))
    if subject and event.actor_name and event.actor_name != subject:
        attrs["UserName"] = _token(event.actor_name)
    host = _host(event.actor_address)
    if host:
        attrs["NetworkAccessPointID"] = _token(host)
        attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(host) else "1"
    participant = ET.SubElement(root, "ActiveParticipant", attrs)
    # RoleIDCode elements precede nothing else in ActiveParticipant (A.5.1)
    if event.action == "store":
        _coded(participant, "RoleIDCode", ROLE_SOURCE)
    elif kind.event_id in (INSTANCES_TRANSFERRED, INSTANCES_ACCESSED) and event.action != "move":
        _coded(participant, "RoleIDCode", ROLE_DESTINATION)
    roles = by.get("roles")
    for role in roles if isinstance(roles, list) else []:
        _coded(participant, "RoleIDCode", Code(_token(str(role), 64), LOCAL_SCHEME, _token(str(role), 64)))


def _archive(root: ET.Element, event: Event, kind: EventKind, source: Source) -> None:
    attrs = {"UserID": _token(source.ae_title), "UserIsRequestor": "false"}
    if source.process_id:
        attrs["AlternativeUserID"] = _token(source.process_id)
    if source.hostname:
        attrs["NetworkAccessPointID"] = _token(source.hostname)
        attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(source.hostname) else "1"
    participant = ET.SubElement(root, "ActiveParticipant", attrs)
    if event.action == "store":
        _coded(participant, "RoleIDCode", ROLE_DESTINATION)
    elif kind.event_id in (INSTANCES_TRANSFERRED, INSTANCES_ACCESSED):
        _coded(participant, "RoleIDCode", ROLE_SOURCE)
    else:
        _coded(participant, "RoleIDCode", ROLE_APPLICATION)


def _destination(root: ET.Element, event: Event) -> None:
    destination = str(event.detail.get("destination", ""))
    if event.action == "move" and destination:
        participant = ET.SubElement(root, "ActiveParticipant",
                                    {"UserID": _token(destination), "UserIsRequestor": "false"})
        _coded(participant, "RoleIDCode", ROLE_DESTINATION)


def _object(
    root: ET.Element, object_id: str, id_type: Code, type_code: str, role: str,
    *, query: str | None = None, details: Mapping[str, str] | None = None,
) -> None:
    element = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": _token(object_id), "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role,
    })
    _coded(element, "ParticipantObjectIDTypeCode", id_type)
    if query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = _b64(query)
    for name, value in (details or {}).items():
        ET.SubElement(element, "ParticipantObjectDetail", {"type": name, "value": _b64(value)})


def _study_uid(event: Event) -> str:
    if event.object_type == "study" and event.object_id:
        return event.object_id
    for key in ("study", "study_uid", "study_instance_uid"):
        value = event.detail.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _participant_objects(root: ET.Element, event: Event, kind: EventKind, source: Source, lean: bool) -> None:
    study = _study_uid(event)
    if study:
        _object(root, study, STUDY_INSTANCE_UID, "2", "3")
    if event.person_id is not None:
        authority = "".join(c for c in source.source_id if c not in "^&~\\|") or "COFFRE"
        _object(root, f"{event.person_id}^^^{authority}", PATIENT_NUMBER, "1", "1")
    if kind.event_id == QUERY:
        model = str(event.detail.get("model", "study-root"))
        sop_class = FIND_SOP_CLASS.get(model, FIND_SOP_CLASS["study-root"])
        keys = {k: event.detail[k] for k in ("level", "model", "keys", "source") if k in event.detail}
        text = None if lean else json.dumps(keys, sort_keys=True, separators=(",", ":"))
        _object(root, sop_class.code, sop_class, "2", "24", query=text if text is not None else "")
    elif event.object_type == "node" or kind.type_code == NODE_AUTHENTICATION:
        _object(root, event.object_id or event.actor_name or "-", NODE_ID, "2", "13")
    elif event.object_id and event.object_type not in ("study", ""):
        local = Code(_token(event.object_type, 64), LOCAL_SCHEME, _token(event.object_type, 64))
        _object(root, event.object_id, local, "2", "13" if kind.event_id == SECURITY_ALERT else "3")
    record = f"urn:coffre:audit:{_token(source.source_id, 64).replace(' ', '_')}:{event.id}"
    _object(root, record, URI, "2", "13", details={"coffre-chain-hash": event.hash})


def build(event: Event, source: Source, *, lean: bool = False) -> bytes:
    """The PS3.15 A.5.1 XML (UTF-8, with an XML declaration) of one audit event.

    ``lean`` leaves out the query text and the outcome description (for UDP, whose
    datagrams cannot carry more than 64 KiB).
    """
    kind = kind_of(event.action, event.detail)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": kind.action_code,
        "EventDateTime": event.at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "EventOutcomeIndicator": outcome_indicator(event.outcome),
    })
    _coded(ident, "EventID", kind.event_id)
    if kind.type_code is not None:
        _coded(ident, "EventTypeCode", kind.type_code)
    reason = event.detail.get("reason")
    if not lean and outcome_indicator(event.outcome) != "0" and isinstance(reason, str) and reason:
        ET.SubElement(ident, "EventOutcomeDescription").text = _token(reason, 1024)
    purpose = (event.detail.get("purpose") or event.detail.get("access")
               or ("break-glass" if event.action == "break-glass" else ""))
    if isinstance(purpose, str) and purpose in PURPOSE:
        _coded(ident, "PurposeOfUse", PURPOSE[purpose])
    _requestor(root, event, kind)
    _archive(root, event, kind, source)
    _destination(root, event)
    site = {"AuditEnterpriseSiteID": _token(source.enterprise_site_id)} if source.enterprise_site_id else {}
    ET.SubElement(root, "AuditSourceIdentification", {**site, "AuditSourceID": _token(source.source_id)})
    _participant_objects(root, event, kind, source, lean)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>' + body


def build_bounded(event: Event, source: Source, max_bytes: int) -> bytes:
    """:func:`build`, reduced to the lean form when it exceeds ``max_bytes``."""
    xml = build(event, source)
    if len(xml) <= max_bytes:
        return xml
    xml = build(event, source, lean=True)
    if len(xml) > max_bytes:
        raise MessageTooLarge(f"audit event #{event.id} needs {len(xml)} bytes, more than {max_bytes}")
    return xml


def is_ascii_printable(value: str) -> bool:
    return bool(value) and all(33 <= ord(c) <= 126 for c in value)


def _instant(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def syslog_message(
    xml: bytes, *, severity: int, at: datetime, hostname: str, app_name: str = "coffre",
    procid: str = "-", facility: int = 10, msgid: str = "DICOM+RFC3881",
) -> bytes:
    """One RFC 5424 SYSLOG-MSG: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``.

    Facility 10 (security/authorization), as PS3.15 A.6/A.7 require; no structured
    data; MSG is the XML, UTF-8 (it starts with the XML declaration, not a BOM, as
    IHE ATNA repositories expect).
    """
    if not 0 <= severity <= 7:
        raise ValueError("severity is 0-7")
    fields = [hostname[:255], app_name[:48], procid[:128], msgid[:32]]
    host, app, proc, mid = (f if is_ascii_printable(f) else "-" for f in fields)
    header = f"<{facility * 8 + severity}>1 {_instant(at)} {host} {app} {proc} {mid} -"
    return header.encode("ascii") + b" " + xml


def action_table() -> str:
    """The Markdown tables of :data:`ACTIONS` and :data:`PREFIXES` (docs/audit.md shows them)."""
    def row(name: str, kind: EventKind) -> str:
        type_code = f"{kind.type_code.code} {kind.type_code.meaning}" if kind.type_code else ""
        return f"| `{name}` | {kind.event_id.code} {kind.event_id.meaning} | {kind.action_code} | {type_code} |"

    head = "| {} | EventID | EventActionCode | EventTypeCode |\n| --- | --- | --- | --- |\n"
    exact = head.format("action") + "\n".join(row(a, k) for a, k in ACTIONS.items())
    prefixes = head.format("action starting with") + "\n".join(row(p, k) for p, k in PREFIXES)
    return exact + "\n\n" + prefixes + "\n"
