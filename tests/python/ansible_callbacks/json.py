# A stdout callback for tests/python/test_ansible.py: the whole run as one JSON document,
# in the shape of ansible.posix's `json` callback (which ansible-core does not ship):
# {"plays": [{"play": {...}, "tasks": [{"task": {...}, "hosts": {host: result}}]}],
#  "stats": {host: {"ok", "changed", "failures", "unreachable", "skipped", "ignored"}}}

from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: json
    type: stdout
    short_description: the run as one JSON document (imagerelay's tests)
    description: Every task's result per host, and the stats, printed once at the end.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "json"

    def __init__(self) -> None:
        super().__init__()
        self.plays: list[dict] = []

    def v2_playbook_on_play_start(self, play) -> None:
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self.plays[-1]["tasks"].append({"task": {"name": task.get_name()}, "hosts": {}})

    def _record(self, result, **extra) -> None:
        self.plays[-1]["tasks"][-1]["hosts"][result._host.get_name()] = dict(
            result._result, **extra)

    def v2_runner_on_ok(self, result, **kwargs) -> None:
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._record(result, failed=True, ignored=bool(ignore_errors))

    def v2_runner_on_skipped(self, result) -> None:
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result) -> None:
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats) -> None:
        summary = {h: stats.summarize(h) for h in sorted(stats.processed)}
        self._display.display(json.dumps({"plays": self.plays, "stats": summary},
                                         default=str, sort_keys=True))
