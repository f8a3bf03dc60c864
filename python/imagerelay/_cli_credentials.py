"""Where ``imagerelay regions add`` takes an S3 region's credentials from: the options, a
prompt, a file or the environment of that moment. Never from the command line itself for a
secret: it would show in ``ps`` and the shell's history. The engine keeps them in
``<home>/credentials/<region>.json`` (mode 0600), as ``cloud.add_region`` does."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from .errors import ValidationError

_SOURCES = "`prompt`, `env` or `file:PATH`"


def region_credentials(args: argparse.Namespace) -> dict[str, str]:
    """The keyword arguments of ``cloud.add_region`` for the credentials options given
    (empty: the region uses each command's AWS_* variables)."""
    if args.credentials_from_env:
        if args.access_key_id or args.secret_access_key or args.session_token:
            raise ValidationError("--credentials-from-env takes every credential from the "
                                  "environment; give it alone, or the other options alone")
        key_id, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get(
            "AWS_SECRET_ACCESS_KEY")
        if not key_id or not secret:
            raise ValidationError("--credentials-from-env: AWS_ACCESS_KEY_ID and "
                                  "AWS_SECRET_ACCESS_KEY must both be set")
        out = {"access_key_id": key_id, "secret_access_key": secret}
        if os.environ.get("AWS_SESSION_TOKEN"):
            out["session_token"] = os.environ["AWS_SESSION_TOKEN"]
        return out
    if not (args.access_key_id or args.secret_access_key or args.session_token):
        return {}
    out = {}
    if args.access_key_id:
        out["access_key_id"] = (_from_env("AWS_ACCESS_KEY_ID", "--access-key-id")
                                if args.access_key_id == "env" else args.access_key_id)
    secret_source = args.secret_access_key
    if secret_source is None and args.access_key_id:
        if not sys.stdin.isatty():
            raise ValidationError("--access-key-id needs its secret: give --secret-access-key "
                                  "env or file:PATH (there is no terminal to ask on)")
        secret_source = "prompt"
    if secret_source is not None:
        out["secret_access_key"] = _secret(secret_source, "--secret-access-key",
                                           "AWS_SECRET_ACCESS_KEY",
                                           f"secret access key for region {args.region_id}: ")
    if args.session_token is not None:
        out["session_token"] = _secret(args.session_token, "--session-token", "AWS_SESSION_TOKEN",
                                       f"session token for region {args.region_id}: ")
    return out


def _from_env(variable: str, option: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ValidationError(f"{option} env: {variable} is not set")
    return value


def _secret(source: str, option: str, variable: str, prompt: str) -> str:
    """A secret from `prompt`, `env` or `file:PATH`; never the secret itself."""
    if source == "prompt":
        value = getpass.getpass(prompt)
    elif source == "env":
        value = _from_env(variable, option)
    elif source.startswith("file:"):
        value = _first_line(source[len("file:"):], option)
    else:
        # Not echoed back: it may be the secret itself, given by mistake.
        raise ValidationError(f"{option} takes where the secret comes from ({_SOURCES}), "
                              "never the secret itself (it would show in `ps` and the "
                              "shell's history)")
    if not value:
        raise ValidationError(f"{option} {source}: the secret is empty")
    return value


def _first_line(path: str, option: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with Path(path).expanduser().open(encoding="utf-8") as f:
                text = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ValidationError(f"{option} file:{path}: cannot read it ({reason})") from None
    return text.rstrip("\r\n")
