"""The portal's languages: French and English, one catalogue of every visible string.

The language of a page is, in order: the ``coffre_lang`` cookie (set by the language
switch, ``/portal/lang/{code}``), the best supported language of ``Accept-Language``
(RFC 9110 12.5.4, with q-values), else French (the territory's language). Pages set
``<html lang>`` accordingly. A message is looked up by key with
:meth:`Translator.__call__`; placeholders are ``{name}`` (values are escaped by the
layout, never here). A test checks that both languages have every key.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

LANGUAGES = ("fr", "en")
DEFAULT_LANGUAGE = "fr"
LANG_COOKIE = "coffre_lang"

#: key -> (French, English)
MESSAGES: dict[str, tuple[str, str]] = {
    "app.tagline": ("Archive d'imagerie du territoire", "The territory's imaging archive"),
    "nav.patients": ("Patients", "Patients"),
    "nav.shares": ("Liens de partage", "Share links"),
    "nav.admin": ("Administration", "Administration"),
    "nav.signout": ("Se déconnecter", "Sign out"),
    "nav.signed_in_as": ("Connecté : {name}", "Signed in as {name}"),
    "nav.language": ("Langue", "Language"),
    "nav.main": ("Navigation principale", "Main navigation"),
    "lang.fr": ("Français", "Français"),
    "lang.en": ("English", "English"),
    "footer.audit": ("Chaque accès aux données de patients est tracé.",
                     "Every access to patient data is recorded."),
    # sign-in
    "login.title": ("Connexion", "Sign in"),
    "login.username": ("Nom d'utilisateur", "User name"),
    "login.password": ("Mot de passe", "Password"),
    "login.submit": ("Se connecter", "Sign in"),
    "login.oidc": ("Se connecter avec {provider}", "Sign in with {provider}"),
    "login.or": ("ou", "or"),
    "login.failed": ("Nom d'utilisateur ou mot de passe incorrect, ou compte verrouillé pour un "
                     "moment après trop d'échecs.",
                     "Invalid user name or password, or the account is locked for a while after "
                     "too many failures."),
    "login.required": ("Saisissez votre nom d'utilisateur et votre mot de passe.",
                       "Enter your user name and your password."),
    "login.expired": ("Votre session a pris fin : reconnectez-vous.",
                      "Your session has ended: please sign in again."),
    "login.signed_out": ("Vous êtes déconnecté.", "You are signed out."),
    "login.oidc_failed": ("La connexion avec {provider} a échoué. Réessayez.",
                          "Signing in with {provider} failed. Please try again."),
    "login.oidc_done": ("Connexion réussie.", "Signed in."),
    "login.continue": ("Continuer", "Continue"),
    # errors
    "error.title": ("Erreur", "Error"),
    "error.csrf": ("La demande n'a pas pu être vérifiée (formulaire expiré ou envoyé depuis un "
                   "autre site). Rechargez la page et réessayez.",
                   "The request could not be verified (an expired form, or one sent from another "
                   "site). Reload the page and try again."),
    "error.forbidden": ("Vous n'êtes pas autorisé à faire cela.", "You are not allowed to do this."),
    "error.not_found": ("Introuvable.", "Not found."),
    "error.invalid": ("Demande invalide.", "Invalid request."),
    "error.unavailable": ("Service momentanément indisponible.", "Service unavailable for now."),
    "error.reason_required": ("Le motif est obligatoire.", "A reason is required."),
    "error.reason_long": ("Le motif est trop long (500 caractères au plus).",
                          "The reason is too long (500 characters at most)."),
    "error.days": ("Durée invalide.", "Invalid duration."),
    "error.person": ("Patient introuvable.", "No such patient."),
    "error.back": ("Retour", "Back"),
    # search
    "search.title": ("Recherche de patients", "Patient search"),
    "search.label": ("Nom, date de naissance, IPP, établissement:IPP ou INS",
                     "Name, birth date, patient ID, facility:patient ID or INS"),
    "search.submit": ("Rechercher", "Search"),
    "search.hint": ("Exemples : MARTIN · martin claire · 12/04/1968 · CN100234 · "
                    "clinique-sud:CS-77812 · un INS de 15 caractères.",
                    "Examples: MARTIN · martin claire · 1968-04-12 · CN100234 · "
                    "clinique-sud:CS-77812 · a 15-character INS."),
    "search.none": ("Aucun patient que vous puissiez voir ne correspond à « {q} ».",
                    "No patient you may see matches “{q}”."),
    "search.results": ("Résultats pour « {q} »", "Results for “{q}”"),
    "search.truncated": ("D'autres résultats existent : précisez la recherche.",
                         "More results exist: refine the search."),
    "search.unknown_facility": ("Établissement inconnu : {facility}.", "Unknown facility: {facility}."),
    "search.studies": ("Examens visibles : {n}", "Visible studies: {n}"),
    "search.latest": ("Dernier examen : {date}", "Latest study: {date}"),
    "search.open": ("Parcours d'imagerie", "Imaging timeline"),
    "search.btg_offer": ("Aucun examen visible pour cet identifiant. En cas d'urgence, vous pouvez "
                         "ouvrir le dossier en bris de glace : l'accès est tracé, signalé et revu.",
                         "No visible study for this identifier. In an emergency you may break the "
                         "glass: the access is recorded, raises an alert and is reviewed."),
    # person fields
    "field.name": ("Nom", "Name"),
    "field.birth_date": ("Date de naissance", "Birth date"),
    "field.sex": ("Sexe", "Sex"),
    "field.identifiers": ("Identifiants", "Identifiers"),
    "sex.F": ("Féminin", "Female"),
    "sex.M": ("Masculin", "Male"),
    "sex.O": ("Autre", "Other"),
    "value.unknown": ("inconnu", "unknown"),
    # timeline
    "timeline.title": ("Parcours d'imagerie", "Imaging timeline"),
    "timeline.back": ("Retour à la recherche", "Back to the search"),
    "timeline.empty": ("Aucun examen que vous puissiez voir.", "No study you may see."),
    "timeline.count": ("Examens visibles : {n}", "Visible studies: {n}"),
    "timeline.study": ("Examen", "Study"),
    "timeline.date": ("Date", "Date"),
    "timeline.facility": ("Établissement", "Facility"),
    "timeline.modality": ("Modalité", "Modality"),
    "timeline.body_part": ("Région", "Body part"),
    "timeline.description": ("Description", "Description"),
    "timeline.report": ("Compte rendu", "Report"),
    "timeline.content": ("Contenu", "Content"),
    "timeline.images": ("séries : {series} · images : {instances}", "series: {series} · images: {instances}"),
    "timeline.open_viewer": ("Ouvrir dans la visionneuse", "Open in the viewer"),
    "timeline.compare": ("Comparer avec l'antérieur du {date}", "Compare with the prior of {date}"),
    "timeline.thumbnail": ("Aperçu de l'examen du {date}", "Preview of the study of {date}"),
    "report.none": ("pas de compte rendu", "no report"),
    "report.archived": ("compte rendu archivé", "report archived"),
    "access.break-glass": ("bris de glace", "break-the-glass"),
    "access.care": ("relation de soins", "care relationship"),
    "access.reading": ("lecture assignée", "reading assignment"),
    "access.shared": ("partage territorial", "territory sharing"),
    "access.other": ("autre établissement", "another facility"),
    "access.label": ("Accès : {reason}", "Access: {reason}"),
    "status.opposed": ("Ce patient s'oppose au partage de ses images entre établissements.",
                       "This patient opposes sharing their images between facilities."),
    "status.care": ("Relation de soins en cours jusqu'au {date}.",
                    "Care relationship in force until {date}."),
    "status.break_glass": ("Accès en bris de glace ouvert jusqu'à {time}, le {date}.",
                           "Break-the-glass access open until {time} on {date}."),
    # dialogs
    "dialog.reason": ("Motif", "Reason"),
    "dialog.care.title": ("Déclarer une relation de soins", "Record a care relationship"),
    "dialog.care.help": ("Votre établissement verra les examens de ce patient réalisés dans les "
                         "autres établissements du territoire, sauf opposition du patient.",
                         "Your facility will see this patient's studies from the territory's other "
                         "facilities, unless the patient opposes sharing."),
    "dialog.care.days": ("Durée en jours (1 à {max})", "Duration in days (1 to {max})"),
    "dialog.care.submit": ("Enregistrer la relation de soins", "Record the care relationship"),
    "dialog.btg.title": ("Bris de glace", "Break the glass"),
    "dialog.btg.help": ("Accès d'urgence à tous les examens de ce patient pendant {minutes} minutes, "
                        "même en cas d'opposition. Le motif est obligatoire ; l'accès est tracé, "
                        "signalé comme alerte de sécurité et revu par les établissements concernés.",
                        "Emergency access to all of this patient's studies for {minutes} minutes, "
                        "even against an opposition. The reason is mandatory; the access is "
                        "recorded, raises a security alert and is reviewed by the facilities concerned."),
    "dialog.btg.submit": ("Accéder en bris de glace", "Break the glass"),
    "dialog.opposition.title": ("Enregistrer l'opposition au partage",
                                "Record an opposition to sharing"),
    "dialog.opposition.help": ("À la demande du patient : les autres établissements ne verront plus "
                               "ses examens (sauf bris de glace).",
                               "At the patient's request: other facilities will no longer see their "
                               "studies (except by breaking the glass)."),
    "dialog.opposition.submit": ("Enregistrer l'opposition", "Record the opposition"),
    "dialog.withdraw.title": ("Lever l'opposition", "Withdraw the opposition"),
    "dialog.withdraw.help": ("À la demande du patient, le partage redevient possible.",
                             "At the patient's request, sharing becomes possible again."),
    "dialog.withdraw.submit": ("Lever l'opposition", "Withdraw the opposition"),
    # flash messages
    "flash.care": ("Relation de soins enregistrée.", "Care relationship recorded."),
    "flash.break_glass": ("Bris de glace enregistré : l'accès est ouvert et tracé.",
                          "Break-the-glass recorded: access is open and recorded."),
    "flash.opposition": ("Opposition enregistrée.", "Opposition recorded."),
    "flash.withdrawn": ("Opposition levée.", "Opposition withdrawn."),
    "flash.share_revoked": ("Lien de partage révoqué.", "Share link revoked."),
    "error.share_none": ("Aucun examen que vous puissiez partager dans ce choix.",
                         "No study you may share in this selection."),
    "error.share_dates": ("Période invalide.", "Invalid date range."),
    "error.share_uses": ("Nombre d'utilisations invalide.", "Invalid number of uses."),
    "error.share_recipient": ("Le destinataire est trop long (200 caractères au plus).",
                              "The recipient is too long (200 characters at most)."),
    # share links
    "share.title": ("Créer un lien de partage", "Create a share link"),
    "share.help": ("Un lien et un code d'accès, pour un médecin traitant ou le patient : il ou elle "
                   "verra les examens choisis, tels que vous les voyez maintenant, jusqu'à l'expiration.",
                   "A link and an access code, for a GP or the patient: they will see the chosen "
                   "studies, as you see them now, until the link expires."),
    "share.target": ("Examens partagés", "Studies shared"),
    "share.scope.all": ("Tous les examens du patient (dans la période)", "All of the patient's studies (in the range)"),
    "share.scope.study": ("Un examen", "One study"),
    "share.scope.range": ("Examens du {start} au {end}", "Studies from {start} to {end}"),
    "share.range": ("Période (tous les examens seulement ; vide = sans limite)",
                    "Date range (all studies only; empty = open)"),
    "share.date_from": ("Du", "From"),
    "share.date_to": ("Au", "To"),
    "share.days": ("Validité en jours (1 à {max})", "Valid for days (1 to {max})"),
    "share.max_uses": ("Nombre maximal d'utilisations (1 à {max})", "Maximum uses (1 to {max})"),
    "share.download": ("Autoriser le téléchargement", "Allow download"),
    "share.recipient": ("Destinataire", "Recipient"),
    "share.recipient_hint": ("ex. Dr Martin, médecin traitant", "e.g. Dr Martin, GP"),
    "share.submit": ("Créer le lien", "Create the link"),
    "share.created.title": ("Lien de partage créé", "Share link created"),
    "share.created.once": ("Le lien et le code ne sont affichés qu'une fois : Coffre ne les conserve pas "
                           "et ne pourra pas les afficher à nouveau.",
                           "The link and the code are shown only this once: Coffre does not keep them "
                           "and cannot show them again."),
    "share.created.url": ("Lien", "Link"),
    "share.created.code": ("Code d'accès", "Access code"),
    "share.created.separately": ("Transmettez le code séparément du lien (par un autre canal : "
                                 "téléphone, SMS, remis en main propre).",
                                 "Give the code separately from the link (by another channel: phone, "
                                 "text message, in person)."),
    "share.created.back": ("Retour au parcours d'imagerie", "Back to the imaging timeline"),
    "share.expires": ("Expiration", "Expires"),
    "share.at": ("{date} à {time}", "{date} at {time}"),
    "share.studies": ("Examens", "Studies"),
    "share.uses": ("{uses} / {max}", "{uses} / {max}"),
    "share.uses_label": ("Utilisations", "Uses"),
    "share.state": ("État", "State"),
    "share.state.active": ("actif", "active"),
    "share.state.expired": ("expiré", "expired"),
    "share.state.revoked": ("révoqué", "revoked"),
    "share.state.locked": ("verrouillé", "locked"),
    "share.state.used-up": ("épuisé", "used up"),
    "share.no_recipient": ("(non précisé)", "(not given)"),
    "share.revoke": ("Révoquer", "Revoke"),
    "share.list.link": ("Mes liens de partage", "My share links"),
    "share.list.title": ("Mes liens de partage", "My share links"),
    "share.list.help": ("Les liens que vous avez créés, du plus récent au plus ancien. Révoquer un lien "
                        "met fin aussitôt à son accès.",
                        "The links you created, newest first. Revoking a link ends its access at once."),
    "share.list.empty": ("Vous n'avez créé aucun lien de partage.", "You have created no share link."),
}

#: prefixes of the messages a redirect may carry (cookie ``coffre_flash``: "ok:key" / "error:key")
FLASH_PREFIXES = ("flash.", "error.", "login.", "admin.ok.", "admin.error.")


def is_flash_key(key: str) -> bool:
    """A catalogue message that may be carried to the next page (never free text)."""
    return key.startswith(FLASH_PREFIXES) and key in MESSAGES


@dataclass(frozen=True, slots=True)
class Translator:
    """The messages of one language."""

    lang: str

    def __call__(self, key: str, **values: object) -> str:
        pair = MESSAGES[key]
        text = pair[LANGUAGES.index(self.lang)]
        return text.format(**values) if values else text


def _accept_language(header: str) -> str | None:
    """The best supported language of an ``Accept-Language`` header (RFC 9110 12.5.4)."""
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(header.split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if primary in LANGUAGES and quality > 0 and (best is None or (quality, -position) > best[:2]):
            best = (quality, -position, primary)
    return best[2] if best else None


def language(request: Request) -> str:
    """The language of the page for this request (module doc)."""
    chosen = request.cookies.get(LANG_COOKIE, "")
    if chosen in LANGUAGES:
        return chosen
    return _accept_language(request.headers.get("accept-language", "")) or DEFAULT_LANGUAGE


def translator(request: Request) -> Translator:
    return Translator(language(request))


__all__ = ["DEFAULT_LANGUAGE", "LANGUAGES", "LANG_COOKIE", "MESSAGES", "Translator", "is_flash_key", "language",
           "translator"]
