#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: image
short_description: Import an image into a region, or delete it
version_added: "0.1.0"
description:
  - With O(state=present), imports a file, block device or URL into a region as a C(Custom)
    image of the acting account, unless the account already has an image of that name
    there. The existing image must be usable (C(Available), or C(Replicating) while copies
    of it are made); one still C(Creating) is waited for. Images whose import failed
    (C(CreateFailed)) do not count; the file is imported again.
  - With O(state=absent), deletes the account's images of that name in the region (or the
    image O(image_id)); nothing to delete is not a change.
  - An existing image is matched by name and region only; its bytes and OS fields are not
    compared with O(source) (imagerelay cannot change them in place).
options:
  name:
    description:
      - The image's name (1-65 characters, a letter first, then letters, digits, C(-_./)).
      - Required unless O(image_id) is given.
    type: str
  region:
    description:
      - The region the image is in (for example C(bj)).
      - Required with O(name).
    type: str
  image_id:
    description:
      - The image to delete, by id (C(m-) and 8 characters); O(state=absent) only.
    type: str
  state:
    description:
      - V(present) imports the image if the region has none of that name; V(absent)
        deletes it.
    type: str
    choices: [present, absent]
    default: present
  source:
    description:
      - What to import with O(state=present) when the image does not exist yet - a file or
        block device on the host that runs the module, or an C(http://), C(https://) or
        C(s3://bucket/key?endpoint=...) URL.
    type: str
  format:
    description:
      - What the file must be. Left out, the format and the disk's size are read from the
        file's header; given, the header must say the same (else the task fails with
        C(InvalidParameter)). The bytes are stored as they are.
    type: str
    choices: [raw, qcow2, vmdk, vhd]
  os_type:
    description: The OS type recorded with a new image.
    type: str
    default: linux
  os_name:
    description: The OS name recorded with a new image (for example C(ubuntu)).
    type: str
    default: ""
  os_version:
    description: The OS version recorded with a new image (for example C(24.04)).
    type: str
    default: ""
  os_arch:
    description: The architecture recorded with a new image.
    type: str
    default: x86_64
  description:
    description: A description recorded with a new image.
    type: str
    default: ""
  wait_timeout:
    description:
      - Seconds to wait for an existing image that is still C(Creating) (an import started
        elsewhere). A new import is always waited for, as long as it takes.
    type: int
    default: 600
extends_documentation_fragment:
  - imagerelay.cloud.common
attributes:
  check_mode:
    support: full
    description: Runs every check of the import or delete in imagerelay's core and changes
      nothing.
  diff_mode:
    support: full
    description: Shows the images of that name in the region before and after.
seealso:
  - module: imagerelay.cloud.image_copy
  - module: imagerelay.cloud.image_info
author:
  - imagerelay developers
"""

EXAMPLES = r"""
- name: Import golden.raw into bj as "golden" (once)
  imagerelay.cloud.image:
    home: /srv/imagerelay
    name: golden
    region: bj
    source: /data/golden.raw
    os_name: ubuntu
    os_version: "24.04"
  register: golden

- name: Delete the image "golden" of bj
  imagerelay.cloud.image:
    name: golden
    region: bj
    state: absent

- name: Delete an image by id, as the account team-b
  imagerelay.cloud.image:
    image_id: m-3k9x2q7a
    account: team-b
    state: absent
"""

RETURN = r"""
image:
  description:
    - The image (O(state=present)), as C(Image.to_dict()) - null in check mode when it
      would be imported.
  returned: when O(state=present)
  type: dict
  contains:
    id:
      description: The image's id.
      type: str
      sample: m-3k9x2q7a
    name:
      description: Its name.
      type: str
      sample: golden
    region:
      description: Its region.
      type: str
      sample: bj
    status:
      description: C(Available), C(Replicating), C(Creating), C(CreateFailed) or C(NotAvailable).
      type: str
      sample: Available
    size:
      description: Its size in bytes.
      type: int
      sample: 2147483648
    digest:
      description: C(sha256:<hex>) of the whole image; null while it is computed.
      type: str
    owner:
      description: The account that owns it.
      type: str
    created_at:
      description: When it was created (ISO 8601, UTC).
      type: str
deleted:
  description: The ids of the images deleted (or, in check mode, that would be).
  returned: when O(state=absent)
  type: list
  elements: str
  sample: [m-3k9x2q7a]
code:
  description: imagerelay's stable error code of a failure (BCC's where BCC has one).
  returned: failure
  type: str
  sample: Image.ImageHasBeenSharedToOthers
problems:
  description: Every rule the request broke, each with its C(code) and C(message).
  returned: failure
  type: list
  elements: dict
"""

from ansible_collections.imagerelay.cloud.plugins.module_utils.connection import (
    IMAGE_OPTION_RULES, ImageRelayModule, image_argument_spec, ir, own_image_named,
    own_images_named)
from ansible_collections.imagerelay.cloud.plugins.module_utils.results import image_json

_IMPORT_OPTIONS = ("format", "os_type", "os_name", "os_version", "os_arch", "description")
# Replicating: an Available image with copies of it in flight
_USABLE = ("Available", "Replicating")


def _listing(images):
    return [{"id": i.id, "name": i.name, "region": i.region, "status": str(i.status)}
            for i in images]


class ImageModule(ImageRelayModule):
    argument_spec = dict(
        image_argument_spec(),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        source=dict(type="str"),
        format=dict(type="str", choices=["raw", "qcow2", "vmdk", "vhd"]),
        os_type=dict(type="str", default="linux"),
        os_name=dict(type="str", default=""),
        os_version=dict(type="str", default=""),
        os_arch=dict(type="str", default="x86_64"),
        description=dict(type="str", default=""),
        wait_timeout=dict(type="int", default=600),
    )
    module_kwargs = dict(IMAGE_OPTION_RULES, required_if=[("state", "present", ("name",))])

    def run(self):
        if self.params["state"] == "present":
            return self._present()
        return self._absent()

    def _present(self):
        p = self.params
        where = {"name": p["name"], "region": p["region"]}
        image = own_image_named(self.cloud, p["region"], p["name"])
        if image is not None and image.status == "Creating" and not self.check_mode:
            image = image.wait(p["wait_timeout"])  # an import started elsewhere
            if image.status == "CreateFailed":
                image = None  # it failed: import again
        if image is not None:
            if image.status not in _USABLE and image.status != "Creating":
                raise ir.ImageBusyError(
                    "image %s (%s in %s) exists but is %s%s: delete it, or scrub to repair it"
                    % (image.id, image.name, image.region, image.status,
                       " (%s)" % image.error if image.error else ""),
                    code="Image.ImageStatusForbidden")
            state = dict(where, state="present", images=_listing([image]))
            return self.result(False, state, state, image=image_json(image),
                               msg="%s is already in %s" % (image.id, image.region))
        if not p["source"]:
            raise ir.ValidationError(
                "no image named %r in %s: give source to import it" % (p["name"], p["region"]),
                code="InvalidParameter")
        options = {k: p[k] for k in _IMPORT_OPTIONS}
        before = dict(where, state="absent", images=[])
        after = dict(where, state="present", images=[dict(where, source=p["source"])])
        if self.check_mode:
            # every check of the real import (source, region, rules, policies), in the core
            self.cloud.dry_run.import_image(p["source"], region=p["region"], name=p["name"],
                                            **options)
            return self.result(True, before, after, image=None,
                               msg="would import %s into %s as %s"
                                   % (p["source"], p["region"], p["name"]))
        image = self.cloud.import_image(p["source"], region=p["region"], name=p["name"],
                                        wait=True, **options)
        after["images"] = _listing([image])
        return self.result(True, before, after, image=image_json(image),
                           msg="imported %s into %s as %s" % (p["source"], p["region"], image.id))

    def _absent(self):
        p = self.params
        if p["image_id"]:
            try:
                images = [self.cloud.image(p["image_id"])]
            except ir.NotFoundError:
                images = []  # gone already (or never visible to this account)
            where = {"image_id": p["image_id"]}
        else:
            images = own_images_named(self.cloud, p["region"], p["name"])
            where = {"name": p["name"], "region": p["region"]}
        before = dict(where, state="present" if images else "absent", images=_listing(images))
        after = dict(where, state="absent", images=[])
        # Every check first (in the core), so that one image that may not go stops them all.
        for image in images:
            self.cloud.dry_run.delete_image(image.id)
        if not self.check_mode:
            for image in images:
                self.cloud.delete_image(image.id)
        ids = [i.id for i in images]
        verb = "would delete" if self.check_mode else "deleted"
        return self.result(bool(images), before, after, deleted=ids,
                           msg="%s %s" % (verb, ", ".join(ids)) if ids else "nothing to delete")


def main():
    ImageModule()()


if __name__ == "__main__":
    main()
