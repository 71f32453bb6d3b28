"""Share links: images for a GP or a patient, behind a link and an access code (a grant).

**Creation** (:func:`create_share`): a user allowed ``Action.SHARE`` (radiologists and
clinicians, ``services.access``) shares one study (by StudyInstanceUID) or all of one
person's studies in a date range. The studies are fixed at creation: exactly the ones
the creator may retrieve *now* (its RETRIEVE scope from ``services.grants``, the one
predicate of DESIGN 5), stored in ``share_link_study``; a study that is not visible is
indistinguishable from an absent one. The link also fixes an expiry (at most
``[territory] share_link_max_days``), a maximum number of uses, whether downloading is
allowed and a free-text recipient label. Two secrets are returned once and never
stored in clear: the **link token** (256 random bits, URL-safe; the index keeps its
SHA-256) and the **access code** given to the recipient separately (10 characters of
an unambiguous alphabet, shown as ``XXXXX-XXXXX``; the index keeps its argon2id hash,
``services.users``' hasher).

**Use** (:func:`open_share`): the holder of the link types the access code. A wrong
code counts a failure; the :data:`MAX_FAILED_CODES`-th locks the link for good (even
the right code is then refused; audited ``share-locked`` as a security alert). A link
that is unknown, expired, revoked, used up or locked is refused with one and the same
:class:`LinkUnavailable`, so the answer is no oracle; the argon2 work is done in every
case. The right code on a usable link counts one use (a conditional update: never
beyond the maximum) and yields a **recipient session**: a short-lived access token
(EdDSA, Coffre's signing key, ``aud`` :data:`SESSION_AUDIENCE`, header ``typ``
:data:`SESSION_TYPE`, claim ``share``) valid ``[territory] share_session_minutes`` and
never beyond the link's expiry. :func:`authenticate_share_token` turns it back into the
recipient actor (``Actor.for_recipient``) at every request, reading the link again: a
revoked, expired or locked link ends its sessions at once. Coffre's user-token
verification refuses these tokens (wrong audience), and this module refuses user tokens.

**Revocation** (:func:`revoke_share`): by the link's creator, or an actor allowed
``MANAGE_FACILITY`` on the link's facility (its admins, the territory admin, the
operator). Every step is audited with the person's id: ``grant-share`` (creation),
``grant-revoked`` (object ``share``), ``share-open``, ``share-code-refused``,
``share-locked``, ``share-view``; downloads (``share-download``) in ``services.export``.
Tokens and codes never appear in the audit trail or the logs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from coffre.app import Context
from coffre.dicom.uid import check_uid
from coffre.errors import BadRequest, NotAuthorized, NotFound
from coffre.index import shares as index
from coffre.index.engine import Tx
from coffre.index.persons import current_person
from coffre.index.shares import SharedStudy, ShareRow
from coffre.model import Actor, ActorKind
from coffre.services import audit, auth
from coffre.services.access import Action, Resource, authorize, is_allowed
from coffre.services.grants import PersonRef, resolve_person, scope_for
from coffre.services.tokens import NotAuthenticated
from coffre.services.users import hash_password

log = logging.getLogger(__name__)

#: wrong access codes that lock a link for good
MAX_FAILED_CODES = 5
DEFAULT_DAYS = 7
MAX_USES = 1000
MAX_RECIPIENT = 200
#: the access code's alphabet: digits and capitals without 0/O, 1/I/L (31 symbols)
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10
#: the audience and header type of recipient session tokens
SESSION_AUDIENCE = "coffre-share"
SESSION_TYPE = "share+jwt"
#: where the recipient opens a link
LINK_PATH = "/share/"
_ALGORITHM = "EdDSA"
_LEEWAY = 30
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")
_DATE = re.compile(r"^[0-9]{8}$")
_MAX_SESSION_TOKEN = 4096
_REFUSED = "this link is not available"
#: the one answer to any refused bearer credential (the same as ``services.auth``'s)
_REFUSED_SESSION = "a valid bearer token is required"
#: verifies any argon2 hash (its parameters are in the hash)
_VERIFIER = PasswordHasher()


class LinkUnavailable(NotFound):
    """Unknown, expired, revoked, used-up or locked: one answer for all (no oracle)."""

    def __init__(self) -> None:
        super().__init__(_REFUSED)


class WrongCode(NotAuthenticated):
    """The access code does not match; the failure was counted."""

    def __init__(self) -> None:
        super().__init__("the access code is not valid")


# -- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShareRequest:
    """What to share: one study (``study_instance_uid``) or a person's studies in a range."""

    study_instance_uid: str = ""
    person: PersonRef | None = None
    #: inclusive bounds YYYYMMDD on the study date ("" = open); person scope only
    date_from: str = ""
    date_to: str = ""
    #: lifetime in days; None: :data:`DEFAULT_DAYS` (or the maximum, if lower)
    days: int | None = None
    max_uses: int = 5
    allow_download: bool = False
    recipient: str = ""


@dataclass(frozen=True, slots=True)
class CreatedShare:
    """A new link. ``token`` and ``access_code`` exist only here: show them once."""

    id: int
    token: str
    access_code: str
    expires_at: datetime
    studies: int
    #: the link's path on this server (``/share/<token>``)
    path: str


@dataclass(frozen=True, slots=True)
class ShareInfo:
    """A link as its creator or an admin sees it (never a secret)."""

    id: int
    person_id: int
    facility_id: int
    created_by: str
    recipient: str
    scope: str
    date_from: str
    date_to: str
    allow_download: bool
    max_uses: int
    uses: int
    failed_attempts: int
    state: str
    studies: int
    created_at: datetime
    expires_at: datetime
    locked_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str


@dataclass(frozen=True, slots=True)
class RecipientSession:
    """The access token of a recipient's session and when it ends."""

    token: str
    expires_at: datetime
    share_id: int


@dataclass(frozen=True, slots=True)
class SharePage:
    """What the recipient sees: the link's studies and whether it may download them."""

    share_id: int
    recipient: str
    allow_download: bool
    expires_at: datetime
    studies: list[SharedStudy]


# -- settings ------------------------------------------------------------------------------


def max_days(ctx: Context) -> int:
    return ctx.settings.territory.share_link_max_days


def session_minutes(ctx: Context) -> int:
    return ctx.settings.territory.share_session_minutes


# -- secrets -------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """SHA-256 (hex) of a link token: 256 random bits need no slow hash."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def new_access_code() -> str:
    """10 symbols of :data:`CODE_ALPHABET` (about 49.5 bits), uniformly drawn."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def format_code(code: str) -> str:
    """``ABCDE-FGHJK``: how the code is shown to the creator."""
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}"


def normalize_code(text: str) -> str:
    """What the recipient typed, without spaces and dashes, in capitals (``""`` if it cannot be a code)."""
    cleaned = "".join(c for c in text[:64] if c not in " -\t").upper()
    if len(cleaned) != CODE_LENGTH or any(c not in CODE_ALPHABET for c in cleaned):
        return ""
    return cleaned


@functools.cache
def _dummy_code_hash() -> str:
    """The hash of a code nobody knows: unknown links cost the same argon2 work."""
    return hash_password(secrets.token_urlsafe(16))


def _code_matches(code_hash: str, code: str) -> bool:
    try:
        return _VERIFIER.verify(code_hash, code or "-")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def is_link_token(token: str) -> bool:
    """The shape of a link token (43 URL-safe base64 characters); anything else is unknown."""
    return bool(_TOKEN.fullmatch(token))


# -- creation ------------------------------------------------------------------------------


def _check_date(value: str, name: str) -> str:
    value = value.strip()
    if value and not _DATE.fullmatch(value):
        raise BadRequest(f"{name} must be a date YYYYMMDD")
    if value:
        try:
            datetime.strptime(value, "%Y%m%d")
        except ValueError:
            raise BadRequest(f"{name} is not a valid date") from None
    return value


def _by(actor: Actor) -> str:
    return actor.subject or actor.name


def create_share(ctx: Context, actor: Actor, request: ShareRequest) -> CreatedShare:
    """Create a link to the studies ``actor`` may retrieve now (module doc); audited."""
    authorize(actor, Action.SHARE, Resource(actor.facility_id))
    if actor.facility is None:
        raise BadRequest("a share link is created for a facility: act for one")
    limit = max_days(ctx)
    days = min(DEFAULT_DAYS, limit) if request.days is None else request.days
    if not 0 < days <= limit:
        raise BadRequest(f"a share link lasts 1 to {limit} days")
    if not 0 < request.max_uses <= MAX_USES:
        raise BadRequest(f"a share link is used 1 to {MAX_USES} times")
    recipient = " ".join(request.recipient.split())
    if len(recipient) > MAX_RECIPIENT:
        raise BadRequest(f"the recipient label has at most {MAX_RECIPIENT} characters")
    date_from = _check_date(request.date_from, "date_from")
    date_to = _check_date(request.date_to, "date_to")
    if date_from and date_to and date_from > date_to:
        raise BadRequest("date_from is after date_to")
    by_study = bool(request.study_instance_uid)
    if by_study == (request.person is not None):
        raise BadRequest("share one study (study_instance_uid) or one person's studies (person), not both")
    if by_study and (date_from or date_to):
        raise BadRequest("a date range applies to a person's studies only")
    uid = check_uid(request.study_instance_uid, "StudyInstanceUID") if by_study else None
    person_id = None if request.person is None else resolve_person(ctx, actor, request.person)

    token = secrets.token_urlsafe(32)
    code = new_access_code()
    code_hash = hash_password(code)
    now = ctx.clock()
    expires_at = now + timedelta(days=days)
    with ctx.db.write() as tx:
        scope = scope_for(ctx, tx, actor, Action.RETRIEVE)
        if person_id is not None:
            person_id = current_person(tx, person_id)
            found = index.visible_studies(tx, scope, person_id=person_id, date_from=date_from, date_to=date_to)
        else:
            found = index.visible_studies(tx, scope, study_instance_uid=uid)
            persons = {s.person_id for s in found}
            if len(persons) > 1 or None in persons:
                found = []  # one UID held for several persons: refuse rather than guess
            person_id = next(iter(persons)) if found else None
        studies = found if person_id is not None else []
        share_id = 0
        if studies and person_id is not None:
            share_id = index.insert_share(
                tx, token_hash=hash_token(token), code_hash=code_hash, person_id=person_id,
                facility_id=actor.facility.id, created_by=_by(actor), recipient=recipient,
                scope="study" if by_study else "person", date_from=date_from, date_to=date_to,
                allow_download=request.allow_download, max_uses=request.max_uses, created_at=now,
                expires_at=expires_at, study_pks=[s.study_pk for s in studies])
            audit.record(ctx, tx, actor, "grant-share", object_type="share", object_id=str(share_id),
                         person_id=person_id,
                         detail={"scope": "study" if by_study else "person", "studies": len(studies),
                                 "study_uids": sorted({s.study_instance_uid for s in studies})[:100],
                                 "date_from": date_from, "date_to": date_to, "days": days,
                                 "max_uses": request.max_uses, "download": request.allow_download})
    if not share_id:  # nothing was written: the refusal leaves no trace but this answer
        raise NotFound("study not found" if by_study else "no study of this person to share in this range")
    log.info("share link %d created by %s for %d studies", share_id, actor.describe(), len(studies))
    return CreatedShare(id=share_id, token=token, access_code=format_code(code), expires_at=expires_at,
                        studies=len(studies), path=LINK_PATH + token)


# -- listing and revocation ----------------------------------------------------------------


def _info(row: ShareRow, studies: int, now: datetime) -> ShareInfo:
    return ShareInfo(
        id=row.id, person_id=row.person_id, facility_id=row.facility_id, created_by=row.created_by,
        recipient=row.recipient, scope=row.scope, date_from=row.date_from, date_to=row.date_to,
        allow_download=row.allow_download, max_uses=row.max_uses, uses=row.uses,
        failed_attempts=row.failed_attempts, state=row.state(now), studies=studies, created_at=row.created_at,
        expires_at=row.expires_at, locked_at=row.locked_at, revoked_at=row.revoked_at, revoked_by=row.revoked_by)


def list_shares(ctx: Context, actor: Actor, *, facility_wide: bool = False) -> list[ShareInfo]:
    """The actor's links, newest first. ``facility_wide``: also every link of the
    facilities whose admin it is (``MANAGE_FACILITY``); every link for the territory
    admin and the operator (``MANAGE_TERRITORY``)."""
    if actor.kind is ActorKind.RECIPIENT:
        raise NotAuthorized("a recipient lists no share links")
    created_by: str | None = _by(actor)
    facility_ids: frozenset[int] | None = None
    if facility_wide:
        if is_allowed(actor, Action.MANAGE_TERRITORY, Resource(None)):
            created_by = None
        else:
            facility_ids = frozenset(
                f for f in actor.facility_ids if is_allowed(actor, Action.MANAGE_FACILITY, Resource(f)))
    with ctx.db.read() as tx:
        rows = index.list_shares(tx, created_by=created_by, facility_ids=facility_ids)
        counts = index.study_counts(tx, (r.id for r in rows))
    now = ctx.clock()
    return [_info(r, counts.get(r.id, 0), now) for r in rows]


def revoke_share(ctx: Context, actor: Actor, share_id: int) -> None:
    """End a link now (its sessions end at their next request); audited ``grant-revoked``.

    Others' links the actor may not revoke are :class:`NotFound`, like absent ones.
    """
    with ctx.db.write() as tx:
        row = index.get_share(tx, share_id)
        allowed = row is not None and actor.kind is not ActorKind.RECIPIENT and (
            row.created_by == _by(actor) or is_allowed(actor, Action.MANAGE_FACILITY, Resource(row.facility_id))
        )
        if row is not None and allowed:
            changed = index.revoke(tx, share_id, at=ctx.clock(), by=_by(actor))
            audit.record(ctx, tx, actor, "grant-revoked", facility_id=row.facility_id, object_type="share",
                         object_id=str(share_id), person_id=row.person_id,
                         detail={"kind": "share", **({} if changed else {"already": True})})
    if row is None or not allowed:
        raise NotFound("share link not found")


# -- use -----------------------------------------------------------------------------------


def _anonymous(address: str, share_id: int | None = None) -> Actor:
    if share_id is None:
        return Actor(kind=ActorKind.RECIPIENT, name="anonymous", facility=None, address=address)
    return Actor.for_recipient(share_id, frozenset(), address)


def link_available(ctx: Context, token: str) -> bool:
    """Whether ``token`` names a usable link (for the code form; answers nothing else)."""
    if not is_link_token(token):
        return False
    with ctx.db.read() as tx:
        row = index.find_by_token_hash(tx, hash_token(token))
    return row is not None and row.state(ctx.clock()) == "active"


def _record_use(
    ctx: Context, tx: Tx, who: Actor, row: ShareRow, action: str, outcome: str, **detail: object
) -> None:
    audit.record(ctx, tx, who, action, outcome=outcome, facility_id=row.facility_id, object_type="share",
                 object_id=str(row.id), person_id=row.person_id, detail=detail)


def open_share(ctx: Context, token: str, code: str, *, address: str) -> RecipientSession:
    """Check the access code of link ``token``: a recipient session, or
    :class:`WrongCode` (counted), or :class:`LinkUnavailable` (module doc). Audited."""
    row = None
    if is_link_token(token):
        with ctx.db.read() as tx:
            row = index.find_by_token_hash(tx, hash_token(token))
    # the same argon2 work whatever the link's state, so timing tells nothing either
    matches = _code_matches(row.code_hash if row is not None else _dummy_code_hash(), normalize_code(code))
    if row is None:
        audit.record_alone(ctx, _anonymous(address), "share-open", outcome="refused", object_type="share",
                           detail={"reason": "unknown"})
        raise LinkUnavailable
    who = _anonymous(address, row.id)
    now = ctx.clock()
    # decided inside the transaction, raised after it: a refusal's audit must commit
    outcome = "unavailable"
    with ctx.db.write() as tx:
        fresh = index.get_share(tx, row.id)
        state = fresh.state(now) if fresh is not None else "unknown"
        if fresh is None or state != "active":
            _record_use(ctx, tx, who, row, "share-open", "refused", reason=state,
                        code="right" if matches else "wrong")
        elif not matches:
            failures, locked = index.count_failure(tx, row.id, now=now, max_failures=MAX_FAILED_CODES)
            _record_use(ctx, tx, who, row, "share-code-refused", "refused", failures=failures)
            if locked:
                _record_use(ctx, tx, who, row, "share-locked", "alert", failures=failures)
            outcome = "locked" if locked else "wrong-code"
        elif index.count_use(tx, row.id, now=now):
            _record_use(ctx, tx, who, row, "share-open", "success", use=fresh.uses + 1, max_uses=fresh.max_uses)
            outcome = "opened"
        else:  # used up or ended between the read and the update
            _record_use(ctx, tx, who, row, "share-open", "refused", reason="used-up", code="right")
    if outcome == "opened":
        return _issue_session(ctx, row, now)
    if outcome == "wrong-code":
        raise WrongCode
    if outcome == "locked":
        log.warning("security alert: share link %d locked after %d wrong access codes", row.id, MAX_FAILED_CODES)
    raise LinkUnavailable


def _issue_session(ctx: Context, row: ShareRow, now: datetime) -> RecipientSession:
    key = auth.signing_key(ctx)
    s = ctx.settings.security
    ends = min(now + timedelta(minutes=session_minutes(ctx)), row.expires_at)
    issued = int(now.timestamp())
    claims = {"iss": s.token_issuer, "aud": SESSION_AUDIENCE, "sub": f"share:{row.id}", "share": row.id,
              "iat": issued, "nbf": issued, "exp": int(ends.timestamp()), "jti": secrets.token_hex(16)}
    token = jwt.encode(claims, key.private, algorithm=_ALGORITHM, headers={"kid": key.kid, "typ": SESSION_TYPE})
    return RecipientSession(token=token, expires_at=datetime.fromtimestamp(int(ends.timestamp()), UTC),
                            share_id=row.id)


# -- sessions ------------------------------------------------------------------------------


def is_share_token(token: str) -> bool:
    """Whether a bearer credential declares itself a recipient session token (header
    ``typ`` :data:`SESSION_TYPE` and audience :data:`SESSION_AUDIENCE`), to route it to
    :func:`authenticate_share_token`, which verifies everything. Any other JWT goes to
    the user-token verification, which refuses a share session (its ``typ``)."""
    if token.count(".") != 2 or len(token) > _MAX_SESSION_TOKEN:
        return False
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return False
    return header.get("typ") == SESSION_TYPE and claims.get("aud") == SESSION_AUDIENCE


class _Refused(Exception):
    def __init__(self, reason: str, share_id: int | None = None, row: ShareRow | None = None) -> None:
        super().__init__(reason)
        self.reason, self.share_id, self.row = reason, share_id, row


def _claims(ctx: Context, token: str) -> dict[str, Any]:
    if not is_share_token(token):
        raise _Refused("malformed")
    key = auth.signing_key(ctx)
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != _ALGORITHM:
            raise _Refused("algorithm")
        if header.get("kid") != key.kid:
            raise _Refused("unknown-key")
        claims: dict[str, Any] = jwt.decode(
            token, key.public, algorithms=[_ALGORITHM], audience=SESSION_AUDIENCE,
            issuer=ctx.settings.security.token_issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti", "share"], "verify_exp": False,
                     "verify_nbf": False, "verify_iat": False})
    except jwt.InvalidSignatureError:
        raise _Refused("signature") from None
    except jwt.InvalidAudienceError:
        raise _Refused("audience") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _Refused("invalid") from None
    now = ctx.clock().timestamp()
    exp, iat, share = claims["exp"], claims["iat"], claims["share"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (exp, iat, share)):
        raise _Refused("bad-claims")
    if now > exp + _LEEWAY:
        raise _Refused("expired", share)
    if iat > now + _LEEWAY:
        raise _Refused("not-yet-valid", share)
    return claims


def authenticate_share_token(ctx: Context, token: str, address: str) -> Actor:
    """The recipient actor of a session token, or :class:`NotAuthenticated` (audited).

    The link is read again: revoked, expired or locked links end their sessions now.
    """
    try:
        claims = _claims(ctx, token)
        share_id = int(claims["share"])
        with ctx.db.read() as tx:
            row = index.get_share(tx, share_id)
            studies = index.studies_of(tx, share_id) if row is not None else frozenset()
        if row is None:
            raise _Refused("unknown-share", share_id)
        state = row.state(ctx.clock())
        if state not in ("active", "used-up"):  # used up: sessions opened before still run
            raise _Refused(f"share-{state}", share_id, row)
    except _Refused as refused:
        audit.record_alone(
            ctx, _anonymous(address, refused.share_id), "authenticate", outcome="refused",
            facility_id=refused.row.facility_id if refused.row else None,
            detail={"reason": refused.reason, "scheme": "share"})
        raise NotAuthenticated(_REFUSED_SESSION) from None
    return Actor.for_recipient(share_id, studies, address)


# -- the recipient's view ------------------------------------------------------------------


def recipient_share(ctx: Context, actor: Actor) -> ShareRow:
    """The link of a recipient actor (``NotAuthorized`` for any other actor)."""
    if actor.kind is not ActorKind.RECIPIENT or actor.share_id is None:
        raise NotAuthorized("only the holder of a share link sees its page")
    with ctx.db.read() as tx:
        row = index.get_share(tx, actor.share_id)
    if row is None:
        raise LinkUnavailable
    return row


def shared_studies(ctx: Context, actor: Actor) -> SharePage:
    """The studies of the recipient's link, for its page; audited ``share-view``."""
    row = recipient_share(ctx, actor)
    authorize(actor, Action.QUERY, Resource(None))
    with ctx.db.write() as tx:
        studies = index.studies_by_pk(tx, actor.share_studies)
        audit.record(ctx, tx, actor, "share-view", facility_id=row.facility_id, object_type="share",
                     object_id=str(row.id), person_id=row.person_id, detail={"studies": len(studies)})
    return SharePage(share_id=row.id, recipient=row.recipient, allow_download=row.allow_download,
                     expires_at=row.expires_at, studies=studies)
