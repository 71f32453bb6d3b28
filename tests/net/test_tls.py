"""DICOM TLS (PS3.15 B.9, B.12) with client certificates bound to nodes.

A test PKI is generated with ``cryptography``: a territory CA, the archive's
certificate (``localhost`` and ``127.0.0.1``), client certificates of nodes, one
CA-signed certificate bound to no node, and a certificate of another CA. A real
``coffre serve`` runs its TLS listener beside the plain one; DCMTK's ``echoscu``,
``storescu``, ``findscu`` and ``storescp``, pynetdicom with an ``ssl`` context and
Python's ``ssl`` client are the peers. Refusals are checked in the audit table.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from coffre.app import build_context
from coffre.errors import ConfigurationError, NotFound
from coffre.model import Actor, Permission
from coffre.net import tls
from coffre.services.facilities import (
    add_facility,
    add_node,
    bind_certificate,
    set_require_tls,
    unbind_certificate,
)
from coffre.settings import TlsSettings, load_settings

from .conftest import COFFRE, Archive, tool_env
from .dicomnet import write_instances

pytestmark = pytest.mark.dcmtk

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
TLS_READY = re.compile(r"DICOM TLS (?P<ae>\S+)@(?P<host>[\d.]+):(?P<port>\d+), ")


# -- test PKI ------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    key: Path
    cert: Path
    fingerprint: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Coffre tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: Any, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class Authority:
    """A CA that issues certificates as a territory PKI would (RFC 5280 extensions)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.now(UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.path = folder / f"{name.replace(' ', '-').lower()}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, common_name: str, *, server: bool = False, client: bool = True,
              ecdsa: bool = False) -> Issued:
        key: Any = ec.generate_private_key(ec.SECP256R1()) if ecdsa else rsa.generate_private_key(
            public_exponent=65537, key_size=2048)
        now = datetime.now(UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=not ecdsa, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        )
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.folder / f"{stem}.key", self.folder / f"{stem}.crt",
                        cert.fingerprint(hashes.SHA256()).hex())
        _write_key(key, issued.key)
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return issued


@dataclass(frozen=True)
class Pki:
    ca: Path
    archive: Issued
    modality_a: Issued
    modality_b: Issued
    pacs_a: Issued
    secure_ct: Issued
    secure_pacs: Issued
    intruder: Issued
    rogue: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    territory = Authority(folder, "Territory CA")
    other = Authority(folder, "Other CA")
    return Pki(
        ca=territory.path,
        archive=territory.issue("archive", "coffre.test", server=True),
        modality_a=territory.issue("modality_a", "MODALITY_A"),
        modality_b=territory.issue("modality_b", "MODALITY_B", ecdsa=True),
        pacs_a=territory.issue("pacs_a", "PACS_A"),
        secure_ct=territory.issue("secure_ct", "SECURE_CT"),
        secure_pacs=territory.issue("secure_pacs", "SECURE_PACS", server=True),
        intruder=territory.issue("intruder", "INTRUDER"),
        rogue=other.issue("rogue", "MODALITY_A"),
    )


def tls_env(pki: Pki, **extra: str) -> dict[str, str]:
    return {
        "COFFRE_TLS_ENABLED": "true", "COFFRE_TLS_PORT": "0",
        "COFFRE_TLS_CERTIFICATE": str(pki.archive.cert), "COFFRE_TLS_PRIVATE_KEY": str(pki.archive.key),
        "COFFRE_TLS_CA_CERTIFICATES": str(pki.ca), **extra,
    }


@pytest.fixture(scope="module")
def archive_env(pki: Pki) -> dict[str, str]:
    return tls_env(pki)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Secured:
    archive: Archive
    tls_port: int
    #: the port SECURE_PACS (a C-MOVE destination) listens on with DICOM TLS
    secure_pacs_port: int


def cli_ok(archive: Archive, *args: str) -> str:
    out = archive.cli(*args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def tls_port(archive: Archive) -> int:
    for line in archive.stdout_lines:
        match = TLS_READY.search(line)
        if match:
            assert match["ae"] == archive.ae_title
            return int(match["port"])
    raise AssertionError(f"no DICOM TLS listener in the ready line: {archive.stdout_lines}")


@pytest.fixture(scope="module")
def secured(archive: Archive, pki: Pki) -> Secured:
    """The module's territory, secured through the CLI while the archive runs.

    - MODALITY_A (site-a) is bound to its certificate;
    - site-s requires TLS: SECURE_CT (store) and SECURE_PACS (all, a C-MOVE destination)
      bound at creation, SECURE_BARE (store) without a certificate.
    """
    cli_ok(archive, "node", "bind-certificate", "MODALITY_A", str(pki.modality_a.cert))
    # the rest through the services, in-process (the CLI is exercised by other tests)
    port = free_port()
    ctx = build_context(load_settings(archive.data, {}))
    op = Actor.system("tests")
    try:
        add_facility(ctx, op, slug="site-s", name="Site S", issuer="SITE-S")
        set_require_tls(ctx, op, "site-s", True)
        for ae, node_port, perms, fingerprint in (
            ("SECURE_CT", 104, frozenset({Permission.STORE}), pki.secure_ct.fingerprint),
            ("SECURE_PACS", port, frozenset(Permission), pki.secure_pacs.fingerprint),
            ("SECURE_BARE", 104, frozenset({Permission.STORE}), ""),
        ):
            add_node(ctx, op, ae_title=ae, host="127.0.0.1", port=node_port, facility_slug="site-s",
                     permissions=perms, tls_fingerprint=fingerprint)
    finally:
        ctx.close()
    return Secured(archive, tls_port(archive), port)


# -- peers ---------------------------------------------------------------------------


def dcmtk(archive: Archive, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"DCMTK's {tool} is not installed (apt-get install dcmtk)", pytrace=False)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=archive.env, timeout=timeout)


def with_tls(issued: Issued | None, ca: Path) -> tuple[str, ...]:
    """DCMTK options: TLS with a client certificate (or none: anonymous), the CA to trust."""
    if issued is None:
        return ("+tla", "+cf", str(ca))
    return ("+tls", str(issued.key), str(issued.cert), "+cf", str(ca))


def echoscu(s: Secured, calling: str, tls_opts: tuple[str, ...] = (), *,
            port: int | None = None) -> subprocess.CompletedProcess[str]:
    port = port if port is not None else (s.tls_port if tls_opts else s.archive.dicom_port)
    return dcmtk(s.archive, "echoscu", "-v", *tls_opts, "-aet", calling, "-aec", "COFFRE",
                 "127.0.0.1", str(port))


def client_context(pki: Pki, issued: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if issued is not None:
        context.load_cert_chain(str(issued.cert), str(issued.key))
    return context


@contextmanager
def scu(port: int, calling: str, context: ssl.SSLContext | None, *,
        contexts: tuple[str, ...] = (VERIFICATION,), hostname: str = "localhost") -> Iterator[Any]:
    """A pynetdicom association, over TLS when ``context`` is given; the caller checks it."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for abstract in contexts:
        ae.add_requested_context(abstract, [EXPLICIT_LE])
    seen: list[Any] = []

    def on_acse(event: Any) -> None:
        primitive = getattr(event, "primitive", None)
        if getattr(primitive, "result", None) is not None:
            seen.append(primitive)

    assoc = ae.associate("127.0.0.1", port, ae_title="COFFRE",
                         tls_args=(context, hostname) if context is not None else None,
                         evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)])
    assoc.seen_acse = seen
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def assert_tls_refused(port: int, context: ssl.SSLContext) -> None:
    """The server ends the TLS connection: during the handshake, or (TLS 1.3, where the
    client finishes before the server has checked its certificate) at the first read."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False) as client:
        try:
            client.do_handshake()
            data = client.recv(1)
        except (ssl.SSLError, ConnectionResetError):
            return
    assert data == b"", "the TLS connection was not refused"


def rejection(assoc: Any) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ received (PS3.8 9.3.4)."""
    assert assoc.is_rejected, "association not rejected"
    rsp = assoc.seen_acse[-1]
    return int(rsp.result), int(rsp.result_source), int(rsp.diagnostic)


# -- audit ---------------------------------------------------------------------------


def last_event(archive: Archive) -> int:
    return int(archive.query("SELECT coalesce(max(id), 0) FROM audit_event")[0][0])


def events_since(archive: Archive, since: int, action: str = "association", *, count: int = 1,
                 timeout: float = 10) -> list[dict[str, Any]]:
    """Refusal events after ``since`` (waiting a little: a handshake failure is audited
    once the connection is closed, which the client may notice first)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = archive.query("SELECT * FROM audit_event WHERE id > ? AND action = ? AND outcome = 'refused' "
                             "ORDER BY id", since, action)
        events = [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def refused_once(archive: Archive, since: int, reason: str, action: str = "association") -> dict[str, Any]:
    events = events_since(archive, since, action)
    assert len(events) == 1, events
    assert events[0]["detail"]["reason"] == reason, events
    return events[0]


# -- the TLS module ------------------------------------------------------------------


def test_fingerprint_is_the_sha256_of_the_der_certificate(pki: Pki) -> None:
    import hashlib

    der = ssl.PEM_cert_to_DER_cert(pki.modality_a.cert.read_text())
    assert tls.certificate_fingerprint(pki.modality_a.cert) == hashlib.sha256(der).hexdigest()
    assert tls.fingerprint(der) == pki.modality_a.fingerprint
    info = tls.read_certificate(pki.modality_a.cert)
    assert "CN=MODALITY_A" in info.subject and "CN=Territory CA" in info.issuer


def test_server_context_follows_the_bcp195_profiles(pki: Pki) -> None:
    settings = TlsSettings(enabled=True, certificate=str(pki.archive.cert), private_key=str(pki.archive.key),
                           ca_certificates=str(pki.ca))
    context = tls.server_context(settings)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {name for _iana, name in tls.TLS12_CIPHER_SUITES}
    assert all(c["aead"] for c in context.get_ciphers())
    assert all(c["kea"] in {"kx-ecdhe", "kx-any"} for c in context.get_ciphers())
    strict = tls.server_context(TlsSettings(enabled=True, certificate=str(pki.archive.cert),
                                            private_key=str(pki.archive.key), ca_certificates=str(pki.ca),
                                            min_version="1.3"))
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_3


# -- admission over TLS --------------------------------------------------------------


def test_ready_line_names_the_tls_listener(secured: Secured) -> None:
    assert secured.tls_port not in {0, secured.archive.dicom_port}


def test_echoscu_over_tls_with_the_bound_certificate(secured: Secured, pki: Pki) -> None:
    out = echoscu(secured, "MODALITY_A", with_tls(pki.modality_a, pki.ca))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Received Echo Response (Success)" in out.stdout + out.stderr


def test_storescu_over_tls_stores_the_instance(secured: Secured, pki: Pki, tmp_path: Path) -> None:
    made = write_instances(tmp_path / "tls", 3, patient_id="TLS1")
    out = dcmtk(secured.archive, "storescu", "-v", *with_tls(pki.modality_a, pki.ca), "-aet", "MODALITY_A",
                "-aec", "COFFRE", "127.0.0.1", str(secured.tls_port), *(str(p) for p in made.values()))
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert log.count("Received Store Response (Success)") == 3, log
    for uid, path in made.items():
        blob = secured.archive.assert_intact(uid)
        row = secured.archive.instance(uid)
        assert row is not None and row["slug"] == "site-a"
        assert dcmread(blob) == dcmread(path)


def test_plain_association_of_a_bound_node_is_refused(secured: Secured, tmp_path: Path) -> None:
    archive = secured.archive
    made = write_instances(tmp_path / "plain", 1)
    since = last_event(archive)
    out = dcmtk(archive, "storescu", "-aet", "MODALITY_A", "-aec", "COFFRE", "127.0.0.1",
                str(archive.dicom_port), *(str(p) for p in made.values()))
    assert out.returncode != 0
    assert "Calling AE Title Not Recognized" in out.stdout + out.stderr
    assert archive.instance(next(iter(made))) is None
    event = refused_once(archive, since, "TLS required: the node is bound to a certificate")
    assert event["actor_name"] == "MODALITY_A" and "tls" not in event["detail"]
    with scu(archive.dicom_port, "MODALITY_A", None) as assoc:
        assert rejection(assoc) == (1, 1, 3)


def test_another_certificate_of_the_ca_is_rejected(secured: Secured, pki: Pki) -> None:
    archive = secured.archive
    since = last_event(archive)
    out = echoscu(secured, "MODALITY_A", with_tls(pki.intruder, pki.ca))
    assert out.returncode != 0
    assert "Calling AE Title Not Recognized" in out.stdout + out.stderr
    event = refused_once(archive, since, "certificate mismatch")
    assert event["actor_name"] == "MODALITY_A"
    assert event["detail"]["tls"] is True
    assert event["detail"]["fingerprint"] == pki.intruder.fingerprint
    with scu(secured.tls_port, "MODALITY_A", client_context(pki, pki.intruder)) as assoc:
        # PS3.8 9.3.4: rejected-permanent, DICOM UL service-user, calling AE not recognised
        assert rejection(assoc) == (1, 1, 3)


def test_without_a_client_certificate_the_handshake_fails(secured: Secured, pki: Pki) -> None:
    archive = secured.archive
    since = last_event(archive)
    out = echoscu(secured, "MODALITY_A", with_tls(None, pki.ca))
    assert out.returncode != 0
    assert "Received Echo Response" not in out.stdout + out.stderr
    assert_tls_refused(secured.tls_port, client_context(pki, None))
    events = events_since(archive, since, count=2)
    assert len(events) == 2, events
    for event in events:
        assert event["detail"]["reason"] == "TLS handshake failed"
        assert event["actor_name"] == "" and event["actor_address"] == "127.0.0.1"
        assert "certificate" in event["detail"]["error"], event


def test_a_certificate_of_another_ca_fails_the_handshake(secured: Secured, pki: Pki) -> None:
    archive = secured.archive
    since = last_event(archive)
    out = echoscu(secured, "MODALITY_A", with_tls(pki.rogue, pki.ca))
    assert out.returncode != 0
    assert "Received Echo Response" not in out.stdout + out.stderr
    event = refused_once(archive, since, "TLS handshake failed")
    assert event["detail"]["error"].startswith("certificate verify failed"), event


def test_plain_dicom_on_the_tls_port_fails(secured: Secured) -> None:
    since = last_event(secured.archive)
    out = echoscu(secured, "PACS_A", port=secured.tls_port)
    assert out.returncode != 0
    assert "Received Echo Response" not in out.stdout + out.stderr
    refused_once(secured.archive, since, "TLS handshake failed")


def test_tls_1_1_is_refused(secured: Secured, pki: Pki) -> None:
    since = last_event(secured.archive)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is deprecated
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3 only offers TLS 1.0/1.1 at security level 0
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_verify_locations(str(pki.ca))
    context.load_cert_chain(str(pki.pacs_a.cert), str(pki.pacs_a.key))
    assert_tls_refused(secured.tls_port, context)
    event = refused_once(secured.archive, since, "TLS handshake failed")
    assert "protocol" in event["detail"]["error"], event


def test_pynetdicom_scu_over_tls(secured: Secured, pki: Pki) -> None:
    # PACS_A has no binding and site-a does not require TLS: the CA's word suffices
    for hostname in ("localhost", "127.0.0.1"):
        with scu(secured.tls_port, "PACS_A", client_context(pki, pki.pacs_a), hostname=hostname) as assoc:
            assert assoc.is_established
            sock = assoc.dul.socket.socket
            assert isinstance(sock, ssl.SSLSocket) and sock.version() in {"TLSv1.2", "TLSv1.3"}
            assert sock.cipher()[0] in {n for _i, n in tls.TLS12_CIPHER_SUITES} | set(tls.TLS13_CIPHER_SUITES)
            assert assoc.send_c_echo().Status == 0x0000
    # and its plain associations still work
    with scu(secured.archive.dicom_port, "PACS_A", None) as assoc:
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000


def test_findscu_over_tls(secured: Secured, pki: Pki, tmp_path: Path) -> None:
    out = dcmtk(secured.archive, "findscu", "-v", "-S", *with_tls(pki.pacs_a, pki.ca), "-aet", "PACS_A",
                "-aec", "COFFRE", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=TLS1",
                "-k", "StudyInstanceUID", "127.0.0.1", str(secured.tls_port))
    assert out.returncode == 0, out.stdout + out.stderr
    log = out.stdout + out.stderr
    assert "Received Final Find Response (Success)" in log, log
    assert "Find Response: 1 (Pending)" in log and "Find Response: 2 (Pending)" not in log, log


# -- facilities that require TLS ------------------------------------------------------


def test_require_tls_facility(secured: Secured, pki: Pki, tmp_path: Path) -> None:
    archive = secured.archive
    made = write_instances(tmp_path / "secure", 2, patient_id="SECURE1")
    files = [str(p) for p in made.values()]
    # plain: refused, nothing stored
    since = last_event(archive)
    out = dcmtk(archive, "storescu", "-aet", "SECURE_CT", "-aec", "COFFRE", "127.0.0.1",
                str(archive.dicom_port), *files)
    assert out.returncode != 0 and "Calling AE Title Not Recognized" in out.stdout + out.stderr
    assert all(archive.instance(uid) is None for uid in made)
    refused_once(archive, since, "TLS required: the node is bound to a certificate")
    # the same node over TLS with its certificate: stored in its facility
    out = dcmtk(archive, "storescu", *with_tls(pki.secure_ct, pki.ca), "-aet", "SECURE_CT", "-aec", "COFFRE",
                "127.0.0.1", str(secured.tls_port), *files)
    assert out.returncode == 0, out.stdout + out.stderr
    for uid in made:
        row = archive.instance(uid)
        assert row is not None and row["slug"] == "site-s"
    # a node of the facility without a certificate: refused in both ways
    since = last_event(archive)
    out = echoscu(secured, "SECURE_BARE")
    assert out.returncode != 0
    refused_once(archive, since, "TLS required by the facility")
    since = last_event(archive)
    out = echoscu(secured, "SECURE_BARE", with_tls(pki.intruder, pki.ca))
    assert out.returncode != 0 and "Calling AE Title Not Recognized" in out.stdout + out.stderr
    refused_once(archive, since, "no certificate bound to the node")


def test_require_tls_switched_on_and_off(secured: Secured, pki: Pki) -> None:
    """An AE title alone is trusted until the facility requires TLS (MODALITY_B, site-b)."""
    archive = secured.archive
    tls_opts = with_tls(pki.modality_b, pki.ca)  # an ECDSA certificate
    assert echoscu(secured, "MODALITY_B").returncode == 0
    try:
        assert "TLS required" in cli_ok(archive, "facility", "require-tls", "site-b", "--on")
        since = last_event(archive)
        assert echoscu(secured, "MODALITY_B").returncode != 0
        refused_once(archive, since, "TLS required by the facility")
        # unbound: even over TLS the node must prove its AE title with a bound certificate
        assert echoscu(secured, "MODALITY_B", tls_opts).returncode != 0
        cli_ok(archive, "node", "bind-certificate", "MODALITY_B", str(pki.modality_b.cert))
        out = echoscu(secured, "MODALITY_B", tls_opts)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        cli_ok(archive, "facility", "require-tls", "site-b", "--off")
        cli_ok(archive, "node", "unbind-certificate", "MODALITY_B")
    assert echoscu(secured, "MODALITY_B").returncode == 0
    actions = [r["action"] for r in archive.query(
        "SELECT action FROM audit_event WHERE object_id IN ('site-b', 'MODALITY_B') AND action LIKE '%-%' "
        "ORDER BY id")]
    assert actions[-4:] == ["facility-require-tls", "node-bind-certificate", "facility-require-tls",
                            "node-unbind-certificate"]


# -- C-MOVE to a TLS destination -------------------------------------------------------


def wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the peer exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@contextmanager
def storescp(archive: Archive, port: int, folder: Path, ae: str, tls_opts: tuple[str, ...] = ()) -> Iterator[Path]:
    """DCMTK's storescp writing what it receives to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("storescp")
    assert exe is not None, "DCMTK's storescp is not installed"
    proc = subprocess.Popen([exe, *tls_opts, "-aet", ae, "-od", str(folder), "-uf", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=archive.env)
    try:
        wait_listening(port, proc)
        yield folder
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def move(port: int, calling: str, destination: str, study: str, context: ssl.SSLContext | None) -> list[Dataset]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    with scu(port, calling, context, contexts=(STUDY_ROOT_MOVE,)) as assoc:
        assert assoc.is_established
        return [status for status, _ in assoc.send_c_move(identifier, destination, STUDY_ROOT_MOVE)]


def test_c_move_reaches_a_tls_destination_over_tls(secured: Secured, pki: Pki, tmp_path: Path) -> None:
    archive = secured.archive
    made = write_instances(tmp_path / "move", 3, patient_id="SECURE2")
    out = dcmtk(archive, "storescu", *with_tls(pki.secure_ct, pki.ca), "-aet", "SECURE_CT", "-aec", "COFFRE",
                "127.0.0.1", str(secured.tls_port), *(str(p) for p in made.values()))
    assert out.returncode == 0, out.stdout + out.stderr
    study = str(dcmread(next(iter(made.values()))).StudyInstanceUID)
    # SECURE_PACS's SCP speaks TLS only and requires the archive's client certificate
    scp_tls = ("+tls", str(pki.secure_pacs.key), str(pki.secure_pacs.cert), "+cf", str(pki.ca), "-rc")
    with storescp(archive, secured.secure_pacs_port, tmp_path / "received", "SECURE_PACS", scp_tls) as folder:
        statuses = move(secured.tls_port, "SECURE_PACS", "SECURE_PACS", study,
                        client_context(pki, pki.secure_pacs))
    final = statuses[-1]
    assert final.Status == 0x0000, final
    assert final.NumberOfCompletedSuboperations == 3
    received = {str(dcmread(p).SOPInstanceUID) for p in folder.iterdir()}
    assert received == set(made)


def test_c_move_to_a_tls_node_without_tls_is_refused(start_archive: Any, pki: Pki, tmp_path: Path) -> None:
    archive = start_archive()  # no [tls]
    dest_port = free_port()
    cli_ok(archive, "node", "add", "DEST_TLS", "--facility", "site-a", "--host", "127.0.0.1",
           "--port", str(dest_port), "--allow", "move-destination", "--certificate", str(pki.pacs_a.cert))
    made = write_instances(tmp_path / "clear", 1, patient_id="CLEAR1")
    out = dcmtk(archive, "storescu", "-aet", "MODALITY_A", "-aec", "COFFRE", "127.0.0.1",
                str(archive.dicom_port), *(str(p) for p in made.values()))
    assert out.returncode == 0, out.stdout + out.stderr
    study = str(dcmread(next(iter(made.values()))).StudyInstanceUID)
    since = last_event(archive)
    # a plain SCP listens where DEST_TLS is: it must receive nothing
    with storescp(archive, dest_port, tmp_path / "never", "DEST_TLS") as folder:
        statuses = move(archive.dicom_port, "PACS_A", "DEST_TLS", study, None)
    assert statuses[-1].Status == 0xA801
    assert list(folder.iterdir()) == []
    event = refused_once(archive, since, "the move destination requires TLS and [tls] is not enabled",
                         action="move")
    assert event["object_id"] == "DEST_TLS" and event["actor_name"] == "PACS_A"


# -- configuration and CLI -----------------------------------------------------------


def test_min_version_1_3_refuses_tls_1_2(start_archive: Any, pki: Pki) -> None:
    archive = start_archive(**tls_env(pki, COFFRE_TLS_MIN_VERSION="1.3"))
    port = tls_port(archive)
    since = last_event(archive)
    old = client_context(pki, pki.pacs_a)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    assert_tls_refused(port, old)
    event = refused_once(archive, since, "TLS handshake failed")
    assert "protocol" in event["detail"]["error"], event
    with scu(port, "PACS_A", client_context(pki, pki.pacs_a)) as assoc:
        assert assoc.is_established and assoc.dul.socket.socket.version() == "TLSv1.3"


@pytest.mark.parametrize("problem", ["not-a-certificate", "key-of-another-certificate", "ca-bundle-garbage",
                                     "missing-file", "encrypted-key"])
def test_bad_tls_files_are_configuration_errors(pki: Pki, tmp_path: Path, problem: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    files = {"certificate": str(pki.archive.cert), "private_key": str(pki.archive.key),
             "ca_certificates": str(pki.ca)}
    if problem == "not-a-certificate":
        files["certificate"] = str(garbage)
    elif problem == "key-of-another-certificate":
        files["private_key"] = str(pki.intruder.key)
    elif problem == "ca-bundle-garbage":
        files["ca_certificates"] = str(garbage)
    elif problem == "missing-file":
        files["certificate"] = str(tmp_path / "absent.pem")
    else:
        key = serialization.load_pem_private_key(pki.archive.key.read_bytes(), None)
        locked = tmp_path / "locked.key"
        locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.BestAvailableEncryption(b"secret")))
        files["private_key"] = str(locked)
    with pytest.raises(ConfigurationError, match=r"^\[tls\]") as raised:
        tls.server_context(TlsSettings(enabled=True, **files))
    if problem == "encrypted-key":
        assert "is encrypted" in raised.value.reason


def test_bad_tls_files_stop_the_server_at_start_up(pki: Pki, tmp_path: Path) -> None:
    env = tls_env(pki, COFFRE_TLS_PRIVATE_KEY=str(pki.intruder.key))
    out = subprocess.run([COFFRE, "serve", "--data", str(tmp_path / "data")], capture_output=True, text=True,
                         timeout=60, env=tool_env(COFFRE_DICOM_PORT="0", COFFRE_HTTP_PORT="0", **env))
    assert out.returncode != 0
    assert "ready" not in out.stdout
    assert "error:" in out.stderr and "cannot be used together" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_node_list_shows_bindings_and_bad_certificate_files_are_refused(secured: Secured, pki: Pki,
                                                                        tmp_path: Path) -> None:
    archive = secured.archive
    listing = cli_ok(archive, "node", "list")
    line = next(row for row in listing.splitlines() if "MODALITY_A" in row)
    assert pki.modality_a.fingerprint in line
    bare = next(row for row in listing.splitlines() if "SECURE_BARE" in row)
    assert "facility requires TLS" in bare
    facilities = cli_ok(archive, "facility", "list")
    assert "required" in next(row for row in facilities.splitlines() if "site-s" in row)
    garbage = tmp_path / "x.pem"
    garbage.write_text("nothing\n")
    out = archive.cli("node", "bind-certificate", "PACS_A", str(garbage))
    assert out.returncode == 2 and "no PEM or DER X.509 certificate" in out.stdout + out.stderr
    out = archive.cli("node", "bind-certificate", "NO_SUCH_NODE", str(pki.pacs_a.cert))
    assert out.returncode == 1 and "no node" in out.stderr
    events = archive.query("SELECT detail FROM audit_event WHERE action = 'node-bind-certificate' "
                           "AND object_id = 'MODALITY_A'")
    assert json.loads(events[-1]["detail"])["tls_fingerprint"] == pki.modality_a.fingerprint


def test_fingerprints_are_normalised_and_checked(tmp_path: Path, pki: Pki) -> None:
    ctx = build_context(load_settings(tmp_path / "data", {}))
    op = Actor.system("tests")
    try:
        add_facility(ctx, op, slug="site-x", name="Site X", issuer="SITE-X")
        colons = ":".join(pki.pacs_a.fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()  # as openssl prints
        node = add_node(ctx, op, ae_title="X_NODE", host="127.0.0.1", port=104, facility_slug="site-x",
                        permissions=frozenset({Permission.STORE}), tls_fingerprint=colons)
        assert node.tls_fingerprint == pki.pacs_a.fingerprint
        with pytest.raises(ConfigurationError, match="64 hex digits"):
            bind_certificate(ctx, op, "X_NODE", "abc123")
        assert unbind_certificate(ctx, op, "X_NODE").tls_fingerprint == ""
        with pytest.raises(NotFound):
            set_require_tls(ctx, op, "no-such-site", True)
    finally:
        ctx.close()
