"""The bundles served by a real MONAI Label server: model info, inference, a label upload and training.

MONAI Label 0.8.5 needs MONAI 1.5.2, numpy<2 and pydicom<3, so the server runs from its own virtual environment
(``tools/monailabel_env.sh <venv>`` builds it); ``VOCO_MONAILABEL_PYTHON`` names that environment's python:

    VOCO_MONAILABEL_PYTHON=<venv>/bin/python python -m pytest -q -m monailabel

Two servers run on 127.0.0.1, offline, on CPU, each with copies of the bundles at a small ``feature_size`` and
random weights: the wheel's ``monaibundle`` sample app serving voco_btcv_seg (one embedded abdominal CT as its only
study), and this project's ``monailabel_app``, which serves voco_covid_cls as a classification model next to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BUNDLES, REPO, bundle_workflow
from voco_components.apps import demo_covid
from voco_components.apps.demo import DEMO_DIR, DEMO_ORGANS_DATALIST
from voco_components.engines.checkpoint_state import checkpoint_steps

pytestmark = [pytest.mark.monailabel, pytest.mark.slow]

PYTHON = os.environ.get("VOCO_MONAILABEL_PYTHON")
if not PYTHON:
    pytest.skip(
        "VOCO_MONAILABEL_PYTHON is not set: build the MONAI Label environment with tools/monailabel_env.sh <venv> "
        "and set it to <venv>/bin/python",
        allow_module_level=True,
    )
PYTHON = str(Path(PYTHON).absolute())  # the server and its helpers run in scratch folders
VENV_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of this interpreter's path

MODEL = "voco_btcv_seg"
BUNDLE = BUNDLES / MODEL
# the bundle's top-level knobs, shrunk so that a CPU sliding window and one training epoch take seconds
SMALL = {"feature_size": 12, "window_size": 4, "roi_size": [64, 64, 64], "spacing": [3.0, 3.0, 3.0]}
SMALL_INFERENCE = {**SMALL, "sw_batch_size": 2, "sw_overlap": 0.25}
# no warm-up: the single step of a one-epoch run on one study would have learning rate 0 and change nothing
SMALL_TRAIN = {**SMALL_INFERENCE, "pretrained": None, "num_samples": 1, "num_workers": 0, "warmup_steps": 0}
STARTUP_S = 300
INFER_S = 600
TRAIN_S = 900

CASE = json.loads(DEMO_ORGANS_DATALIST.read_text())["training"][0]
IMAGE_ID = CASE["image"].removesuffix(".nii.gz")  # the datastore names a study after its file


def set_top_level(config: Path, values: dict) -> None:
    """Set top-level ids of a bundle config; each must already exist, so that a renamed knob fails here."""
    content = json.loads(config.read_text())
    missing = sorted(set(values) - set(content))
    if missing:
        raise KeyError(f"{config} has no top-level {missing}")
    content.update(values)
    config.write_text(json.dumps(content, indent=4))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    for name, path in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Server:
    """A MONAI Label server process in its own process group, with its log."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path, app: Path, studies: Path) -> None:
        self.url, self.process, self.log, self.app, self.studies = url, process, log, app, studies

    def log_tail(self, lines: int = 60, settle_s: float = 5.0) -> str:
        """The last ``lines`` of the log once it has stopped growing (the server writes a request's traceback
        after its answer), preceded by every exception message in it, which a long traceback pushes out."""
        size, deadline = -1, time.monotonic() + settle_s
        while size != self.log.stat().st_size and time.monotonic() < deadline:
            size = self.log.stat().st_size
            time.sleep(0.5)
        text = self.log.read_text(errors="replace").splitlines()
        raised = [line for line in text if re.match(r"^[\w.]*(Error|Exception)\b.*: ", line)]
        return "\n".join(["--- exceptions:", *raised, f"--- last {lines} lines:", *text[-lines:]])

    def call(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None, timeout=60):
        """The response body of ``method path``; an HTTP error fails with the server's answer and log."""
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            pytest.fail(
                f"{method} {path}: HTTP {error.code} {error.read()[:2000]!r}\n--- server log:\n{self.log_tail()}"
            )

    def json(self, method: str, path: str, **kwargs):
        return json.loads(self.call(method, path, **kwargs))

    def stop(self) -> None:
        """Stop the server and check that nothing it started outlives it."""
        pgid = self.process.pid
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        deadline = time.monotonic() + 10
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
            raise AssertionError(f"processes of the MONAI Label server (process group {pgid}) outlived it")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def run_venv(*args: str, cwd: Path) -> None:
    result = subprocess.run([PYTHON, *args], cwd=cwd, env=VENV_ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-4000:]}"


def install_bundle(app: Path, name: str, inference: dict, train: dict | None = None) -> Path:
    """Copy ``bundles/<name>`` into ``<app>/model/<name>`` with small top-level settings and random weights."""
    bundle = app / "model" / name
    shutil.copytree(BUNDLES / name, bundle, ignore=shutil.ignore_patterns("outputs", "eval", "models", "__pycache__"))
    set_top_level(bundle / "configs" / "inference.json", inference)
    if train is not None:
        set_top_level(bundle / "configs" / "train.json", train)
    (bundle / "models").mkdir()
    weights = (
        "import sys, torch\n"
        "from monai.bundle import ConfigParser\n"
        "parser = ConfigParser()\n"
        "parser.read_config(sys.argv[1])\n"
        "torch.manual_seed(0)\n"
        "network = parser.get_parsed_content('network_def')\n"
        "for name, value in network.named_parameters():\n"
        "    if name.startswith('head.'):  # a classifier's head starts at zero: give it random values too\n"
        "        torch.nn.init.normal_(value, std=0.05)\n"
        "torch.save(network.state_dict(), sys.argv[2])\n"
    )
    run_venv("-c", weights, str(bundle / "configs" / "inference.json"), str(bundle / "models" / "model.pt"), cwd=app)
    return bundle


def start_server(work: Path, app: Path, studies: Path, models: list[str]) -> Server:
    """Start MONAI Label on 127.0.0.1 serving ``models`` from ``app``, and wait until it answers ``/info/``."""
    port = free_port()
    env = {
        **VENV_ENV,
        "MONAI_LABEL_SESSION_PATH": str(work / "sessions"),
        "MONAI_LABEL_TRACKING_ENABLED": "false",
        "BUNDLE_DOWNLOAD_SRC": "github",
    }
    command = [PYTHON, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    for key, value in (("models", ",".join(models)), ("zoo_source", "github"), ("sam2", "false"), ("preload", "false")):
        command += ["--conf", key, value]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = work / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", process, log, app, studies)
    deadline = time.monotonic() + STARTUP_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the MONAI Label server exited with {process.returncode}:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(server.url + "/info/", timeout=10):
                    return server
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the MONAI Label server did not answer within {STARTUP_S} s:\n{server.log_tail()}")
                time.sleep(0.5)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """MONAI Label's own ``monaibundle`` sample app serving voco_btcv_seg, with one embedded abdominal CT."""
    assert Path(PYTHON).is_file(), f"VOCO_MONAILABEL_PYTHON: {PYTHON} is not a file"
    work = tmp_path_factory.mktemp("monailabel")
    run_venv(
        "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle", "--output", str(work / "apps"), cwd=work
    )
    app = work / "apps" / "monaibundle"
    install_bundle(app, MODEL, SMALL_INFERENCE, SMALL_TRAIN)
    studies = work / "studies"
    studies.mkdir()
    shutil.copy(DEMO_DIR / CASE["image"], studies)
    srv = start_server(work, app, studies, [MODEL])
    yield srv
    srv.stop()


def organ_labels() -> dict[str, int]:
    """The bundle's output channels by name, background left out, as MONAI Label names them."""
    outputs = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]
    return {name.lower(): int(idx) for idx, name in outputs["pred"]["channel_def"].items() if name != "background"}


def test_info_lists_the_model_with_its_organ_labels(server):
    info = server.json("GET", "/info/")
    organs = organ_labels()
    assert MODEL in info["models"], f"models served: {sorted(info['models'])}\n{server.log_tail()}"
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["labels"] == organs
    assert len(organs) == 13
    assert MODEL in info["trainers"]


def test_inference_returns_a_label_map_on_the_input_grid(server, tmp_path):
    body, content_type = multipart({"params": json.dumps({"device": "cpu"})}, {})
    answer = server.call(
        "POST", f"/infer/{MODEL}?image={IMAGE_ID}&output=image", body=body, content_type=content_type, timeout=INFER_S
    )
    prediction = tmp_path / "prediction.nii.gz"
    prediction.write_bytes(answer)
    label_map, study = nib.load(prediction), nib.load(server.studies / CASE["image"])
    assert label_map.shape == study.shape
    np.testing.assert_allclose(label_map.affine, study.affine, atol=1e-3)
    values = np.unique(np.asarray(label_map.dataobj))
    assert np.array_equal(values, np.round(values)), values
    assert values.min() >= 0 and values.max() <= max(organ_labels().values()), values


def upload_demo_label(server: Server) -> None:
    """Save the demo CT's organ map in the server's datastore as its final label."""
    body, content_type = multipart({"params": "{}"}, {"label": DEMO_DIR / CASE["label"]})
    server.call("PUT", f"/datastore/label?image={IMAGE_ID}&tag=final", body=body, content_type=content_type)
    assert server.json("GET", "/datastore/?output=stats")["label_tags"] == {"final": 1}


def train_one_epoch(server: Server) -> dict[str, torch.Tensor]:
    """``POST /train/<MODEL>`` with one epoch, wait until it is done, and return the new ``models/model.pt``."""
    request = {"max_epochs": 1, "val_split": 0.0, "device": "cpu", "multi_gpu": False}
    server.call("POST", f"/train/{MODEL}", body=json.dumps(request).encode(), content_type="application/json")
    deadline = time.monotonic() + TRAIN_S
    status = server.json("GET", "/train/")
    while status.get("status") not in ("DONE", "ERROR") and time.monotonic() < deadline:
        time.sleep(1)
        status = server.json("GET", "/train/")
    details = "\n".join(status.get("details", [])[-40:])
    assert status.get("status") == "DONE", f"training ended as {status.get('status')}:\n{details}\n{server.log_tail()}"
    return torch.load(server.app / "model" / MODEL / "models" / "model.pt", map_location="cpu", weights_only=True)


def assert_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "one training epoch left models/model.pt unchanged"


def test_training_on_an_uploaded_label_changes_the_weights(server):
    upload_demo_label(server)
    weights = server.app / "model" / MODEL / "models" / "model.pt"
    before = torch.load(weights, map_location="cpu", weights_only=True)
    assert_changed(before, train_one_epoch(server))


# ---------------------------------------------------------------- the project's own app: both task types

CLASSIFIER = "voco_covid_cls"
SMALL_CLASSIFIER = {"feature_size": 12, "window_size": 4, "spatial_size": [32, 32, 32]}


@pytest.fixture(scope="module")
def voco_app(tmp_path_factory):
    """monailabel_app serving voco_btcv_seg and voco_covid_cls, with one synthetic demo volume of each class
    and the embedded abdominal CT as studies."""
    assert Path(PYTHON).is_file(), f"VOCO_MONAILABEL_PYTHON: {PYTHON} is not a file"
    work = tmp_path_factory.mktemp("voco_app")
    app = work / "voco_app"
    shutil.copytree(REPO / "monailabel_app", app, ignore=shutil.ignore_patterns("__pycache__", "model"))
    install_bundle(app, MODEL, SMALL_INFERENCE, SMALL_TRAIN)
    install_bundle(app, CLASSIFIER, SMALL_CLASSIFIER)
    demo = Path(demo_covid.demo_covid_dir(work / "covid_demo", patients_per_class=1))
    studies = work / "studies"
    studies.mkdir()
    for entry in json.loads((demo / "datalist.json").read_text())["training"]:
        if entry["image"].endswith(f"_{demo_covid.SOURCES[0]}.nii.gz"):
            shutil.copy(demo / entry["image"], studies)
    shutil.copy(DEMO_DIR / CASE["image"], studies)
    srv = start_server(work, app, studies, [MODEL, CLASSIFIER])
    yield srv
    srv.stop()


def test_voco_app_serves_each_bundle_with_the_task_its_metadata_asks_for(voco_app):
    info = voco_app.json("GET", "/info/")
    assert info["models"][CLASSIFIER]["type"] == "classification"
    assert info["models"][CLASSIFIER]["labels"] == {"ncp": 0, "cp": 1, "normal": 2}
    assert info["models"][MODEL]["type"] == "segmentation"
    assert info["models"][MODEL]["labels"] == organ_labels()
    assert MODEL in info["trainers"] and CLASSIFIER not in info["trainers"]


def test_voco_app_classifies_a_volume_as_the_bundle_itself_does(voco_app, tmp_path):
    """The server's class scores are the softmax probabilities that the bundle's own inference.json computes
    (MONAI 1.6 in this environment) from the same weights and volume."""
    study = sorted(voco_app.studies.glob("NCP_*.nii.gz"))[0]
    body, content_type = multipart({"params": json.dumps({"device": "cpu"})}, {})
    image_id = study.name.removesuffix(".nii.gz")
    answer = json.loads(
        voco_app.call("POST", f"/infer/{CLASSIFIER}?image={image_id}&output=json", body=body, content_type=content_type)
    )
    scores = {row["label"]: row["score"] for row in answer["prediction"]}
    assert list(scores) == ["ncp", "cp", "normal"]
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert max(scores.values()) - min(scores.values()) > 0.01  # not the uniform answer of a zero head

    bundle = voco_app.app / "model" / CLASSIFIER
    wf = bundle_workflow(
        CLASSIFIER,
        ("inference.json",),
        "infer",
        bundle_root=str(tmp_path),
        checkpoint=str(bundle / "models" / "model.pt"),
        data=[{"image": str(study)}],
        inference_dir=str(tmp_path),
        **SMALL_CLASSIFIER,
    )
    wf.run()
    expected = json.loads((tmp_path / "probabilities.json").read_text())["volumes"][0]["probabilities"]
    assert [scores[name.lower()] for name in expected] == pytest.approx(list(expected.values()), abs=1e-4)


def test_voco_app_segments_a_dicom_series_folder_onto_its_grid(voco_app, dicom_cts, tmp_path):
    """An infer request naming a series folder on the server (as MONAI Label's DICOMweb datastore hands over a
    downloaded series with ``convert_to_nifti`` false): the bundle reads the series, and the label map lies on the
    series' grid, which is the grid of the NIfTI written from the same voxels."""
    ct = dicom_cts[1]  # the folder named after its SeriesInstanceUID
    params = {"device": "cpu", "result_extension": ".nii.gz"}  # a folder has no file ending to copy
    body, content_type = multipart({"params": json.dumps(params)}, {})
    image = urllib.parse.quote(str(ct.folder))
    answer = voco_app.call(
        "POST", f"/infer/{MODEL}?image={image}&output=image", body=body, content_type=content_type, timeout=INFER_S
    )
    prediction = tmp_path / "prediction.nii.gz"
    prediction.write_bytes(answer)
    label_map, reference = nib.load(prediction), nib.load(ct.nifti)
    assert label_map.shape == reference.shape
    np.testing.assert_allclose(label_map.affine, reference.affine, atol=1e-3)
    values = np.unique(np.asarray(label_map.dataobj))
    assert values.min() >= 0 and values.max() <= max(organ_labels().values()), values


def test_voco_app_classifies_a_dicom_series_folder_as_its_nifti(voco_app, dicom_cts):
    ct = dicom_cts[0]  # slices with shuffled names, an RTSTRUCT, an SR and a text file beside them
    body, content_type = multipart({"params": json.dumps({"device": "cpu"})}, {})
    scores = {}
    for form, path in (("series", ct.folder), ("nifti", ct.nifti)):
        image = urllib.parse.quote(str(path))
        answer = voco_app.call(
            "POST", f"/infer/{CLASSIFIER}?image={image}&output=json", body=body, content_type=content_type
        )
        scores[form] = [row["score"] for row in json.loads(answer)["prediction"]]
    assert scores["series"] == pytest.approx(scores["nifti"], abs=1e-4)


def test_voco_app_trains_a_segmentation_bundle_again_and_again(voco_app):
    """MONAI Label trains in the bundle's own folder every time; the second training archives the first one's
    checkpoints instead of refusing to start beside them."""
    upload_demo_label(voco_app)
    checkpoints = voco_app.app / "model" / MODEL / "outputs" / "checkpoints"
    first = train_one_epoch(voco_app)
    first_files = sorted(p.name for p in checkpoints.glob("checkpoint_*"))
    assert checkpoint_steps(checkpoints)
    second = train_one_epoch(voco_app)
    assert_changed(first, second)
    assert sorted(p.name for p in (checkpoints / "earlier_runs" / "1").iterdir()) == first_files
    assert not (checkpoints / "earlier_runs" / "2").exists()
