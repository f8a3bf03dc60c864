"""The endpoints: BCC's image calls (v2 paths, query flags, bodies, camelCase answers) and
imagerelay's read-only extras under ``/imagerelay/v1``. Each runs on a worker thread
(engine calls block) as the authenticated account, in the region of the endpoint."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..cloud import Cloud
from ..errors import ConflictError, NotFoundError, TransferError
from ..image import Image
from ..job import Job
from . import fields
from .api_error import INVALID_URI, INVALID_VERSION, METHOD_NOT_ALLOWED, ApiError, invalid
from .bcc_model import event_model, image_model, job_model
from .import_source import ImportPolicy

Answer = tuple[int, dict[str, Any] | None]
IMAGE_TYPES = ("All", "System", "Custom", "Sharing")
# BCC's other image types (GPU, FPGA, BBC, EBC, integration images): this service has none.
OTHER_IMAGE_TYPES = ("Integration", "GpuBccSystem", "GpuBccCustom", "FpgaBccSystem",
                     "FpgaBccCustom", "BbcSystem", "BbcCustom", "EbcTotal", "EbcSystem",
                     "EbcCustom")
ACTIONS = ("remoteCopy", "cancelRemoteCopy", "share", "unshare")
RETRY_WINDOW = 60.0  # seconds: a remoteCopy that repeats a copy this recent returns it
TOKEN_LIFETIME = 24 * 3600.0


@dataclasses.dataclass
class Call:
    """One authenticated request, as the handlers see it."""

    cloud: Cloud  # acting as the request's account
    region: str
    params: Sequence[tuple[str, str]]
    body: bytes
    match: dict[str, str]
    imports: ImportPolicy
    tokens: ClientTokens

    def image(self, image_id: str) -> Image:
        """The image if the caller sees it in this endpoint's region; else NoSuchImage,
        worded as the engine words it (nothing tells a stranger's image from none)."""
        image = self.cloud.image(image_id)
        if image.region != self.region:
            raise NotFoundError(f"image {image_id} does not exist or is not visible to "
                                f"account {self.cloud.account}; list images to see yours",
                                code="NoSuchImage")
        return image


class ClientTokens:
    """The imports' client tokens (BCC's ``clientToken``): the same token with the same
    arguments answers the first image, and imports nothing more. Kept by the server process
    for a day."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, tuple[Any, ...], str]] = {}
        self._busy: dict[tuple[str, str], threading.Lock] = {}

    def once(self, account: str, token: str, arguments: tuple[Any, ...],
             run: Callable[[], str]) -> str:
        key = (account, token)
        with self._lock:
            lock = self._busy.setdefault(key, threading.Lock())
        with lock:  # a retry that arrives while the first still runs waits for it
            with self._lock:
                now = time.monotonic()
                self._seen = {k: v for k, v in self._seen.items()
                              if now - v[0] < TOKEN_LIFETIME}
                seen = self._seen.get(key)
            if seen is not None:
                if seen[1] != arguments:
                    raise ConflictError(f"client token {token} was used for another import "
                                        "with other arguments; use a new token",
                                        code="IdempotentParameterMismatch")
                return seen[2]
            try:
                result = run()
                with self._lock:
                    self._seen[key] = (time.monotonic(), arguments, result)
            finally:
                with self._lock:
                    self._busy.pop(key, None)
            return result


# -- BCC's image calls ---------------------------------------------------------------------
def list_images(call: Call) -> Answer:
    q = fields.query(call.params, ("imageType", "marker", "maxKeys", "imageName"))
    image_type = q.get("imageType") or "All"
    if image_type not in IMAGE_TYPES + OTHER_IMAGE_TYPES:
        raise invalid("imageType", f"{image_type!r} is not one of BCC's image types "
                                   f"({', '.join(IMAGE_TYPES + OTHER_IMAGE_TYPES)})")
    max_keys = 1000
    if q.get("maxKeys"):
        if not re.fullmatch(r"\d{1,4}", q["maxKeys"]) or not 1 <= int(q["maxKeys"]) <= 1000:
            raise invalid("maxKeys", "must be a whole number from 1 to 1000")
        max_keys = int(q["maxKeys"])
    marker = q.get("marker") or ""
    name = q.get("imageName") or None
    if name is not None and re.search(r"[*?\[]", name):
        raise invalid("imageName", "is an image's exact name")
    images = [] if image_type in OTHER_IMAGE_TYPES else sorted(
        call.cloud.images(call.region, image_type=image_type, name=name), key=lambda i: i.id)
    start = 0
    if marker:  # the first image of the page: the one named, or the next after it
        start = next((n for n, i in enumerate(images) if i.id >= marker), len(images))
    page = images[start:start + max_keys]
    truncated = start + max_keys < len(images)
    answer: dict[str, Any] = {"marker": marker, "isTruncated": truncated, "maxKeys": max_keys,
                              "images": [image_model(i) for i in page]}
    if truncated:
        answer["nextMarker"] = images[start + max_keys].id
    return 200, answer


def get_image(call: Call) -> Answer:
    fields.query(call.params, ())
    image = call.image(call.match["id"])
    shared = None
    if image.type == "Custom" and image.owner == call.cloud.account:
        shared = len(call.cloud.shared_users(image.id))
    return 200, {"image": image_model(image, shared, call.cloud.limits.max_share_accounts
                                      if shared is not None else None)}


def delete_image(call: Call) -> Answer:
    fields.query(call.params, ())
    call.cloud.delete_image(call.image(call.match["id"]).id)
    return 200, None


def rename_image(call: Call) -> Answer:
    fields.query(call.params, ())
    body = fields.json_object(call.body, ("name", "imageId"))
    name = fields.text(body, "name", required=True)
    image_id = fields.text(body, "imageId", required=True)
    assert name is not None and image_id is not None
    call.cloud.rename_image(call.image(image_id).id, name)
    return 200, None


def import_image(call: Call) -> Answer:
    q = fields.query(call.params, ("clientToken",))
    body = fields.json_object(call.body, ("osName", "osArch", "osType", "osVersion", "name",
                                          "bosUrl", "detection", "generationType"))
    values = {f: fields.text(body, f) or "" for f in
              ("osName", "osArch", "osType", "osVersion", "generationType")}
    name = fields.text(body, "name", required=True) or ""
    url = fields.text(body, "bosUrl", required=True) or ""
    if "detection" in body and not isinstance(body["detection"], (bool, str, dict)):
        raise invalid("detection", "must be a boolean, a string or an object")
    if values["generationType"] not in ("", "BCC"):
        raise invalid("generationType", "only BCC images are made here")
    source = call.imports.check(url)

    def run() -> str:
        try:
            return call.cloud.import_image(
                source, region=call.region, name=name, os_type=values["osType"] or "linux",
                os_name=values["osName"], os_version=values["osVersion"],
                os_arch=values["osArch"] or "x86_64", wait=False).id
        except TransferError as e:
            if e.code != "Transfer.Failed":  # the region's store: the server's trouble
                raise
            # The source could not be read (unreachable, too slow): the client's URL, not
            # a server error that an SDK would retry.
            raise invalid("bosUrl", e.message) from None

    token = q.get("clientToken")
    arguments = (call.region, name, url, *sorted(values.items()))
    image_id = call.tokens.once(call.cloud.account, token, arguments, run) if token else run()
    return 200, {"id": image_id}


def image_action(call: Call) -> Answer:
    flags = [name for name, _ in call.params if name in ACTIONS]
    if len(flags) != 1:
        raise invalid("action", "name one action as a query flag: ?remoteCopy, "
                                "?cancelRemoteCopy, ?share or ?unshare")
    return {"remoteCopy": remote_copy, "cancelRemoteCopy": cancel_remote_copy,
            "share": share, "unshare": unshare}[flags[0]](call)


def remote_copy(call: Call) -> Answer:
    q = fields.query(call.params, ("remoteCopy", "clientToken"))
    body = fields.json_object(call.body, ("name", "destRegion"))
    name = fields.text(body, "name") or None
    regions = fields.text_list(body, "destRegion")
    image = call.image(call.match["id"])
    token = q.get("clientToken") or None
    job = None if token else _same_copy_just_made(call.cloud, image, regions, name)
    if job is None:
        job = call.cloud.replicate(image.id, regions, name=name, client_token=token)
    return 200, {"result": [{"region": t.region, "imageId": t.dest_image_id, "errMsg": "",
                             "code": ""} for t in job.tasks.values()]}


def _same_copy_just_made(cloud: Cloud, image: Image, regions: list[str],
                         name: str | None) -> Job | None:
    """BCC's remoteCopy has no client token, and an SDK retries a call whose answer was
    lost: the same copy (image, regions, name) asked again within RETRY_WINDOW seconds,
    while its copies exist (in flight or done), answers that first job."""
    wanted, name = set(regions), name or image.name
    now = time.time()
    for job in cloud.jobs():  # newest first
        if job.created_at is None or now - job.created_at.timestamp() > RETRY_WINDOW:
            break
        if (job.source_image_id != image.id or set(job.tasks) != wanted
                or any(t.state in ("Failed", "Cancelled") for t in job.tasks.values())):
            continue
        copies = job.copies
        if set(copies) == wanted and all(c.name == name for c in copies.values()):
            return job
    return None


def cancel_remote_copy(call: Call) -> Answer:
    fields.query(call.params, ("cancelRemoteCopy",))
    fields.json_object(call.body, ())
    call.cloud.cancel_copy(call.image(call.match["id"]).id)
    return 200, None


def _share_accounts(call: Call, flag: str) -> list[str]:
    fields.query(call.params, (flag,))
    body = fields.json_object(call.body, ("account", "accountId", "ucAccount"))
    accounts: list[str] = []
    for field in ("account", "accountId", "ucAccount"):
        value = fields.text(body, field)
        if value and value not in accounts:  # BCC folds duplicates
            accounts.append(value)
    return accounts


def share(call: Call) -> Answer:
    accounts = _share_accounts(call, "share")
    call.cloud.share(call.image(call.match["id"]).id, accounts)
    return 200, None


def unshare(call: Call) -> Answer:
    accounts = _share_accounts(call, "unshare")
    call.cloud.unshare(call.image(call.match["id"]).id, accounts)
    return 200, None


def shared_users(call: Call) -> Answer:
    fields.query(call.params, ())
    users = call.cloud.shared_users(call.image(call.match["id"]).id)
    return 200, {"users": [{"account": u, "accountId": u} for u in users]}


# -- imagerelay's read-only extras ---------------------------------------------------------
def list_jobs(call: Call) -> Answer:
    q = fields.query(call.params, ("active",))
    active = {"": None, "true": True, "false": False}.get(q.get("active", "").lower(), "bad")
    if active == "bad":
        raise invalid("active", "must be true or false")
    jobs = [j for j in call.cloud.jobs(active=active)  # type: ignore[arg-type]
            if j.source_region == call.region or call.region in j.tasks]
    return 200, {"jobs": [job_model(j) for j in jobs]}


def get_job(call: Call) -> Answer:
    fields.query(call.params, ())
    return 200, job_model(call.cloud.job(call.match["id"]))


def list_events(call: Call) -> Answer:
    q = fields.query(call.params, ("since", "imageId", "maxKeys"))
    since = q.get("since") or "0"
    if not fields.digits(since):
        raise invalid("since", "must be an event number (the seq of the last event seen)")
    max_keys = q.get("maxKeys") or "1000"
    if not fields.digits(max_keys) or not 1 <= int(max_keys) <= 1000:
        raise invalid("maxKeys", "must be a whole number from 1 to 1000")
    events = call.cloud.events(since=int(since), image_id=q.get("imageId") or None)
    page = events[:int(max_keys)]
    return 200, {"events": [event_model(e) for e in page],
                 "isTruncated": len(events) > len(page),
                 "nextSince": page[-1].seq if page else int(since)}


Handler = Callable[[Call], Answer]
_ID = r"(?P<id>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str, Handler]] = [
    (method, re.compile(pattern), name, handler)
    for method, pattern, name, handler in [
        ("GET", r"/v2/image", "list_images", list_images),
        ("POST", r"/v2/image/import", "import_image", import_image),
        ("PUT", r"/v2/image/rename", "rename_image", rename_image),
        ("GET", rf"/v2/image/{_ID}/sharedUsers", "shared_users", shared_users),
        ("GET", rf"/v2/image/{_ID}", "get_image", get_image),
        ("DELETE", rf"/v2/image/{_ID}", "delete_image", delete_image),
        ("POST", rf"/v2/image/{_ID}", "image_action", image_action),
        ("GET", r"/imagerelay/v1/jobs", "list_jobs", list_jobs),
        ("GET", rf"/imagerelay/v1/jobs/{_ID}", "get_job", get_job),
        ("GET", r"/imagerelay/v1/events", "list_events", list_events),
    ]]


def route(method: str, path: str) -> tuple[str, Handler, dict[str, str]]:
    """(route name, handler, path parameters); an ApiError for an unknown path or method."""
    allowed = []
    for route_method, pattern, name, handler in ROUTES:
        m = pattern.fullmatch(path)
        if m:
            if route_method == method:
                return name, handler, m.groupdict()
            allowed.append(route_method)
    if allowed:
        raise ApiError(METHOD_NOT_ALLOWED, f"{method} is not a method of {path} "
                                           f"(it takes {', '.join(sorted(set(allowed)))})")
    if re.match(r"/v\d+/", path) and not path.startswith("/v2/"):
        raise ApiError(INVALID_VERSION, "this service answers API version v2")
    raise ApiError(INVALID_URI, f"{path} is not a path of this service (BCC's image API: "
                                "/v2/image...; imagerelay's extras: /imagerelay/v1/...)")
