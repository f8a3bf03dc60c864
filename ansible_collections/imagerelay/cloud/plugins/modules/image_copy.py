#!/usr/bin/python
# -*- coding: utf-8 -*-

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: image_copy
short_description: Replicate an image to other regions
version_added: "0.1.0"
description:
  - Copies a C(Custom) image of the acting account to each region of O(regions) that holds
    no copy of it yet, as one replicate job, and (with O(wait)) waits for the copies.
  - A region holds a copy when it has an image of the account whose source is this image,
    in any status but C(CreateFailed) (a failed copy is made again). Copies in flight are
    waited for, not started again.
  - Returns the copies' ids by region, for sharing them (sharing is regional).
  - The source image is named by O(image_id), or by O(name) and O(region).
options:
  regions:
    description: The destination regions.
    type: list
    elements: str
    required: true
  copy_name:
    description: The name of new copies; by default the source's name.
    type: str
  wait:
    description:
      - Wait until every copy is C(Available) (or failed).
      - Without waiting, the copies still in flight when the module ends are left to the
        next process that opens the home, such as C(imagerelay worker --until-idle).
    type: bool
    default: true
  wait_timeout:
    description: Seconds to wait; past them the module fails with code C(Timeout) and the
      copies go on.
    type: int
    default: 3600
extends_documentation_fragment:
  - imagerelay.cloud.common
  - imagerelay.cloud.image
attributes:
  check_mode:
    support: full
    description: Runs every check of the replicate request in imagerelay's core (rules,
      sizes, regions, policies) and starts no copy.
  diff_mode:
    support: full
    description: Shows the regions holding copies before and after.
seealso:
  - module: imagerelay.cloud.image
  - module: imagerelay.cloud.image_share
author:
  - imagerelay developers
"""

EXAMPLES = r"""
- name: Copy the image "golden" of bj to gz and su
  imagerelay.cloud.image_copy:
    name: golden
    region: bj
    regions: [gz, su]
  register: copies

- name: Share each copy with team-b
  imagerelay.cloud.image_share:
    image_id: "{{ item.value }}"
    accounts: [team-b]
  loop: "{{ copies.copies | dict2items }}"

- name: Start the copies of an image and leave them to the worker
  imagerelay.cloud.image_copy:
    image_id: m-3k9x2q7a
    regions: [su]
    copy_name: golden-su
    wait: false
"""

RETURN = r"""
copies:
  description: The id of the copy in each region of O(regions) that has one (in check mode,
    only those that exist already).
  returned: always
  type: dict
  sample: {"gz": "m-7f2k1c9z", "su": "m-0b4q8r2d"}
images:
  description: Each copy, as C(Image.to_dict()), by region.
  returned: always
  type: dict
source:
  description: The source image, as C(Image.to_dict()); null in check mode when an earlier
    task would create it.
  returned: always
  type: dict
job:
  description: The replicate job started for the missing regions, as C(Job.to_dict()),
    with its tasks by region.
  returned: when a job was started
  type: dict
code:
  description: imagerelay's stable error code of a failure (BCC's where BCC has one),
    for example C(Image.ImageNotSupportCopy) or C(Job.Failed).
  returned: failure
  type: str
  sample: Image.ImageNotSupportCopy
problems:
  description: Every rule the request broke, each with its C(code) and C(message).
  returned: failure
  type: list
  elements: dict
"""

from ansible_collections.imagerelay.cloud.plugins.module_utils.connection import (
    IMAGE_OPTION_RULES, ImageRelayModule, image_argument_spec, ir)
from ansible_collections.imagerelay.cloud.plugins.module_utils.results import (
    image_json, to_json)


class ImageCopyModule(ImageRelayModule):
    argument_spec = dict(
        image_argument_spec(),
        regions=dict(type="list", elements="str", required=True),
        copy_name=dict(type="str"),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="int", default=3600),
    )
    module_kwargs = IMAGE_OPTION_RULES
    start_workers = True  # the copies run in this process while it waits

    def run(self):
        p = self.params
        regions = list(dict.fromkeys(p["regions"]))
        source = self.find_image()
        if source is None:  # check mode: an earlier task would create it
            return self.result(
                True, {"regions": []}, {"regions": sorted(regions)}, copies={}, images={},
                source=None,
                msg="would copy %s (%s) to %s once an earlier task creates it; not checked "
                    "further" % (p["name"], p["region"], ", ".join(regions)))
        if not regions:
            self.cloud.dry_run.replicate(source.id, [])  # the core's Image.DestRegionIsEmpty
        copies = {}
        for region in regions:
            copy = self._copy_in(source, region)
            if copy is not None:
                copies[region] = copy
        for copy in copies.values():
            if copy.status == "NotAvailable":
                raise ir.ImageBusyError(
                    "the copy %s in %s is NotAvailable (%s): scrub repairs it, or delete it "
                    "and copy again" % (copy.id, copy.region, copy.error or "damaged"),
                    code="Image.ImageStatusForbidden")
        missing = [r for r in regions if r not in copies]
        before = {"regions": sorted(copies)}
        after = {"regions": sorted(regions)}
        if self.check_mode:
            if missing:  # every rule and policy of the real request, in the core
                self.cloud.dry_run.replicate(source.id, missing, name=p["copy_name"])
            return self.result(bool(missing), before, after, **self._values(
                source, copies, None, "would copy %s to %s" % (source.id, ", ".join(missing))
                if missing else self._already(source, copies)))
        job = None
        if missing:
            job = self.cloud.replicate(source.id, missing, name=p["copy_name"])
        if p["wait"]:
            if job is not None:
                job = job.wait(p["wait_timeout"])  # ReplicationFailedError: Job.Failed
            for region, copy in copies.items():
                if copy.status == "Replicating" and copy.progress is not None:
                    copies[region] = self._waited(copy)
        if job is not None:
            copies.update(job.copies)
        msg = ("copied %s to %s (job %s)" % (source.id, ", ".join(missing), job.id)
               if job is not None else self._already(source, copies))
        return self.result(job is not None, before, after,
                           **self._values(source, copies, job, msg))

    def _copy_in(self, source, region):
        """The account's copy of ``source`` in ``region`` (not a failed one), or None."""
        try:
            images = self.cloud.images(region, image_type="Custom")
        except ir.NotFoundError:
            return None  # no such region: the replicate request says so, with its code
        found = [i for i in images if i.source_image_id == source.id
                 and i.owner == self.cloud.account and i.status != "CreateFailed"]
        found.sort(key=lambda i: i.status != "Available")  # a usable one first
        return found[0] if found else None

    def _waited(self, copy):
        """A copy in flight, once it is done; fails if it did not become Available."""
        copy = copy.wait(self.params["wait_timeout"])
        if copy.status not in ("Available", "Replicating"):
            raise ir.ReplicationFailedError(
                "the copy %s in %s ended %s%s" % (copy.id, copy.region, copy.status,
                                                  ": %s" % copy.error if copy.error else ""),
                code="Job.Failed")
        return copy

    @staticmethod
    def _already(source, copies):
        return "%s has copies in %s" % (source.id, ", ".join(sorted(copies)) or "no region")

    @staticmethod
    def _values(source, copies, job, msg):
        return dict(source=image_json(source),
                    copies={r: c.id for r, c in sorted(copies.items())},
                    images={r: image_json(c) for r, c in sorted(copies.items())},
                    job=to_json(job.to_dict()) if job is not None else None, msg=msg)


def main():
    ImageCopyModule()()


if __name__ == "__main__":
    main()
