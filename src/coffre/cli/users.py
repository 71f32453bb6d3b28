"""``coffre token`` (API tokens of DICOMweb clients, access tokens of users) and
``coffre user`` (built-in users).

``coffre token --data DIR --user NAME`` prints a signed access token of a built-in
user (for scripts and tests); ``coffre token add|list|revoke`` manage the facilities'
API tokens. The group callback handles the first form (``invoke_without_command``) and
hands its ``--data`` down to the subcommands in the second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from coffre.cli.common import OPERATOR, DataOption, _context, _typer, err, out
from coffre.cli.nodes import _permissions
from coffre.errors import CoffreError
from coffre.model import Facility, Role

user_app = _typer("Built-in users of the territory (embedded mode).")
token_app = _typer(
    "API tokens of DICOMweb clients (one facility each); with --user NAME, print an access token of a user."
)
_TOKEN_COMMANDS = ("add", "list", "revoke")


@token_app.callback(invoke_without_command=True)
def token_main(
    context: typer.Context,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="The archive's data folder.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Print an access token for this built-in user.")] = None,
) -> None:
    """Print an access token for a built-in user (``--user``), or run a subcommand."""
    if context.invoked_subcommand is not None:
        if user is not None:
            err.print("[red]error:[/red] --user prints a token; it does not go with a subcommand")
            raise typer.Exit(2)
        if data is not None:  # ``coffre token --data DIR list``: the subcommand's --data defaults to it
            context.default_map = {name: {"data": str(data)} for name in _TOKEN_COMMANDS}
        return
    if data is None or user is None:
        err.print("[red]error:[/red] use `coffre token --data DIR --user NAME`, or a command: add, list, revoke")
        raise typer.Exit(2)
    from coffre.services.auth import create_access_token

    with _context(data) as ctx:
        issued = create_access_token(ctx, OPERATOR, user)
    sys.stdout.write(issued.access_token + "\n")


@token_app.command("add")
def token_add(
    data: DataOption,
    name: Annotated[str, typer.Argument(help="Token name, unique within the facility.")],
    facility: Annotated[str, typer.Option(help="Slug of the facility the client acts for.")],
    allow: Annotated[str, typer.Option(help="store,query,retrieve")] = "store,query,retrieve",
) -> None:
    """Create an API token; it is printed once and only its hash is kept."""
    from coffre.services.tokens import create_token

    with _context(data) as ctx:
        token = create_token(ctx, OPERATOR, facility_slug=facility, name=name, permissions=_permissions(allow))
    out.print(token, soft_wrap=True)


@token_app.command("list")
def token_list(data: DataOption) -> None:
    """List API tokens (names, facilities, permissions; never the tokens)."""
    from coffre.services.tokens import list_tokens

    with _context(data) as ctx:
        table = Table("facility", "name", "may", "created", "revoked")
        for t in list_tokens(ctx):
            table.add_row(t.facility.slug, t.name, ",".join(sorted(p.value for p in t.permissions)),
                          t.created_at.isoformat(timespec="seconds"),
                          t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "")
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    data: DataOption,
    name: Annotated[str, typer.Argument()],
    facility: Annotated[str, typer.Option(help="Slug of the token's facility.")],
) -> None:
    """Revoke an API token; it is refused from the next request on."""
    from coffre.services.tokens import revoke_token

    with _context(data) as ctx:
        revoke_token(ctx, OPERATOR, facility_slug=facility, name=name)
    out.print(f"token {name} revoked")




# -- users -----------------------------------------------------------------------------


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _roles(value: str) -> frozenset[Role]:
    from coffre.services.users import parse_roles

    try:
        return parse_roles(_split(value))
    except CoffreError as exc:
        raise typer.BadParameter(exc.reason) from None


def _read_password(from_stdin: bool) -> str:
    """The new password: one line of standard input, or typed twice at a terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        err.print("[red]error:[/red] no terminal to type a password: use --password-stdin")
        raise typer.Exit(2)
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


RolesOption = Annotated[str, typer.Option("--role", "-r", help="Roles, comma-separated: " + ", ".join(r.value for r in Role) + ".")]
FacilitiesOption = Annotated[str, typer.Option("--facility", "-f", help="Facility slugs, comma-separated.")]
StdinOption = Annotated[bool, typer.Option("--password-stdin", help="Read the password from one line of standard input.")]


@user_app.command("add")
def user_add(
    data: DataOption,
    name: Annotated[str, typer.Argument(help="User name: a-z, 0-9, '.', '_', '-' (e.g. radiologue.chu-nord).")],
    role: RolesOption,
    facility: FacilitiesOption = "",
    display_name: Annotated[str, typer.Option(help="Name shown to people.")] = "",
    password_stdin: StdinOption = False,
    no_password: Annotated[bool, typer.Option("--no-password", help="No password login (tokens from `coffre token --user` only).")] = False,
) -> None:
    """Create a built-in user (password: 12 characters or more)."""
    from coffre.services.users import create_user

    roles = _roles(role)
    password = None if no_password else _read_password(password_stdin)
    with _context(data) as ctx:
        user = create_user(ctx, OPERATOR, username=name, password=password, roles=roles,
                           facilities=_split(facility), display_name=display_name)
    out.print(f"user {escape(user.username)} created: {escape(_roles_text(user.roles))} "
              f"at {escape(_facilities_text(user.facilities)) or 'no facility (territory-wide)'}")


def _roles_text(roles: frozenset[Role]) -> str:
    return ",".join(sorted(r.value for r in roles))


def _facilities_text(facilities: tuple[Facility, ...]) -> str:
    return ",".join(f.slug for f in facilities)


@user_app.command("list")
def user_list(data: DataOption) -> None:
    """List the built-in users (never their passwords)."""
    from coffre.services.users import list_users

    with _context(data) as ctx:
        now = ctx.clock()
        table = Table("user", "name", "roles", "facilities", "active", "locked until")
        for u in list_users(ctx, OPERATOR):
            locked = u.locked_until.isoformat(timespec="seconds") if u.locked_until and u.locked_until > now else ""
            table.add_row(escape(u.username), escape(u.display_name), _roles_text(u.roles),
                          _facilities_text(u.facilities), "yes" if u.active else "no", locked)
    out.print(table)


@user_app.command("passwd")
def user_passwd(data: DataOption, name: Annotated[str, typer.Argument()], password_stdin: StdinOption = False) -> None:
    """Set a user's password; the user's current access tokens are revoked."""
    from coffre.services.users import set_password

    password = _read_password(password_stdin)
    with _context(data) as ctx:
        set_password(ctx, OPERATOR, name, password)
    out.print(f"password of {escape(name)} changed")


@user_app.command("roles")
def user_roles(
    data: DataOption,
    name: Annotated[str, typer.Argument()],
    role: RolesOption,
    facility: Annotated[str | None, typer.Option("--facility", "-f", help="Also replace the facilities (slugs, comma-separated).")] = None,
) -> None:
    """Replace a user's roles (and, with --facility, its facilities); applies at its next request."""
    from coffre.services.users import set_facilities, set_roles

    roles = _roles(role)
    with _context(data) as ctx:
        user = set_roles(ctx, OPERATOR, name, roles)
        if facility is not None:
            user = set_facilities(ctx, OPERATOR, name, _split(facility))
    out.print(f"user {escape(user.username)}: {escape(_roles_text(user.roles))} "
              f"at {escape(_facilities_text(user.facilities)) or 'no facility'}")


@user_app.command("disable")
def user_disable(data: DataOption, name: Annotated[str, typer.Argument()]) -> None:
    """Disable a user: no login, and its tokens are refused from its next request."""
    from coffre.services.users import disable

    with _context(data) as ctx:
        disable(ctx, OPERATOR, name)
    out.print(f"user {escape(name)} disabled")


@user_app.command("enable")
def user_enable(data: DataOption, name: Annotated[str, typer.Argument()]) -> None:
    """Enable a user again (also lifts a lockout after wrong passwords)."""
    from coffre.services.users import enable

    with _context(data) as ctx:
        enable(ctx, OPERATOR, name)
    out.print(f"user {escape(name)} enabled")


@user_app.command("revoke-tokens")
def user_revoke_tokens(data: DataOption, name: Annotated[str, typer.Argument()]) -> None:
    """Refuse every access token issued to a user so far (sign out everywhere)."""
    from coffre.services.users import revoke_user_tokens

    with _context(data) as ctx:
        revoke_user_tokens(ctx, OPERATOR, name)
    out.print(f"tokens of {escape(name)} revoked")
