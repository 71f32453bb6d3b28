"""DICOM TLS (PS3.15 Annex B secure transport connection profiles) for the DIMSE adapter.

The archive's TLS listener follows the BCP 195 TLS Secure Transport Connection Profile
(PS3.15 B.9) and the BCP 195 RFC 8996 TLS profile (PS3.15 B.12, non-downgrading):

- TLS 1.2 and TLS 1.3 only (``[tls] min_version`` may raise the floor to 1.3); TLS 1.0,
  1.1 and SSL are never negotiated (RFC 8996). OpenSSL prefers TLS 1.3 when the peer
  offers it, as B.12 asks of servers.
- TLS 1.2 cipher suites: ECDHE key exchange with AES-GCM only (``TLS12_CIPHER_SUITES``,
  the recommended suites of RFC 7525 / RFC 9325 section 4.2 without finite-field DHE);
  TLS 1.3 suites are OpenSSL's defaults, all AEAD (AES-GCM, ChaCha20-Poly1305).
- No TLS compression, no renegotiation, server cipher preference.
- Mutual authentication: every peer presents a client certificate issued by one of the
  CAs of ``[tls] ca_certificates`` (``CERT_REQUIRED``). The Coffre node a certificate
  speaks for is decided at admission (``services.facilities.admit``) from the
  certificate's SHA-256 ``fingerprint`` bound to the node.

The same parameters make the client context with which the archive reaches a TLS
C-MOVE destination (its own certificate as client certificate; the destination's
certificate verified against the CA bundle and the node's host name).

This module reads certificate files; bad files raise ``ConfigurationError`` when the
context is built, i.e. at start-up.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from coffre.errors import ConfigurationError
from coffre.settings import TlsSettings

log = logging.getLogger(__name__)

#: TLS 1.2 cipher suites (IANA name, OpenSSL name), in the server's order of preference.
TLS12_CIPHER_SUITES: tuple[tuple[str, str], ...] = (
    ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384"),
)
#: TLS 1.3 cipher suites (OpenSSL's defaults, which Python cannot change).
TLS13_CIPHER_SUITES: tuple[str, ...] = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                                        "TLS_AES_128_GCM_SHA256")
PROFILES = (
    "BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.9)",
    "BCP 195 RFC 8996 TLS Secure Transport Connection Profile (PS3.15 B.12)",
)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What the operator needs to know about a certificate file (no private data)."""

    #: SHA-256 of the DER certificate, 64 lowercase hex digits
    fingerprint: str
    subject: str
    issuer: str
    not_after: datetime


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER-encoded certificate, lowercase hex (what a node is bound to)."""
    return hashlib.sha256(der).hexdigest()


def read_certificate(path: Path | str) -> CertificateInfo:
    """The first certificate of a PEM (or DER) file: the leaf of a chain file."""
    where = Path(path)
    try:
        data = where.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read certificate {where}: {exc.strerror or exc}") from None
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
            cert = certs[0]
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError:
        raise ConfigurationError(f"{where} holds no PEM or DER X.509 certificate") from None
    return CertificateInfo(
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
    )


def certificate_fingerprint(path: Path | str) -> str:
    """SHA-256 fingerprint of the (first) certificate of a PEM file, for the CLI."""
    return read_certificate(path).fingerprint


def _base_context(protocol: int, settings: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = _VERSIONS.get(settings.min_version, ssl.TLSVersion.TLSv1_2)
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_ciphers(":".join(name for _iana, name in TLS12_CIPHER_SUITES))
    context.verify_mode = ssl.CERT_REQUIRED
    # reject malformed certificates (as Python 3.13's default contexts do)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _load(context: ssl.SSLContext, settings: TlsSettings) -> None:
    for key, value in (("certificate", settings.certificate), ("private_key", settings.private_key),
                       ("ca_certificates", settings.ca_certificates)):
        if not value:
            raise ConfigurationError(f"[tls] {key} is required")
        if not Path(value).is_file():
            raise ConfigurationError(f"[tls] {key}: no file {value}")
    def no_passphrase() -> str:
        # never OpenSSL's prompt on the terminal: the archive starts unattended
        raise ConfigurationError(f"[tls] private_key {settings.private_key} is encrypted; "
                                 "give the archive an unencrypted key readable by it alone (mode 0600)")

    try:
        context.load_cert_chain(settings.certificate, settings.private_key, password=no_passphrase)
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"[tls] certificate {settings.certificate} and private_key {settings.private_key} cannot be used "
            f"together ({exc.reason or exc}); both must be PEM, the key unencrypted and matching the certificate"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"[tls] cannot read certificate or private_key: {exc.strerror or exc}") from None
    try:
        context.load_verify_locations(cafile=settings.ca_certificates)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"[tls] ca_certificates {settings.ca_certificates} is not a PEM bundle of CA certificates "
            f"({getattr(exc, 'reason', None) or exc})"
        ) from None
    if not context.get_ca_certs():
        raise ConfigurationError(f"[tls] ca_certificates {settings.ca_certificates} holds no CA certificate")
    own = read_certificate(settings.certificate)
    if own.not_after < datetime.now(UTC):
        log.warning("the archive's TLS certificate expired on %s: peers will refuse it",
                    own.not_after.isoformat(timespec="seconds"))


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """The listener's context: the archive's certificate, client certificates required."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, settings)
    _load(context, settings)
    return context


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """The context of the archive's own associations (C-MOVE to a TLS destination).

    The archive presents its certificate (which must then allow client authentication:
    no extended key usage, or both serverAuth and clientAuth) and verifies the
    destination's certificate chain against ``ca_certificates`` and its host name.
    """
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, settings)
    context.check_hostname = True
    _load(context, settings)
    return context


def describe_error(exc: BaseException) -> str:
    """A short, patient-free label of a handshake failure for logs and audit."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.library or "TLS error").lower().replace("_", " ")
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    return type(exc).__name__
