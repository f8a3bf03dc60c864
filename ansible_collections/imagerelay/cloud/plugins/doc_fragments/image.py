# -*- coding: utf-8 -*-
# The options that name one image (module_utils/connection.py: image_argument_spec).

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  image_id:
    description:
      - The image, by id (C(m-) and 8 characters).
      - One of O(image_id) and O(name) is required.
    type: str
  name:
    description:
      - The image, by name - the acting account's own image of that name in O(region).
        Two such images fail with C(InvalidParameter); name one by O(image_id) then.
    type: str
  region:
    description: The region of the image named by O(name); required with O(name).
    type: str
"""
