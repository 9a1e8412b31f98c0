"""``coscale keys …``: make API keys for tenants (see :mod:`coscale.tenancy`).

``coscale keys new TENANT`` prints a new random key on stdout — and only the key, so
``export COSCALE_KEY_ALICE=$(coscale keys new alice)`` or ``coscale keys new alice >
alice.key`` work — and, on stderr, how to hand it to the server: the tenant's
``key_env`` (or ``key_file``) when ``--scenario`` is given, else the default variable
``COSCALE_KEY_<NAME>``. ``coscale keys new --admin`` makes the admin key
(``COSCALE_ADMIN_KEY``). Nothing is stored: the server reads the key from the
environment or the file when it starts, and keeps only a salted hash.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from coscale.errors import CoscaleError

keys_app = typer.Typer(
    name="keys",
    help="Make API keys for tenants (printed, never stored).",
    no_args_is_help=True,
)
_out = Console(soft_wrap=True, highlight=False)
_err = Console(stderr=True, soft_wrap=True, highlight=False)

_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def instructions(tenant: str | None, scenario: Path | None, key: str) -> str:
    """How to provide ``key`` (one paragraph): the variable or file it goes in."""
    from coscale.tenancy import ADMIN_KEY_ENV, default_key_env

    if tenant is None:
        return (
            f"admin key: export {ADMIN_KEY_ENV}={key} where `coscale serve` runs; send it as "
            "Authorization: Bearer <key> for /metrics and every tenant's /v1/stats."
        )
    if scenario is None:
        var = default_key_env(tenant)
        return (
            f"tenant {tenant!r}: export {var}={key} where `coscale serve` runs (the default "
            f"for a tenant without key_env/key_file; or set key_env: {var} in the "
            "scenario); clients send Authorization: Bearer <key>."
        )
    from coscale.config import load_scenario, suggest

    loaded = load_scenario(scenario)
    names = [t.name for t in loaded.tenants]
    spec = next((t for t in loaded.tenants if t.name == tenant), None)
    if spec is None:
        listed = ", ".join(names) if names else "none"
        raise CoscaleError(
            f"scenario {loaded.name!r} has no tenant {tenant!r}{suggest(tenant, names)} "
            f"(tenants: {listed}).",
            fix="pass a tenant the scenario lists, or add it under tenants: in the file.",
            code="unknown_tenant",
        )
    if spec.key_file is not None:
        return (
            f"tenant {tenant!r}: umask 077; printf '%s\\n' {key} > {spec.key_file}  (the "
            "scenario's key_file; or make key and file at once with `coscale keys new "
            f"{tenant} > {spec.key_file}`); clients send Authorization: Bearer <key>."
        )
    var = spec.key_env or default_key_env(tenant)
    return (
        f"tenant {tenant!r}: export {var}={key} where `coscale serve {scenario}` runs; "
        "clients send Authorization: Bearer <key>."
    )


@keys_app.command("new")
def new(
    tenant: Annotated[
        str | None, typer.Argument(help="Tenant name (as in the scenario's tenants).")
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option("--scenario", help="Scenario file: say where this tenant's key goes."),
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="Make the admin key (COSCALE_ADMIN_KEY) instead.")
    ] = False,
) -> None:
    """Print a new random API key (256 bits, URL-safe) and how to provide it."""
    from coscale.tenancy import new_key

    if admin == (tenant is not None):
        raise CoscaleError(
            "give a tenant name or --admin (exactly one).",
            fix="e.g. `coscale keys new alice` or `coscale keys new --admin`.",
            code="invalid_input",
        )
    if tenant is not None and not _SLUG.match(tenant):
        raise CoscaleError(
            f"{tenant!r} is not a tenant name.",
            fix="use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (as in the scenario).",
            code="invalid_input",
        )
    key = new_key()
    how = instructions(tenant, scenario, key)
    _out.print(key, markup=False)
    _err.print(how, markup=False)
