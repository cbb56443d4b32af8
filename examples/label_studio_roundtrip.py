"""Verify our Label Studio export and ingest against a real Label Studio server, on loopback.

    python3 -m venv /tmp/lsvenv && /tmp/lsvenv/bin/pip install label-studio   # its own venv
    .venv/bin/python examples/label_studio_roundtrip.py --label-studio /tmp/lsvenv/bin/label-studio

What it does: makes a small synthetic pool and gold set, pre-labels the pool (the truth with a
wobbled boundary, so no training is needed), makes a batch with honeypots, exports it with
`visionloop.label`, starts Label Studio on 127.0.0.1 with a throwaway data folder, creates a
project with our labeling config, imports the tasks with their predictions, annotates every
task through the API as a careful annotator would (the truth, drawn as brush RLE), exports
the project, ingests that export, runs QC and writes the dataset. It checks that:

- every imported prediction comes back from Label Studio bit-for-bit as we exported it;
- every annotation is ingested once (one posted twice is counted once) with its masks and
  its lead time exactly as posted;
- every answer keeps the time Label Studio recorded for it (``created_at``), which orders
  same drawings;
- the careful annotator passes the honeypots and is not banned.

Exit status 0 when every check holds. Label Studio 1.23 needs legacy tokens switched on
(`--enable-legacy-api-token`); the version check and Sentry are turned off so that nothing
leaves the machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from visionloop.label import loop
from visionloop.label.formats import brush_results, label_config
from visionloop.label.masks import label_from_json
from visionloop.label.quality import Rules
from visionloop.label.simulate import wobble
from visionloop.label.store import Submission, Task, open_store
from visionloop.train.synth import synthesize


def truth_of(image: Path) -> dict[str, np.ndarray]:
    root = image.parent.parent
    return {
        c: np.asarray(Image.open(root / "masks" / c / image.name)) > 0 for c in ("cat", "animal")
    }


def data_uri(path: Path) -> str:
    """The exported (re-encoded JPEG) image inline: no file server needed."""
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def start(binary: str, data: Path, port: int, token: str) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(data), LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="",
    )  # fmt: skip
    command = [
        binary, "start", "--internal-host", "127.0.0.1", "--port", str(port), "--no-browser",
        "--username", "careful@example.org", "--password", "not-a-secret-1",
        "--user-token", token, "--enable-legacy-api-token",
    ]  # fmt: skip
    log = (data / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    started = time.monotonic()
    while time.monotonic() - started < 300:
        if server.poll() is not None:
            raise RuntimeError(f"label-studio exited ({server.returncode}); see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                print(f"Label Studio ready in {time.monotonic() - started:.0f} s")
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise TimeoutError("Label Studio did not start in 300 s")


def export_project(client: httpx.Client, project: int) -> list[dict[str, object]]:
    """A snapshot export with full predictions and annotators (the plain /export gives ids)."""
    options = {"predictions": {"only_id": False}, "annotations__completed_by": {"only_id": False}}
    made = client.post(
        f"/api/projects/{project}/exports",
        json={"title": "visionloop", "serialization_options": options},
    )
    made.raise_for_status()
    snapshot = made.json()["id"]
    for _ in range(240):
        status = client.get(f"/api/projects/{project}/exports/{snapshot}").json()["status"]
        if status in ("completed", "failed"):
            break
        time.sleep(0.5)
    if status != "completed":
        raise RuntimeError(f"export {status}")
    download = client.get(
        f"/api/projects/{project}/exports/{snapshot}/download", params={"exportType": "JSON"}
    )
    download.raise_for_status()
    return download.json()  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--label-studio", default=os.environ.get("LABEL_STUDIO_BIN", "label-studio")
    )
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--work", type=Path, default=None, help="Keep files here (default: temp).")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vl_ls_"))
    work.mkdir(parents=True, exist_ok=True)

    # 1. our side: pool, gold, pre-labels, a batch with honeypots, the export
    synthesize(work / "pool", 20, size=96, seed=1)
    synthesize(work / "gold", 10, size=96, seed=2)
    store = open_store(f"sqlite:///{work / 'labels.db'}")
    loop.add_images(store, work / "pool" / "images")
    loop.add_gold(store, work / "gold")
    loop.mark_selected(store, [(i, 1.0) for i, _ in loop.pool(store)], "all")
    rng = np.random.default_rng(0)
    loop.prelabel(store, lambda paths: [wobble(truth_of(p), rng, 1.5) for p in paths])
    loop.make_batch(store, "ls", 20, honeypot_share=0.2, overlap_share=0.0)
    tasks_file = work / "tasks.json"
    count = loop.export_batch(store, "ls", "label-studio", tasks_file, image_url=data_uri)
    tasks = json.loads(tasks_file.read_text())
    print(f"exported {count} tasks")

    # 2. Label Studio: project, import, annotate, export
    data = work / "label-studio"
    data.mkdir(exist_ok=True)
    token = secrets.token_hex(20)
    server = start(args.label_studio, data, args.port, token)
    try:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{args.port}", headers={"Authorization": f"Token {token}"},
            timeout=120,
        )  # fmt: skip
        made = client.post(
            "/api/projects",
            json={"title": "visionloop", "label_config": label_config(["cat", "animal"])},
        )
        made.raise_for_status()
        project = made.json()["id"]
        imported = client.post(f"/api/projects/{project}/import", json=tasks)
        imported.raise_for_status()
        assert imported.json()["prediction_count"] == len(tasks), imported.text
        listed = client.get("/api/tasks", params={"project": project, "page_size": 1000}).json()[
            "tasks"
        ]
        posted: dict[int, dict[str, object]] = {}
        for item in listed:
            ours = int(item["data"]["visionloop_task"])
            image = Path(store_image(store, ours))
            truth = truth_of(image)
            height, width = next(iter(truth.values())).shape
            body = {"result": brush_results(truth, width, height), "lead_time": 20.0 + ours}
            client.post(f"/api/tasks/{item['id']}/annotations", json=body).raise_for_status()
            posted[ours] = body
        first = listed[0]  # annotated twice by the same person: must count once
        client.post(
            f"/api/tasks/{first['id']}/annotations",
            json=posted[int(first["data"]["visionloop_task"])],
        ).raise_for_status()
        exported = export_project(client, project)
    finally:
        server.terminate()
        server.wait(30)
    export_file = work / "label_studio_export.json"
    export_file.write_text(json.dumps(exported))

    # 3. our side again: ingest, compare, QC, dataset
    checks: dict[str, bool] = {}
    sent = {int(t["data"]["visionloop_task"]): t["predictions"][0]["result"] for t in tasks}
    back = {int(t["data"]["visionloop_task"]): t["predictions"][0]["result"] for t in exported}
    checks["predictions come back bit-exact"] = all(
        [r["value"] for r in back[k]] == [r["value"] for r in v] for k, v in sent.items()
    )
    report = loop.ingest(store, export_file, "label-studio")
    checks[f"{len(posted)} annotations ingested, 0 errors"] = (
        report.added == len(posted) and not report.errors
    )
    checks["the duplicate annotation counted once"] = report.duplicates == 1
    with store.session() as s:
        rows = [
            (sub.task_id, label_from_json(sub.masks), sub.seconds) for sub in s.query(Submission)
        ]
        timed = [sub.answered_at for sub in s.query(Submission)]
    checks["every answer keeps the time Label Studio recorded (created_at)"] = all(timed)
    exact = True
    for task, label, seconds in rows:
        truth = truth_of(Path(store_image(store, task)))
        exact &= all(np.array_equal(label[c], truth[c]) for c in truth)
        exact &= seconds == posted[task]["lead_time"]
    checks["masks and lead times ingested exactly as annotated"] = exact and len(rows) == len(
        posted
    )
    result, subs = loop.run_qc(store, Rules(warmup=2))
    checks["the careful annotator passes and is not banned"] = not result.banned() and all(
        c.passed for c in result.checks
    )
    images = loop.write_dataset(store, work / "dataset", result, subs)
    checks["dataset written"] = images > 0
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"files in {work}")
    return 0 if all(checks.values()) else 1


def store_image(store: object, task: int) -> str:
    from visionloop.label.store import Image as Row

    with store.session() as s:  # type: ignore[attr-defined]
        row = s.get(Task, task)
        return str(s.get(Row, row.image_id).path)


if __name__ == "__main__":
    sys.exit(main())
