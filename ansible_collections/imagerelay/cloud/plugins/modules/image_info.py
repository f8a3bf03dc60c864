#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: image_info
short_description: List the images an account sees, or get one
version_added: "0.1.0"
description:
  - Lists the images the acting account sees (C(System) images, its own C(Custom) images
    and those shared with it, type C(Sharing)), filtered by region, type and name; or gets
    one image by id. Changes nothing.
options:
  image_id:
    description: One image, by id; fails with C(NoSuchImage) if the account cannot see it.
    type: str
  region:
    description: Only the images of this region.
    type: str
  name:
    description: Only the images of this exact name.
    type: str
  image_type:
    description: Only the images of this type.
    type: str
    choices: [All, System, Custom, Sharing]
    default: All
extends_documentation_fragment:
  - imagerelay.cloud.common
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so has nothing to show.
seealso:
  - module: imagerelay.cloud.image
author:
  - imagerelay developers
"""

EXAMPLES = r"""
- name: The images shared with team-b in gz
  imagerelay.cloud.image_info:
    account: team-b
    region: gz
    image_type: Sharing
  register: shared

- name: One image
  imagerelay.cloud.image_info:
    image_id: m-3k9x2q7a
  register: one

- ansible.builtin.debug:
    msg: "{{ one.images[0].status }}, shared with {{ one.images[0].shared_with }}"
"""

RETURN = r"""
images:
  description:
    - The images, as C(Image.to_dict()). The account's own images also have
      C(shared_with), the accounts they are shared with.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: The image's id.
      type: str
      sample: m-3k9x2q7a
    name:
      description: Its name.
      type: str
    region:
      description: Its region.
      type: str
    type:
      description: C(System), C(Custom), or C(Sharing) (an image shared with the account).
      type: str
    status:
      description: C(Available), C(Replicating), C(Creating), C(CreateFailed) or C(NotAvailable).
      type: str
    source_image_id:
      description: For a copy, the image it was copied from.
      type: str
    shared_with:
      description: The accounts the image is shared with (the account's own images only).
      type: list
      elements: str
code:
  description: imagerelay's stable error code of a failure, for example C(NoSuchImage).
  returned: failure
  type: str
"""

from ansible_collections.imagerelay.cloud.plugins.module_utils.connection import (
    ImageRelayModule)
from ansible_collections.imagerelay.cloud.plugins.module_utils.results import image_json


class ImageInfoModule(ImageRelayModule):
    argument_spec = dict(
        image_id=dict(type="str"),
        region=dict(type="str"),
        name=dict(type="str"),
        image_type=dict(type="str", choices=["All", "System", "Custom", "Sharing"],
                        default="All"),
    )
    module_kwargs = dict(
        mutually_exclusive=[("image_id", "region"), ("image_id", "name")],
    )

    def run(self):
        p = self.params
        if p["image_id"]:
            images = [self.cloud.image(p["image_id"])]
        else:
            images = self.cloud.images(p["region"], image_type=p["image_type"], name=p["name"])
        return dict(changed=False, images=[self._json(i) for i in images])

    def _json(self, image):
        own = image.owner == self.cloud.account and image.type == "Custom"
        return image_json(image, self.cloud.shared_users(image.id) if own else None)


def main():
    ImageInfoModule()()


if __name__ == "__main__":
    main()
