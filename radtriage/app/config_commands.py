"""``radtriage config show``: the effective settings, where each came from, secrets masked."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from .config import load_settings_with_sources, masked


@click.group("config")
def config_group() -> None:
    """The settings radtriage runs with."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: {setting: {value, source}}.")
@click.option("--changed", is_flag=True, help="Only settings that are not at their default.")
@click.pass_obj
def show_command(obj: Any, as_json: bool, changed: bool) -> None:
    """Print every setting's effective value and its source (default, the TOML file, an environment variable).

    Secrets (passwords, the web session secret, a password inside a URL) are never printed.
    """
    config = obj.get("config") if isinstance(obj, dict) else None
    settings, sources = load_settings_with_sources(config)
    values = asdict(settings)
    names = [n for n in values if not changed or sources[n] != "default"]
    if as_json:
        click.echo(json.dumps({n: {"value": masked(n, values[n]), "source": sources[n]} for n in names}, indent=2))
        return
    width = max((len(n) for n in names), default=0)
    for name in names:
        shown = masked(name, values[name]) or '""'
        click.echo(f"{name:<{width}} = {shown}    ({sources[name]})")
