"""Export of the audit trail to a REAL syslog receiver (TCP, TLS, UDP) in this process.

The receivers below parse RFC 6587 / RFC 5425 octet-counted frames (TCP, TLS) and RFC
5426 datagrams (UDP), like an audit repository would; the TLS one has a certificate
issued by a throw-away CA made with ``cryptography``. The tests stop a receiver,
record more events, restart it, and check that every event arrives, in order.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coffre.app import Context
from coffre.errors import ConfigurationError
from coffre.index import audit as audit_index
from coffre.index.engine import Database
from coffre.model import Actor, Facility, Role
from coffre.services import audit, facilities
from coffre.services.audit_export import (
    Exporter,
    ExporterThread,
    RepositoryUnavailable,
    start_exporter,
)
from coffre.settings import AuditSettings, Settings
from coffre.storage.memory import MemoryBlobStore

SYSLOG = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) - (.*)$", re.DOTALL)

# -- certificates --------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(folder: Path, name: str = "audit-ca") -> Pki:
    """A CA and a server certificate for 127.0.0.1 / localhost issued by it (PEM files)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit repository")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(folder / f"{name}.pem", folder / "server.pem", folder / "server.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return pki


# -- the receiver --------------------------------------------------------------------


@dataclass
class SyslogReceiver:
    """A syslog collector on 127.0.0.1: ``tcp``/``tls`` (octet counting) or ``udp``."""

    kind: str
    pki: Pki | None = None
    port: int = 0
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._clients: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._running = False

    def start(self) -> SyslogReceiver:
        kind = socket.SOCK_DGRAM if self.kind == "udp" else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._listener, self._running = sock, True
        if self.kind == "udp":
            sock.settimeout(0.1)
            self._spawn(self._datagrams)
        else:
            sock.listen(8)
            sock.settimeout(0.1)
            self._spawn(self._accept)
        return self

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _datagrams(self) -> None:
        assert self._listener is not None
        while self._running:
            try:
                data, _ = self._listener.recvfrom(70_000)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data)

    def _accept(self) -> None:
        assert self._listener is not None
        while self._running:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            if self.kind == "tls":
                assert self.pki is not None
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(self.pki.cert, self.pki.key)
                conn = context.wrap_socket(conn, server_side=True)
            with self._lock:
                self._clients.append(conn)
                self.connections += 1
            buffer = b""
            while self._running:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                buffer += chunk
                while (space := buffer.find(b" ")) > 0:
                    length = int(buffer[:space])
                    if len(buffer) < space + 1 + length:
                        break
                    with self._lock:
                        self.messages.append(buffer[space + 1:space + 1 + length])
                    buffer = buffer[space + 1 + length:]
            if isinstance(conn, ssl.SSLSocket):
                with contextlib.suppress(OSError, ValueError):
                    conn = conn.unwrap()
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        """The repository goes away: listener and every connection closed."""
        self._running = False
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(10)
        self._threads = []

    def wait_for(self, count: int, timeout: float = 20.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            pytest.fail(f"{len(self.messages)} syslog messages received, {count} expected")


@dataclass(frozen=True)
class Parsed:
    pri: int
    timestamp: str
    hostname: str
    app: str
    msgid: str
    xml: ET.Element

    @property
    def event_id(self) -> int:
        """The audit record's id, from its URI participant."""
        for obj in self.xml.iter("ParticipantObjectIdentification"):
            if obj.get("ParticipantObjectID", "").startswith("urn:coffre:audit:"):
                return int(obj.get("ParticipantObjectID", "").rsplit(":", 1)[1])
        raise AssertionError("no audit record participant")

    @property
    def chain_hash(self) -> str:
        for detail in self.xml.iter("ParticipantObjectDetail"):
            if detail.get("type") == "coffre-chain-hash":
                return base64.b64decode(detail.get("value", "")).decode()
        raise AssertionError("no chain hash")

    def code(self, tag: str) -> str:
        element = self.xml.find(f"EventIdentification/{tag}")
        assert element is not None, tag
        assert element.get("codeSystemName") and element.get("originalText")
        return element.get("csd-code", "")


def parse(message: bytes) -> Parsed:
    match = SYSLOG.match(message)
    assert match, message[:200]
    xml = ET.fromstring(match[7])
    assert xml.tag == "AuditMessage"
    return Parsed(int(match[1]), match[2].decode(), match[3].decode(), match[4].decode(), match[6].decode(), xml)


# -- the archive ---------------------------------------------------------------------


@dataclass
class Spool:
    ctx: Context
    site: Facility

    def with_repository(self, receiver: SyslogReceiver, **audit_settings: object) -> Context:
        audit_conf = AuditSettings(syslog_host="127.0.0.1", syslog_port=receiver.port, syslog_transport=receiver.kind,
                                   syslog_ca=str(receiver.pki.ca) if receiver.pki else "",
                                   syslog_interval_seconds=0.05, source_id="TERRITORY-ARCHIVE",
                                   enterprise_site_id="HDS-1")
        audit_conf = replace(audit_conf, **audit_settings)  # type: ignore[arg-type]
        return replace(self.ctx, settings=replace(self.ctx.settings, audit=audit_conf))

    def record(self, n: int, action: str = "wado-rs", **kwargs: object) -> list[int]:
        user = Actor.for_user("dr@site-a", "Dr Who", frozenset({Role.RADIOLOGIST}), (self.site,), "10.0.0.7")
        for i in range(n):
            audit.record_alone(self.ctx, user, action, object_type="study", object_id=f"1.2.840.99.{i}",
                               person_id=42, detail={"instances": i, "access": "own"}, **kwargs)
        with self.ctx.db.read() as tx:
            return [e.id for e in audit_index.list_events(tx, limit=100_000)]


@pytest.fixture
def spool(database: Database, tmp_path: Path) -> Spool:
    ctx = Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore())
    site = facilities.add_facility(ctx, Actor.system("test"), slug="site-a", name="Site A", issuer="SITE-A")
    return Spool(ctx, site)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def receivers(pki: Pki) -> Iterator[Callable[[str], SyslogReceiver]]:
    started: list[SyslogReceiver] = []

    def start(kind: str) -> SyslogReceiver:
        receiver = SyslogReceiver(kind, pki if kind == "tls" else None).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def cursor(ctx: Context) -> int:
    with ctx.db.read() as tx:
        return audit_index.export_cursor(tx, f"{ctx.settings.audit.syslog_transport}://127.0.0.1:"
                                             f"{ctx.settings.audit.syslog_port}")


# -- tests ---------------------------------------------------------------------------


def test_tls_export_sends_dicom_audit_messages(spool: Spool, receivers: Callable[[str], SyslogReceiver]) -> None:
    receiver = receivers("tls")
    ctx = spool.with_repository(receiver)
    clinician = Actor.for_user("clin@site-a", "Claire Nurse", frozenset({Role.CLINICIAN}), (spool.site,), "10.0.0.8")
    node = Actor.system("net")
    audit.record_alone(ctx, clinician, "break-glass", outcome="alert", object_type="grant", object_id="7",
                       person_id=42, detail={"reason": "ER", "minutes": 240})
    audit.record_alone(ctx, clinician, "query", object_type="study",
                       detail={"level": "STUDY", "model": "study-root", "keys": {"StudyDate": ["range", "2025"]}})
    audit.record_alone(ctx, clinician, "move", object_type="study", object_id="1.2.3.4", person_id=42,
                       detail={"instances": 3, "destination": "WS_A", "access": "care"})
    audit.record_alone(ctx, node, "association", outcome="refused", object_type="node",
                       detail={"reason": "calling AE title not recognised"})
    audit.record_alone(ctx, clinician, "login", outcome="failure", object_type="user", object_id="clin",
                       detail={"reason": "bad password"})
    audit.record_alone(ctx, clinician, "user-roles", object_type="user", object_id="clin")
    audit.record_alone(ctx, clinician, "something-new")
    with ctx.db.read() as tx:
        stored = audit_index.list_events(tx)

    result = Exporter(ctx).drain()
    assert result.sent == len(stored) and result.cursor == stored[-1].id
    got = [parse(m) for m in receiver.wait_for(len(stored))]
    assert [p.event_id for p in got] == [e.id for e in stored]
    assert [p.chain_hash for p in got] == [e.hash for e in stored]
    assert {(p.app, p.msgid) for p in got} == {("coffre", "DICOM+RFC3881")}
    assert all(p.pri // 8 == 10 for p in got)  # facility authpriv (security/authorization)
    by_action = {e.action: p for e, p in zip(stored, got, strict=True)}
    assert {a: (p.code("EventID"), p.pri % 8) for a, p in by_action.items()} == {
        "break-glass": ("110113", 1), "query": ("110112", 6), "move": ("110104", 6),
        "association": ("110113", 4), "login": ("110114", 4), "user-roles": ("110113", 5),
        "something-new": ("110100", 6), "facility-add": ("110113", 5),
    }
    assert by_action["facility-add"].code("EventTypeCode") == "110129"  # Security Configuration
    assert by_action["break-glass"].code("EventTypeCode") == "110127"  # Emergency Override Started
    assert by_action["association"].code("EventTypeCode") == "110126"  # Node Authentication
    assert by_action["login"].code("EventTypeCode") == "110122"
    assert by_action["user-roles"].code("EventTypeCode") == "110136"  # Security Roles Changed
    assert by_action["break-glass"].code("PurposeOfUse") == "ETREAT"

    move = by_action["move"].xml
    ident = move.find("EventIdentification")
    assert ident is not None and ident.get("EventActionCode") == "R" and ident.get("EventOutcomeIndicator") == "0"
    participants = {p.get("UserID"): p for p in move.iter("ActiveParticipant")}
    assert participants["clin@site-a"].get("UserIsRequestor") == "true"
    assert participants["clin@site-a"].get("UserName") == "Claire Nurse"
    assert participants["clin@site-a"].get("AlternativeUserID") == "site-a"
    assert participants["clin@site-a"].get("NetworkAccessPointID") == "10.0.0.8"
    assert [r.get("csd-code") for r in participants["clin@site-a"].iter("RoleIDCode")] == ["clinician"]
    assert participants["COFFRE"].get("UserIsRequestor") == "false"
    assert [r.get("csd-code") for r in participants["WS_A"].iter("RoleIDCode")] == ["110152"]
    source = move.find("AuditSourceIdentification")
    assert source is not None and (source.get("AuditSourceID"), source.get("AuditEnterpriseSiteID")) == (
        "TERRITORY-ARCHIVE", "HDS-1")
    objects = {o.find("ParticipantObjectIDTypeCode").get("csd-code"): o  # type: ignore[union-attr]
               for o in move.iter("ParticipantObjectIdentification")}
    assert objects["110180"].get("ParticipantObjectID") == "1.2.3.4"
    assert objects["2"].get("ParticipantObjectID") == "42^^^TERRITORY-ARCHIVE"  # the person, never a name
    assert objects["2"].find("ParticipantObjectName") is None
    query = by_action["query"].xml.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert query is not None and b"StudyDate" in base64.b64decode(query.text or "")
    refused = by_action["association"].xml.find("EventIdentification")
    assert refused is not None and refused.get("EventOutcomeIndicator") == "4"
    assert refused.findtext("EventOutcomeDescription") == "calling AE title not recognised"
    assert cursor(ctx) == stored[-1].id
    # a second drain sends nothing more
    assert Exporter(ctx).drain().sent == 0


@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_nothing_is_lost_while_the_repository_is_down(
    spool: Spool, receivers: Callable[[str], SyslogReceiver], kind: str,
) -> None:
    receiver = receivers(kind)
    ctx = spool.with_repository(receiver)
    thread = start_exporter(ctx)
    assert thread is not None
    try:
        first = replace(spool, ctx=ctx).record(5)
        receiver.wait_for(len(first))
        time.sleep(0.3)  # a pass confirms the delivered messages
        receiver.stop()
        replace(spool, ctx=ctx).record(1)  # alone in its pass: sending it "succeeds" on a dead connection
        time.sleep(0.5)  # the exporter retries and fails meanwhile
        during = replace(spool, ctx=ctx).record(4)
        time.sleep(0.3)
        assert cursor(ctx) <= first[-1]
        receiver.start()  # the same port
        later = replace(spool, ctx=ctx).record(3)
        receiver.wait_for(len(later) - len(first))
        assert receiver.connections >= 2
    finally:
        thread.stop()
    ids = [parse(m).event_id for m in receiver.messages]
    assert len(during) == len(first) + 5 and len(later) == len(during) + 3
    unique = list(dict.fromkeys(ids))
    assert unique == later  # every event, in order; a few may come twice (at least once)
    assert cursor(ctx) == later[-1]


def test_a_repository_that_was_never_reachable_gets_everything_later(
    spool: Spool, receivers: Callable[[str], SyslogReceiver],
) -> None:
    receiver = receivers("tcp")
    receiver.stop()
    ctx = spool.with_repository(receiver)
    ids = replace(spool, ctx=ctx).record(4)
    exporter = Exporter(ctx)
    with pytest.raises(RepositoryUnavailable):
        exporter.drain()
    assert cursor(ctx) == 0
    receiver.start()
    assert exporter.drain().sent == len(ids)
    assert [parse(m).event_id for m in receiver.wait_for(len(ids))] == ids


def test_an_untrusted_repository_certificate_gets_nothing(
    spool: Spool, receivers: Callable[[str], SyslogReceiver], tmp_path: Path,
) -> None:
    receiver = receivers("tls")
    other = make_pki(tmp_path / "other", name="someone-else")
    ctx = spool.with_repository(receiver, syslog_ca=str(other.ca))
    replace(spool, ctx=ctx).record(2)
    with pytest.raises(RepositoryUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        Exporter(ctx).drain()
    assert receiver.messages == [] and cursor(ctx) == 0


def test_udp_datagrams_and_the_64k_bound(spool: Spool, receivers: Callable[[str], SyslogReceiver]) -> None:
    udp, tcp = receivers("udp"), receivers("tcp")
    ctx = spool.with_repository(udp)
    ids = replace(spool, ctx=ctx).record(3)
    huge = {"level": "STUDY", "model": "study-root", "keys": {"StudyDescription": ["wildcard", "x" * 80_000]}}
    audit.record_alone(ctx, Actor.system("t"), "query", outcome="refused", detail={**huge, "reason": "too long"})
    with ctx.db.read() as tx:
        last = audit_index.head(tx)
    assert last is not None
    assert Exporter(ctx).drain().sent == len(ids) + 1
    got = udp.wait_for(len(ids) + 1)
    assert all(len(m) <= 65_507 for m in got)
    assert [parse(m).event_id for m in got] == [*ids, last[0]]
    lean = parse(got[-1]).xml
    assert lean.findtext("ParticipantObjectIdentification/ParticipantObjectQuery") in ("", None)
    assert lean.find("EventIdentification/EventOutcomeDescription") is None
    # the same event over TCP is sent whole
    full_ctx = spool.with_repository(tcp)
    Exporter(full_ctx).drain()
    whole = tcp.wait_for(len(ids) + 1)[-1]
    assert len(whole) > 80_000 and parse(whole).event_id == last[0]


def test_one_exporter_per_repository_and_a_cursor_per_repository(
    spool: Spool, receivers: Callable[[str], SyslogReceiver],
) -> None:
    first_repo, second_repo = receivers("tcp"), receivers("tcp")
    ctx = spool.with_repository(first_repo)
    ids = replace(spool, ctx=ctx).record(3)
    one, two = Exporter(ctx, owner="node-1"), Exporter(ctx, owner="node-2")
    assert one.run_once().sent == len(ids)
    held = two.run_once()
    assert (held.leased, held.sent) == (False, 0)  # node-1 holds the lease
    assert one.finish() == ids[-1]
    one.release()
    assert two.drain() == type(held)(sent=0, cursor=ids[-1])  # taken over; nothing left to send
    two.release()
    # a lease that is not renewed expires
    stale = Exporter(ctx, owner="node-3", lease_seconds=0.0)
    stale.run_once()
    fresh = Exporter(ctx, owner="node-4")
    assert fresh.run_once().leased
    for exporter in (stale, fresh):
        exporter.finish()
    # another repository has its own cursor: it gets everything
    other = spool.with_repository(second_repo)
    assert Exporter(other).drain().sent == len(ids)
    assert [parse(m).event_id for m in second_repo.wait_for(len(ids))] == ids
    assert len(first_repo.messages) == len(ids)


def test_the_cursor_never_moves_back(spool: Spool) -> None:
    with spool.ctx.db.write() as tx:
        assert audit_index.advance_export(tx, "tcp://x:1", 10) == 10
        assert audit_index.advance_export(tx, "tcp://x:1", 4) == 10
        assert audit_index.export_cursor(tx, "tcp://x:1") == 10
        assert audit_index.export_cursor(tx, "tcp://y:1") == 0


def test_no_repository_no_exporter(spool: Spool) -> None:
    assert start_exporter(spool.ctx) is None
    with pytest.raises(ConfigurationError):
        Exporter(spool.ctx)


def test_the_exporter_thread_stops_promptly_when_the_repository_is_down(
    spool: Spool, receivers: Callable[[str], SyslogReceiver],
) -> None:
    receiver = receivers("tcp")
    receiver.stop()
    ctx = spool.with_repository(receiver)
    replace(spool, ctx=ctx).record(2)
    thread = ExporterThread(ctx)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    thread.stop()
    assert time.monotonic() - started < 5
    assert cursor(ctx) == 0
