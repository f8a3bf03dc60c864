"""`imagerelay serve` driven end to end by the official BCC SDK (bce-python-sdk, pinned,
unmodified): import, copy to two regions, list in each, share with another account which
sees it as Sharing with its own keys, shared users, unshare, cancel a copy in flight,
delete; every rule answered with BCC's code; nothing of another account shows; a retried
call does not copy twice."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from baidubce.http import http_methods
from baidubce.services.bcc.bcc_client import BccClient

import imagerelay as ir
from conftest import CHUNK, make_dense, wait_until
from imagerelay.serve import ServeOptions, Service
from serve_support import (InProcessServer, LogRecords, assert_bcc_error, bcc, file_server,
                           losing_proxy, server_error)

REGIONS = ["bj", "gz", "su"]
BCC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@dataclass
class Env:
    cloud: ir.Cloud
    server: InProcessServer
    keys: dict[str, ir.AccessKey]
    files: Path
    url: str  # the file server's base URL
    log: LogRecords

    def client(self, region: str, account: str = "team-a", **kw: Any) -> BccClient:
        return bcc(self.server.endpoint(region), self.keys[account], **kw)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("serve")
    files = root / "files"
    files.mkdir()
    # A bandwidth cap keeps a copy of a few MiB in flight for a few seconds (to cancel it).
    cloud = ir.open(root / "home", limits=ir.Limits(chunk_size=CHUNK, bandwidth=4 * 2**20,
                                                    max_share_accounts=2))
    for account in ("team-a", "team-b", "team-c", "team-d"):
        cloud.add_account(account)
    keys = {a: cloud.create_access_key(a) for a in ("team-a", "team-b")}
    log = LogRecords()
    logger = __import__("logging").getLogger("imagerelay.serve")
    logger.addHandler(log)
    logger.setLevel("INFO")
    service = Service(cloud, ServeOptions(allow_import_hosts=["127.0.0.1"],
                                          allow_import_dirs=[files]))
    server = InProcessServer(service, REGIONS)
    try:
        with file_server(files) as url:
            yield Env(cloud, server, keys, files, url, log)
    finally:
        server.stop()
        logger.removeHandler(log)
        cloud.close()


def wait_status(client: BccClient, image_id: str, status: str = "Available") -> Any:
    def current() -> Any:
        image = client.get_image(image_id).image
        return image if image.status == status else None
    return wait_until(current, timeout=60, interval=0.1,
                      why=lambda: f"{image_id} is {client.get_image(image_id).image.status}")


def imported(env: Env, name: str, size: int = 4 * CHUNK, region: str = "bj",
             account: str = "team-a") -> str:
    make_dense(env.files / f"{name}.raw", size)
    client = env.client(region, account)
    image_id = client.import_custom_image("ubuntu", "x86_64", "linux", "22.04", name,
                                          f"{env.url}/{name}.raw").id
    wait_status(client, image_id)
    return str(image_id)


def ids(response: Any) -> list[str]:
    return [i.id for i in response.images]


# -- the whole flow ------------------------------------------------------------------------
def test_import_copy_share_unshare_delete_through_the_sdk(env: Env) -> None:
    bj, gz, su = (env.client(r) for r in REGIONS)
    make_dense(env.files / "golden.raw", 6 * CHUNK)
    image_id = bj.import_custom_image("ubuntu", "x86_64", "linux", "22.04", "golden",
                                      f"{env.url}/golden.raw").id
    assert re.fullmatch(r"m-[0-9a-z]{8}", image_id)
    image = wait_status(bj, image_id)
    assert (image.name, image.type, image.os_name, image.os_version, image.os_arch) == (
        "golden", "Custom", "ubuntu", "22.04", "x86_64")
    raw = json.loads(bj.get_image(image_id).raw_data)["image"]
    assert BCC_TIME.fullmatch(raw["createTime"])
    assert {"id", "name", "type", "osType", "osVersion", "osArch", "osName", "createTime",
            "status", "desc", "minDiskGb", "diskSize", "snapshots"} <= set(raw)
    assert raw["sharedToUserNum"] == 0 and raw["shareToUserNumLimit"] == 2

    copied = bj.remote_copy_image(image_id, "golden-copy", ["gz", "su"])
    dests = {r.region: r.image_id for r in copied.result}
    assert set(dests) == {"gz", "su"} and len(set(dests.values())) == 2
    for region, client in (("gz", gz), ("su", su)):
        copy = wait_status(client, dests[region])
        assert copy.name == "golden-copy" and copy.type == "Custom"
        assert dests[region] in ids(client.list_images(image_type="Custom"))
        assert image_id not in ids(client.list_images())  # each endpoint is its region
    assert dests["gz"] not in ids(bj.list_images()) and image_id in ids(bj.list_images())
    assert_bcc_error(lambda: bj.get_image(dests["gz"]), "NoSuchImage", 404)

    team_b_gz = env.client("gz", "team-b")
    assert dests["gz"] not in ids(team_b_gz.list_images())
    gz.share_image(dests["gz"], account="team-b")
    shared = team_b_gz.list_images(image_type="Sharing")
    assert ids(shared) == [dests["gz"]] and shared.images[0].type == "Sharing"
    assert team_b_gz.get_image(dests["gz"]).image.type == "Sharing"
    assert ids(env.client("su", "team-b").list_images(image_type="Sharing")) == []
    users = gz.list_shared_user(dests["gz"]).users
    assert [(u.account, u.account_id) for u in users] == [("team-b", "team-b")]
    assert gz.get_image(dests["gz"]).image.shared_to_user_num == 1
    gz.unshare_image(dests["gz"], account_id="team-b")
    assert ids(team_b_gz.list_images(image_type="Sharing")) == []
    assert gz.list_shared_user(dests["gz"]).users == []

    # Rename: BCC's PUT /v2/image/rename (the Python SDK has no method for it).
    gz._send_request(http_methods.PUT, b"/image/rename",
                     json.dumps({"name": "golden-gz", "imageId": dests["gz"]}))
    assert gz.get_image(dests["gz"]).image.name == "golden-gz"

    gz.delete_image(dests["gz"])
    assert_bcc_error(lambda: gz.get_image(dests["gz"]), "NoSuchImage", 404)
    assert dests["gz"] not in ids(gz.list_images())
    # The extras: the job with each region's progress, the account's events.
    job = env.cloud.as_account("team-a").image(dests["su"]).source_image_id
    assert job == image_id
    jobs = json.loads(bj._send_request(http_methods.GET, b"/v1/jobs",
                                       prefix=b"/imagerelay").raw_data)["jobs"]
    mine = next(j for j in jobs if j["sourceImageId"] == image_id)
    assert mine["state"] == "Completed" and mine["progress"] == 100.0
    assert {t["region"]: t["imageId"] for t in mine["tasks"]} == dests
    assert all(t["state"] == "Completed" and t["progress"] == 100.0 for t in mine["tasks"])
    events = json.loads(bj._send_request(http_methods.GET, b"/v1/events",
                                         prefix=b"/imagerelay").raw_data)["events"]
    kinds = {e["type"] for e in events if e["imageId"] in (image_id, *dests.values())}
    assert {"image.created", "image.available", "job.created", "image.shared",
            "image.unshared", "image.renamed", "image.deleted"} <= kinds


def test_list_pagination_and_filters(env: Env) -> None:
    made = sorted(imported(env, f"page-{n}", size=CHUNK, region="su") for n in range(3))
    su = env.client("su")
    first = su.list_images(image_type="Custom", max_keys=2)
    assert first.is_truncated and first.max_keys == 2 and len(first.images) == 2
    rest = su.list_images(image_type="Custom", max_keys=2, marker=first.next_marker)
    seen = ids(first) + ids(rest)
    assert set(made) <= set(seen) and len(seen) == len(set(seen))
    named = su.list_images(image_type="Custom", image_name="page-1")
    assert [i.name for i in named.images] == ["page-1"]
    assert su.list_images(image_type="GpuBccSystem").images == []
    assert "imageType" in assert_bcc_error(lambda: su.list_images(image_type="Bogus"),
                                           "InvalidParameter", 400)
    assert "maxKeys" in assert_bcc_error(lambda: su.list_images(max_keys=0),
                                         "InvalidParameter", 400)


def test_cancel_a_copy_in_flight(env: Env) -> None:
    bj, gz = env.client("bj"), env.client("gz")
    # 12 MiB at 4 MiB/s: the copy is in flight for seconds. Imported from an allowed dir.
    make_dense(env.files / "big.raw", 12 * 2**20)
    image_id = bj.import_custom_image("ubuntu", "x86_64", "linux", "22.04", "big",
                                      str(env.files / "big.raw")).id
    wait_status(bj, image_id)
    dest = bj.remote_copy_image(image_id, "big", ["gz"]).result[0].image_id
    assert gz.get_image(dest).image.status == "Replicating"
    # While it is in flight the source refuses changes; the copy is cancelled where it lands.
    assert_bcc_error(lambda: bj.share_image(image_id, account="team-b"),
                     "Image.ImageStatusForbidden", 409)
    assert_bcc_error(lambda: bj.cancle_remote_copy_image(dest), "NoSuchImage", 404)
    gz.cancle_remote_copy_image(dest)
    assert_bcc_error(lambda: gz.get_image(dest), "NoSuchImage", 404)
    assert dest not in ids(gz.list_images())
    wait_status(bj, image_id)  # the source is Available again
    assert_bcc_error(lambda: gz.cancle_remote_copy_image(dest), "NoSuchImage", 404)


# -- the rules, through the SDK ------------------------------------------------------------
def test_every_rule_answers_with_bccs_code(env: Env) -> None:
    bj = env.client("bj")
    image_id = imported(env, "rules")
    env.cloud.add_system_image(env.files / "rules.raw", region="bj", name="system-linux")
    system_id = next(i.id for i in env.cloud.images("bj", image_type="System"))
    cases = [
        (lambda: bj.remote_copy_image(image_id, "x", ["bj"]), "Image.RegionNotSupportCopy", 409),
        (lambda: bj.remote_copy_image(image_id, "x", ["nowhere"]),
         "Image.RegionNotSupportCopy", 409),
        (lambda: bj.remote_copy_image(image_id, "x", []), "Image.DestRegionIsEmpty", 400),
        (lambda: bj.remote_copy_image(image_id, "9bad", ["gz"]), "InvalidParameter", 400),
        (lambda: bj.remote_copy_image(system_id, "x", ["gz"]), "Image.ImageNotSupportCopy", 409),
        (lambda: bj.share_image(system_id, account="team-b"),
         "Image.UnCustomImageCannotBeShared", 403),
        (lambda: bj.delete_image(system_id), "Image.UnCustomImageCannotBeDeleted", 403),
        (lambda: bj.share_image(image_id), "Image.AccountListIsEmpty", 400),
        (lambda: bj.share_image(image_id, account="nobody"), "Image.InvalidAccount", 400),
        (lambda: bj.share_image(image_id, account="team-a"), "Image.CannotShareToOwner", 403),
        (lambda: bj.unshare_image(image_id, account="team-b"), "Image.AccountNotShared", 409),
    ]
    for call, code, status in cases:
        assert_bcc_error(call, code, status)
    bj.share_image(image_id, account="team-b", account_id="team-b")  # duplicates fold
    assert_bcc_error(lambda: bj.share_image(image_id, account="team-b"),
                     "Image.AccountHasBeenShared", 409)
    bj.share_image(image_id, account="team-c")
    assert_bcc_error(lambda: bj.share_image(image_id, account="team-d"),
                     "Image.ExceedSharedToUserNumQuota", 413)
    assert_bcc_error(lambda: bj.delete_image(image_id), "Image.ImageHasBeenSharedToOthers", 409)
    recipient = env.client("bj", "team-b")
    assert recipient.get_image(image_id).image.type == "Sharing"
    for call in (lambda: recipient.delete_image(image_id),
                 lambda: recipient.remote_copy_image(image_id, "x", ["gz"]),
                 lambda: recipient.share_image(image_id, account="team-c"),
                 lambda: recipient.list_shared_user(image_id)):
        assert_bcc_error(call, "AccessDenied", 403)
    # A policy in Python applies to the API's callers too.
    rule = env.cloud.add_rule(lambda r: "no copies to su" if "su" in r.to else None)
    try:
        assert "no copies to su" in assert_bcc_error(
            lambda: bj.remote_copy_image(image_id, "x", ["su"]), "PolicyViolation", 403)
    finally:
        rule.remove()


def test_other_accounts_images_are_not_found_without_a_hint(env: Env) -> None:
    private = imported(env, "private")
    job = env.client("bj").remote_copy_image(private, "private", ["su"])
    stranger = env.client("bj", "team-b")
    unknown = "m-zz9zz9zz"
    for image in (private, unknown):
        messages = [assert_bcc_error(call, "NoSuchImage", 404) for call in (
            lambda: stranger.get_image(image),
            lambda: stranger.delete_image(image),
            lambda: stranger.remote_copy_image(image, "x", ["gz"]),
            lambda: stranger.share_image(image, account="team-b"),
            lambda: stranger.list_shared_user(image),
            lambda: stranger.cancle_remote_copy_image(image))]
        assert all(m.replace(image, "ID") == messages[0].replace(image, "ID")
                   for m in messages), messages
        if image == private:
            private_messages = messages
    assert [m.replace(private, "ID") for m in private_messages] == \
        [m.replace(unknown, "ID") for m in messages]
    assert private not in ids(stranger.list_images())
    dest = job.result[0].image_id
    assert dest not in ids(env.client("su", "team-b").list_images())
    extras = json.loads(stranger._send_request(http_methods.GET, b"/v1/jobs",
                                               prefix=b"/imagerelay").raw_data)
    assert all(j["sourceImageId"] != private for j in extras["jobs"])
    events = json.loads(stranger._send_request(http_methods.GET, b"/v1/events",
                                               prefix=b"/imagerelay").raw_data)["events"]
    # Its events: what it did, and what happened to images shared with it; not these.
    assert all(e["imageId"] not in (private, dest) for e in events), events
    assert all(e["jobId"] is None or e["account"] == "team-b" for e in events), events
    job_id = env.cloud.as_account("team-a").jobs()[0].id
    assert_bcc_error(lambda: stranger._send_request(
        http_methods.GET, f"/v1/jobs/{job_id}".encode(), prefix=b"/imagerelay"),
        "NoSuchJob", 404)


# -- signatures -----------------------------------------------------------------------------
def test_bad_signatures_change_nothing(env: Env) -> None:
    image_id = imported(env, "signed")
    key = env.keys["team-a"]
    wrong_secret = bcc(env.server.endpoint("bj"), (key.access_key_id, "0" * 32))
    assert_bcc_error(lambda: wrong_secret.delete_image(image_id), "SignatureDoesNotMatch", 400)
    unknown = bcc(env.server.endpoint("bj"), ("f" * 32, key.secret_access_key or ""))
    assert_bcc_error(lambda: unknown.delete_image(image_id), "InvalidAccessKeyId", 403)
    # A request signed for GET, sent as DELETE with the same Authorization header.
    import http.client

    from baidubce.auth import bce_v1_signer
    from baidubce.auth.bce_credentials import BceCredentials

    port = env.server.ports["bj"]
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    headers = {b"host": f"127.0.0.1:{port}".encode(), b"x-bce-date": date.encode(),
               b"content-length": b"0"}
    credentials = BceCredentials(key.access_key_id.encode(), key.secret_access_key.encode())

    def send(method: str, auth: bytes) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(method, f"/v2/image/{image_id}", headers={
            **{k.decode(): v.decode() for k, v in headers.items()},
            "authorization": auth.decode()})
        answer = conn.getresponse()
        body = json.loads(answer.read() or b"{}")
        conn.close()
        return answer.status if answer.status == 200 else (answer.status, body["code"])

    path = f"/v2/image/{image_id}".encode()
    for_get = bce_v1_signer.sign(credentials, b"GET", path, headers, {})
    assert send("GET", for_get) == 200
    assert send("DELETE", for_get) == (400, "SignatureDoesNotMatch")
    old = bce_v1_signer.sign(credentials, b"DELETE", path, headers, {},
                             int(time.time()) - 3600, 1800)
    assert send("DELETE", old) == (400, "RequestExpired")
    future = bce_v1_signer.sign(credentials, b"DELETE", path, headers, {},
                                int(time.time()) + 3600, 1800)
    assert send("DELETE", future) == (400, "RequestExpired")
    assert env.client("bj").get_image(image_id).image.status == "Available"
    # A deleted key is refused at once.
    spare = env.cloud.create_access_key("team-a")
    client = bcc(env.server.endpoint("bj"), spare)
    client.get_image(image_id)
    env.cloud.delete_access_key("team-a", spare.access_key_id)
    assert_bcc_error(lambda: client.get_image(image_id), "InvalidAccessKeyId", 403)


# -- retries ---------------------------------------------------------------------------------
def test_sdk_retries_do_not_copy_twice(env: Env) -> None:
    image_id = imported(env, "retried")
    jobs_before = len(env.cloud.as_account("team-a").jobs())
    # The server copies, the answer is lost on the way, the SDK tries again: it gets the
    # first copy's result, and no second copy is made.
    with losing_proxy(env.server.ports["bj"], lambda line: "remoteCopy" in line) as proxy:
        client = bcc(proxy, env.keys["team-a"], retries=True)
        result = client.remote_copy_image(image_id, "retried", ["gz", "su"]).result
    jobs = env.cloud.as_account("team-a").jobs()
    assert len(jobs) == jobs_before + 1
    assert {r.region: r.image_id for r in result} == {
        t.region: t.dest_image_id for t in jobs[0].tasks.values()}
    assert env.cloud.wait_idle(60)
    # An import's clientToken: the same token and arguments give the first image.
    bj = env.client("bj")
    token = str(uuid.uuid4())
    args = ("ubuntu", "x86_64", "linux", "22.04", "tokened", f"{env.url}/retried.raw")
    first = bj.import_custom_image(*args, client_token=token).id
    assert bj.import_custom_image(*args, client_token=token).id == first
    assert len(env.cloud.as_account("team-a").images("bj", name="tokened")) == 1
    assert_bcc_error(lambda: bj.import_custom_image(*args[:4], "other", args[5],
                                                    client_token=token),
                     "IdempotentParameterMismatch", 409)
    # A lost import answer, retried by the SDK with its clientToken: one image.
    with losing_proxy(env.server.ports["bj"], lambda line: "import" in line) as proxy:
        client = bcc(proxy, env.keys["team-a"], retries=True)
        again = client.import_custom_image(*args[:4], "lost-once", args[5]).id
    assert [i.id for i in env.cloud.as_account("team-a").images("bj", name="lost-once")] \
        == [again]
