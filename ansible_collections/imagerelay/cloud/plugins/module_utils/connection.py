# -*- coding: utf-8 -*-
"""What every module of imagerelay.cloud shares: the ``home`` and ``account`` options,
opening the home with the public Python API, check and diff mode, and failures that carry
imagerelay's stable code (BCC's where BCC has one) and every problem of the request."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

try:
    import imagerelay as ir
except ImportError:
    ir = None
    IMAGERELAY_IMPORT_ERROR = traceback.format_exc()
else:
    IMAGERELAY_IMPORT_ERROR = None

from ansible_collections.imagerelay.cloud.plugins.module_utils.results import to_json


def common_argument_spec():
    """The options of every module (documented in doc_fragments/common.py)."""
    return dict(
        home=dict(type="path", fallback=(env_fallback, ["IMAGERELAY_HOME"])),
        account=dict(type="str", fallback=(env_fallback, ["IMAGERELAY_ACCOUNT"])),
    )


def image_argument_spec():
    """The options that name one image: ``image_id``, or ``name`` and ``region``
    (doc_fragments/image.py); with :data:`IMAGE_OPTION_RULES`."""
    return dict(image_id=dict(type="str"), name=dict(type="str"), region=dict(type="str"))


IMAGE_OPTION_RULES = dict(
    required_one_of=[("name", "image_id")],
    mutually_exclusive=[("name", "image_id")],
    required_by={"name": "region"},
)


class ImageRelayModule:
    """Base of the modules, as openstack.cloud's OpenStackModule: a module sets
    ``argument_spec`` (and ``module_kwargs``), implements :meth:`run` with ``self.cloud``
    open, and calling the instance runs it and exits."""

    argument_spec = {}
    module_kwargs = {}
    # A module whose copies run in its own process (image_copy) starts the copy workers;
    # the others only read or make quick catalog changes.
    start_workers = False

    def __init__(self):
        spec = common_argument_spec()
        spec.update(self.argument_spec)
        self.module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                                    **self.module_kwargs)
        self.params = self.module.params
        self.cloud = None

    @property
    def check_mode(self):
        return self.module.check_mode

    def run(self):
        """Does (or, in check mode, checks) what the module asks; returns the result."""
        raise NotImplementedError

    def __call__(self):
        if ir is None:
            self.module.fail_json(
                msg=missing_required_lib(
                    "imagerelay",
                    reason="to reach an imagerelay home; set ansible_python_interpreter to "
                           "a Python that has it installed"),
                exception=IMAGERELAY_IMPORT_ERROR)
        try:
            with ir.open(self.params["home"], account=self.params["account"],
                         start_workers=self.start_workers) as cloud:
                self.cloud = cloud
                result = self.run()
        except ir.ImageRelayError as error:
            self.fail(error)
        self.module.exit_json(**result)

    def fail(self, error):
        """Fails with the error's code, HTTP status and every problem of the request."""
        extra = {}
        job = getattr(error, "job", None)  # ReplicationFailedError: the job, copies and all
        if job is not None:
            extra["job"] = to_json(job.to_dict())
        self.module.fail_json(
            msg=str(error), code=error.code, http_status=error.http_status,
            problems=[{"code": code, "message": message} for code, message in error.problems],
            **extra)

    def result(self, changed, before, after, **values):
        """The module's result: ``changed``, the diff when asked (``--diff``), the values."""
        result = dict(changed=changed, **values)
        if self.module._diff:
            result["diff"] = dict(before=before, after=after)
        return result

    def find_image(self):
        """The image the options name: by ``image_id``, or the acting account's image called
        ``name`` in ``region``. In check mode an image named but not there yet is ``None``:
        an earlier task of the same run would have created it."""
        p = self.params
        if p.get("image_id"):
            return self.cloud.image(p["image_id"])
        image = own_image_named(self.cloud, p["region"], p["name"])
        if image is None and not self.check_mode:
            raise ir.NotFoundError(
                "account %s has no image named %r in region %s"
                % (self.cloud.account, p["name"], p["region"]), code="NoSuchImage")
        return image


def own_images_named(cloud, region, name):
    """The acting account's own images called ``name`` in ``region``, in any status."""
    return [i for i in cloud.images(region, image_type="Custom", name=name)
            if i.owner == cloud.account]


def own_image_named(cloud, region, name):
    """The acting account's image called ``name`` in ``region`` (one that did not fail to be
    created), or ``None``. Names are not unique: two such images are an error."""
    found = [i for i in own_images_named(cloud, region, name) if i.status != "CreateFailed"]
    if len(found) > 1:
        raise ir.ValidationError(
            "%d images are named %r in region %s (%s): name one by image_id"
            % (len(found), name, region, ", ".join(i.id for i in found)),
            code="InvalidParameter")
    return found[0] if found else None
