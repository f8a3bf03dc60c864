"""``cloud.dry_run``: every check of a request, and nothing else.

Each method runs what the real one runs before it changes anything (the acting account, the
image's visibility, every rule, the policies), in the core, and raises exactly what the real
request would raise; it returns ``None`` and changes nothing when the request would pass.
Playbook dry runs ask it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._checks import as_str_list

if TYPE_CHECKING:
    from .cloud import Cloud


class DryRun:
    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud

    def import_image(self, source: str | os.PathLike[str], *, region: str, name: str,
                     os_type: str = "linux", os_name: str = "", os_version: str = "",
                     os_arch: str = "x86_64", format: str | None = None,
                     description: str = "") -> None:
        self._cloud._import(source, False, region=region, name=name, os_type=os_type,
                            os_name=os_name, os_version=os_version, os_arch=os_arch,
                            format=format, description=description, wait=True,
                            progress=False, validate_only=True)

    def replicate(self, image_id: str, to: str | list[str], *, name: str | None = None) -> None:
        self._cloud._engine.replicate(self._cloud.account, image_id, as_str_list(to, "to"),
                                      name, None, validate_only=True)

    def share(self, image_id: str, accounts: str | list[str]) -> None:
        self._cloud._engine.share(self._cloud.account, image_id,
                                  as_str_list(accounts, "accounts"), validate_only=True)

    def unshare(self, image_id: str, accounts: str | list[str]) -> None:
        self._cloud._engine.unshare(self._cloud.account, image_id,
                                    as_str_list(accounts, "accounts"), validate_only=True)

    def rename_image(self, image_id: str, name: str) -> None:
        self._cloud._engine.rename(self._cloud.account, image_id, name, validate_only=True)

    def delete_image(self, image_id: str) -> None:
        self._cloud._engine.delete(self._cloud.account, image_id, validate_only=True)

    def remove_region(self, region_id: str) -> None:
        self._cloud._engine.remove_region(self._cloud.account, region_id, validate_only=True)

    def remove_account(self, account_id: str) -> None:
        self._cloud._engine.remove_account(self._cloud.account, account_id, validate_only=True)
