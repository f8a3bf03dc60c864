"""The examples (examples/*.py and examples/ops.ipynb) run and show what they promise; the
notebook helpers (ImageList, JobList) render as tables and convert to pandas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

import imagerelay as ir

from conftest import make_dense

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs ``python examples/<name> ARGS`` with this interpreter; fails on a non-zero exit."""
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("IMAGERELAY_HOME", "IMAGERELAY_ACCOUNT", "NOTIFY_URL")}
    child_env.update(env or {})
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=timeout, env=child_env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (f"{name} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
                                  f"\n--- stderr\n{proc.stderr}")
    return proc


def lines_with(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {"quickstart.py", "policy_require_os_version.py",
                       "notify_on_failure.py"}, "a new example needs a test here"
    assert (EXAMPLES / "ops.ipynb").is_file()


# -- scripts -------------------------------------------------------------------------------
def test_quickstart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for _ in range(2):  # a second run on the same home works too (team-b exists by then)
        out = run_example("quickstart.py", str(home)).stdout
        assert len(lines_with(out, "imported m-")) == 1, out
        assert len([line for line in out.splitlines() if "Completed" in line]) == 2, out
        assert len(lines_with(out, "team-b sees")) == 2, out
        assert all(" as Sharing, Available" in line for line in lines_with(out, "team-b sees"))
    with ir.open(home) as cloud:
        golden = cloud.images(name="golden")
        assert sorted(i.region for i in golden) == ["bj", "bj", "gz", "gz", "su", "su"]
        assert len(cloud.as_account("team-b").images(image_type="Sharing")) == 4

    # Without HOME: a temporary home, removed afterwards (nothing left in the given one).
    out = run_example("quickstart.py").stdout
    assert len(lines_with(out, "team-b sees")) == 2, out


def test_policy_require_os_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = run_example("policy_require_os_version.py", str(home)).stdout
    refused = lines_with(out, "refused: PolicyViolation: ")
    assert len(refused) == 1 and "has no os_version" in refused[0], out
    assert "Completed" in lines_with(out, "allowed: ")[0], out
    assert "Completed" in lines_with(out, "rule removed: ")[0], out
    with ir.open(home) as cloud:
        # The refused call created nothing; the two allowed copies exist.
        assert sorted(i.name for i in cloud.images("gz")) == ["no-version", "with-version"]
        assert [j.state for j in cloud.jobs()] == ["Completed", "Completed"]


def test_notify_on_failure_prints_the_notice(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = run_example("notify_on_failure.py", str(home))
    notices = [json.loads(line[len("NOTIFY "):]) for line in lines_with(proc.stdout, "NOTIFY ")]
    assert len(notices) == 1, proc.stdout
    notice = notices[0]
    assert notice["error_code"] == "Transfer.IntegrityError"
    assert notice["region"] == "gz" and notice["account"] == "default"
    assert notice["image"].startswith("m-") and notice["job"].startswith("j-")
    assert "corrupt" in notice["error"]
    # The callback logged it (logging, stderr); the damage took the source out of use.
    assert "ERROR notify_on_failure: copy of image " + notice["image"] in proc.stderr
    assert "source m-" in proc.stdout and ": NotAvailable; copy " in proc.stdout
    assert proc.stdout.rstrip().endswith("CreateFailed")
    with ir.open(home) as cloud:
        assert cloud.images() == []  # the example deleted what it made
        [event] = [e for e in cloud.events() if e.type == "task.failed"]
        assert event.image_id == notice["image"]


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"type": self.headers["Content-Type"], "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Handler", (_Webhook,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_notify_on_failure_posts_to_a_webhook(tmp_path: Path,
                                              webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    proc = run_example("notify_on_failure.py", env={"NOTIFY_URL": url})
    assert not lines_with(proc.stdout, "NOTIFY "), proc.stdout
    assert len(received) == 1, received
    assert received[0]["type"] == "application/json"
    assert received[0]["body"]["error_code"] == "Transfer.IntegrityError"
    assert received[0]["body"]["text"].startswith("imagerelay: the copy m-")


# -- the notebook --------------------------------------------------------------------------
@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec that runs ipykernel in this very interpreter (the project's venv).

    It lives in a temporary JUPYTER_PATH directory, so the test needs no kernel installed
    anywhere: a fresh venv made by scripts/install-deps.sh (with ipykernel) is enough.
    """
    name = "imagerelay-test"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "imagerelay test kernel", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


def _outputs(nb: Any) -> dict[str, list[Any]]:
    return {cell.id: cell.outputs for cell in nb.cells if cell.cell_type == "code"}


def _html(outputs: list[Any]) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in outputs)


def _stderr(outputs: list[Any]) -> str:
    return "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")


def test_ops_notebook(tmp_path: Path, kernel_name: str,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    home = tmp_path / "home"
    monkeypatch.setenv("IMAGERELAY_OPS_HOME", str(home))

    nb = nbformat.read(EXAMPLES / "ops.ipynb", as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells), "commit the notebook without outputs"
    # A cell error raises CellExecutionError (with the cell and the traceback). The timeout
    # is per cell and generous: the first import may rebuild the editable C++ module.
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=900,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    out = _outputs(nb)
    assert not [o for outs in out.values() for o in outs if o.output_type == "error"]

    # Import: the image shows as an HTML table of its properties.
    assert "golden" in _html(out["import"]) and "Available" in _html(out["import"])

    # Replicate with progress: one bar per region (text bars, or widgets with ipywidgets).
    for cell in ("replicate", "replicate-v2"):
        bars = _stderr(out[cell])
        widgets = [o for o in out[cell]
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        if widgets:
            assert len(widgets) == 2, out[cell]
        else:
            assert "-> gz" in bars and "-> su" in bars and "100%" in bars, bars
        assert "Completed, 100%" in _html(out[cell])

    # team-b sees the two v2 copies as Sharing, in an image table.
    shared = _html(out["share"])
    assert "<table class='imagerelay-images'" in shared
    assert shared.count("<td>Sharing</td>") == 2 and shared.count("<td>golden-v2</td>") == 2

    # Tables: 6 images (two versions in three regions), 2 jobs.
    images = _html(out["images"])
    assert "<table class='imagerelay-images'" in images
    assert images.count("<tr><td>m-") == 6, images
    jobs = _html(out["jobs"])
    assert "<table class='imagerelay-jobs'" in jobs
    assert jobs.count("<tr><td>j-") == 2 and jobs.count("<td>Completed</td>") == 2, jobs

    # Per-region transfer: the second version moved less than it needed; then a plot.
    per_region = "".join(o.get("data", {}).get("text/plain", "") for o in out["per-region"])
    assert "needed (MiB)" in per_region and "gz" in per_region and "su" in per_region
    plot = out["plot"]
    assert ("imagerelay-bar-chart" in _html(plot)
            or any("image/png" in o.get("data", {}) for o in plot)), plot

    with ir.open(home) as cloud:
        per_task = cloud.jobs().tasks_to_pandas()
        moved = per_task.groupby("region")["bytes_transferred"].sum()
        needed = per_task.groupby("region")["bytes_total"].sum()
        assert (moved < needed).all() and (moved > 0).all()


# -- ImageList and JobList -----------------------------------------------------------------
def test_image_list_and_job_list(cloud: ir.Cloud, files: Path) -> None:
    assert cloud.images() == [] and isinstance(cloud.images(), ir.ImageList)
    assert "no images" in cloud.images()._repr_html_()
    assert "no jobs" in cloud.jobs()._repr_html_()

    image = cloud.import_image(make_dense(files / "a.raw", 300_000), region="bj", name="a",
                               os_name="<b>ubuntu & co</b>", os_version="24.04")
    job = image.replicate(["gz", "su"]).wait()

    images = cloud.images()
    assert isinstance(images, ir.ImageList) and isinstance(images, list)
    assert sorted(i.region for i in images) == ["bj", "gz", "su"]
    assert isinstance(images[1:], ir.ImageList) and len(images[1:]) == 2
    assert isinstance(images[0], ir.Image)
    assert repr(images).startswith("ImageList([<Image m-")

    page = images._repr_html_()
    assert page.count("<tr><td>m-") == 3
    assert all(f"<td>{i.id}</td>" in page for i in images)
    assert "&lt;b&gt;ubuntu &amp; co&lt;/b&gt; 24.04" in page and "<b>ubuntu" not in page

    jobs = cloud.jobs()
    assert isinstance(jobs, ir.JobList) and [j.id for j in jobs] == [job.id]
    assert isinstance(cloud.jobs(active=True), ir.JobList)
    assert jobs._repr_html_().count("<tr><td>j-") == 1
    assert f"<td>{job.id}</td>" in jobs._repr_html_()


def test_to_pandas(cloud: ir.Cloud, files: Path) -> None:
    pytest.importorskip("pandas")
    empty = cloud.images().to_pandas()
    assert len(empty) == 0 and "digest" in empty.columns

    image = cloud.import_image(make_dense(files / "a.raw", 300_000), region="bj", name="a")
    job = image.replicate(["gz", "su"]).wait()

    df = cloud.images().to_pandas()
    assert sorted(df["region"]) == ["bj", "gz", "su"]
    assert list(df.columns) == list(image.to_dict())
    assert set(df["digest"]) == {image.digest}
    assert str(df["created_at"].dt.tz) == "UTC"

    jobs = cloud.jobs().to_pandas()
    assert list(jobs["id"]) == [job.id]
    assert jobs.loc[0, "to"] == ["gz", "su"] and jobs.loc[0, "state"] == "Completed"
    assert jobs.loc[0, "bytes_total"] == 600_000

    tasks = cloud.jobs().tasks_to_pandas()
    assert sorted(tasks["region"]) == ["gz", "su"]
    assert set(tasks["job_id"]) == {job.id} and set(tasks["bytes_transferred"]) == {300_000}


def test_to_pandas_without_pandas(cloud: ir.Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    for items in (cloud.images(), cloud.jobs()):
        with pytest.raises(ImportError, match=r"pip install imagerelay\[pandas\]"):
            items.to_pandas()
