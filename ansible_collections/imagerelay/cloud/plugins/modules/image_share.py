#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: image_share
short_description: Share an image with accounts, or stop sharing it
version_added: "0.1.0"
description:
  - Shares a C(Custom) image of the acting account with the accounts of O(accounts) that it
    is not shared with yet (O(state=present)), or stops sharing it with those it is shared
    with (O(state=absent)). The module changes something only if the set of accounts
    changes.
  - Sharing is regional - to hand an image to an account in several regions, copy it
    there (M(imagerelay.cloud.image_copy)) and share each copy.
options:
  accounts:
    description: The accounts to share the image with, or to stop sharing it with.
    type: list
    elements: str
    required: true
  state:
    description:
      - V(present) shares the image with O(accounts); V(absent) stops sharing it with them.
    type: str
    choices: [present, absent]
    default: present
  purge_accounts:
    description:
      - With O(state=present), also stop sharing the image with every account not in
        O(accounts), so that it is shared with exactly O(accounts).
    type: bool
    default: false
extends_documentation_fragment:
  - imagerelay.cloud.common
  - imagerelay.cloud.image
attributes:
  check_mode:
    support: full
    description: Runs every check of the share and unshare requests in imagerelay's core
      and changes nothing.
  diff_mode:
    support: full
    description: Shows the accounts the image is shared with, before and after.
seealso:
  - module: imagerelay.cloud.image_copy
author:
  - imagerelay developers
"""

EXAMPLES = r"""
- name: Share the copies of "golden" in gz and su with team-b
  imagerelay.cloud.image_share:
    name: golden
    region: "{{ item }}"
    accounts: [team-b]
  loop: [gz, su]

- name: Share an image with exactly team-b and team-c
  imagerelay.cloud.image_share:
    image_id: m-7f2k1c9z
    accounts: [team-b, team-c]
    purge_accounts: true

- name: Stop sharing it with team-c
  imagerelay.cloud.image_share:
    image_id: m-7f2k1c9z
    accounts: [team-c]
    state: absent
"""

RETURN = r"""
shared_with:
  description: The accounts the image is shared with afterwards (in check mode, would be).
  returned: always
  type: list
  elements: str
  sample: [team-b]
added:
  description: The accounts the image was (would be) shared with by this task.
  returned: always
  type: list
  elements: str
removed:
  description: The accounts the image was (would be) no longer shared with.
  returned: always
  type: list
  elements: str
image:
  description: The image, as C(Image.to_dict()); null in check mode when an earlier task
    would create it.
  returned: always
  type: dict
code:
  description: imagerelay's stable error code of a failure (BCC's where BCC has one),
    for example C(Image.CannotShareToOwner).
  returned: failure
  type: str
  sample: Image.UnCustomImageCannotBeShared
problems:
  description: Every rule the request broke, each with its C(code) and C(message).
  returned: failure
  type: list
  elements: dict
"""

from ansible_collections.imagerelay.cloud.plugins.module_utils.connection import (
    IMAGE_OPTION_RULES, ImageRelayModule, image_argument_spec, ir)
from ansible_collections.imagerelay.cloud.plugins.module_utils.results import image_json


class ImageShareModule(ImageRelayModule):
    argument_spec = dict(
        image_argument_spec(),
        accounts=dict(type="list", elements="str", required=True),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        purge_accounts=dict(type="bool", default=False),
    )
    module_kwargs = IMAGE_OPTION_RULES

    def run(self):
        p = self.params
        accounts = list(dict.fromkeys(p["accounts"]))
        present = p["state"] == "present"
        image = self._image(present)
        if image is None and not present:
            return self.result(False, {"shared_with": []}, {"shared_with": []}, image=None,
                               shared_with=[], added=[], removed=[],
                               msg="no such image: it is shared with nobody")
        if image is None:  # check mode: an earlier task would create it
            return self.result(
                True, {"shared_with": []}, {"shared_with": sorted(accounts)}, image=None,
                shared_with=sorted(accounts), added=accounts, removed=[],
                msg="would share %s (%s) with %s once an earlier task creates it; not "
                    "checked further" % (p["name"], p["region"], ", ".join(accounts)))
        purge = present and p["purge_accounts"]
        if not accounts and not purge:
            self._check(present, image, [])  # the core's Image.AccountListIsEmpty
        current = self._shared_users(image, present, accounts)
        if present:
            added = [a for a in accounts if a not in current]
            removed = [a for a in current if a not in accounts] if purge else []
        else:
            added, removed = [], [a for a in accounts if a in current]
        # Every rule and policy of each request first (in the core), then the change:
        # unsharing first frees room under the share quotas.
        if removed:
            self.cloud.dry_run.unshare(image.id, removed)
        if added:
            self.cloud.dry_run.share(image.id, added)
        if not self.check_mode:
            if removed:
                self.cloud.unshare(image.id, removed)
            if added:
                self.cloud.share(image.id, added)
        after = sorted((set(current) | set(added)) - set(removed))
        changed = bool(added or removed)
        return self.result(changed, {"shared_with": sorted(current)}, {"shared_with": after},
                           image=image_json(image, after), shared_with=after, added=added,
                           removed=removed, msg=self._message(image, added, removed))

    def _image(self, present):
        """The image; None in check mode for one an earlier task would create, and for
        one that is gone when the task only unshares."""
        try:
            return self.find_image()
        except ir.NotFoundError:
            if present:
                raise
            return None

    def _shared_users(self, image, present, accounts):
        """The accounts the image is shared with. Only its owner may read them: for any
        other image the request itself fails with the core's code (for a System image
        Image.UnCustomImageCannotBeShared rather than AccessDenied)."""
        try:
            return self.cloud.shared_users(image.id)
        except ir.ImageRelayError as error:
            self._check(present, image, accounts)
            raise error

    def _check(self, present, image, accounts):
        if present:
            self.cloud.dry_run.share(image.id, accounts)
        else:
            self.cloud.dry_run.unshare(image.id, accounts)

    def _message(self, image, added, removed):
        share, unshare = (("would share", "would unshare") if self.check_mode
                          else ("shared", "unshared"))
        parts = []
        if added:
            parts.append("%s %s with %s" % (share, image.id, ", ".join(added)))
        if removed:
            parts.append("%s %s from %s" % (unshare, image.id, ", ".join(removed)))
        return "; ".join(parts) or "%s: nothing to change" % image.id


def main():
    ImageShareModule()()


if __name__ == "__main__":
    main()
