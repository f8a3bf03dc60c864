# -*- coding: utf-8 -*-
# The options every imagerelay.cloud module takes (plugins/module_utils/connection.py).

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  home:
    description:
      - The imagerelay home (its catalog, regions and accounts), as given to C(imagerelay.open).
      - When not set, the environment variable E(IMAGERELAY_HOME) of the module's process,
        else C(~/.imagerelay).
    type: path
  account:
    description:
      - The account the module acts as; it must exist in the home.
      - When not set, the environment variable E(IMAGERELAY_ACCOUNT), else C(default).
    type: str
requirements:
  - The Python package C(imagerelay) installed for the interpreter that runs the module. The
    modules run where the home is, usually C(localhost) with C(ansible_connection=local);
    set C(ansible_python_interpreter) to the Python (for example a virtualenv's) that has
    C(imagerelay).
notes:
  - A failure returns C(code), imagerelay's stable error code (Baidu BCC's where BCC has one,
    for example C(Image.ImageNotSupportCopy)), C(http_status), and C(problems), every rule
    the request broke (a list of C(code) and C(message)).
  - Check mode runs every check of the real request in imagerelay's core
    (C(cloud.dry_run)) and changes nothing, so a request that would fail, fails in check
    mode too. An image named by O(name) that is not there yet in check mode is taken to be
    created by an earlier task of the same run; then only what can be told without it is
    checked.
"""
