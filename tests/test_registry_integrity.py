"""A registry version is loaded by the installed code, and only as registration stored it: a
line of code appended to the stored pyfunc file, one changed byte of the weights, a file added,
removed or a manifest rewritten to match are each refused, naming the file, and the appended
code does not run (while MLflow's own loader, given the same folder, runs it: the payload is
live). The threat model in docs/security.md names these tests."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_core.frameworks import DiffusionModel
from flows.config.params import parse_params
from flows.stages import data as stages
from flows.stages import train as train_stage
from flows.tracking import integrity, registry
from flows.tracking import runs as tracking
from tests.tiny import in_workspace, tiny_params

NAME, ALIAS = "digits-ddpm", "under-test"  # an alias of its own: who holds champion is not the point here
PAYLOAD = "open({marker!r}, 'w').write('stored code ran')\n"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """(workspace, the registered version's stored folder) of an untrained tiny U-Net."""
    root = tmp_path_factory.mktemp("integrity")
    with in_workspace(root):
        params = parse_params(tiny_params("digits"))
        stages.prepare(params)
        model_dir = root / "models" / "ddpm"
        DiffusionModel(train_stage.model_config(params, "ddpm", stages.dataset_meta(params))).save(model_dir)
        tracking.save_run_id(model_dir, tracking.start_run("digits", "ddpm", {}, {}), "digits")
        (root / "metrics").mkdir()
        (root / "metrics" / "ddpm.json").write_text(json.dumps({"fd": 5.0, "sampler": "ddim", "nfe": 9}))
        version = registry.register(params, "ddpm")["version"]
        tracking.client().set_registered_model_alias(NAME, ALIAS, str(version))
        source = tracking.client().get_model_version_download_uri(NAME, str(version))  # the logged model's files
        stored = Path(source.removeprefix("file://"))
        assert (stored / "MLmodel").is_file(), source  # the local store: the files themselves
        yield root, stored


@pytest.fixture()
def workspace(registered):
    """The workspace as the current folder; every stored file is put back after the test."""
    root, stored = registered
    backup = root / "backup"
    shutil.copytree(stored, backup)
    with in_workspace(root):
        yield root, stored
    shutil.rmtree(stored)
    shutil.move(backup, stored)


def test_registration_records_the_sha256_of_every_stored_file(workspace):
    _, stored = workspace
    version = tracking.client().get_model_version_by_alias(NAME, ALIAS)
    manifest = stored / integrity.MANIFEST
    assert version.tags[integrity.DIGEST_TAG] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    files = json.loads(manifest.read_text())["files"]
    on_disk = {p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {integrity.MANIFEST}
    assert {"MLmodel", "sampler_model.py", "artifacts/spec.json", "artifacts/model/weights.pt",
            "artifacts/model/model.json"} <= set(files)
    assert any(f.startswith("code/flows/") for f in files) and any(f.startswith("code/diffusion_core/") for f in files)
    for rel, digest in files.items():
        assert hashlib.sha256((stored / rel).read_bytes()).hexdigest() == digest, rel


def test_code_appended_to_the_stored_model_file_is_refused_and_does_not_run(workspace, tmp_path):
    root, stored = workspace
    marker = tmp_path / "pwned"
    with open(stored / "sampler_model.py", "a") as fh:
        fh.write(PAYLOAD.format(marker=str(marker)))
    with pytest.raises(integrity.TamperedVersion, match=r"stored file sampler_model\.py does not match"):
        registry.load_sampler(NAME, ALIAS)
    assert not marker.exists(), "load_sampler ran the stored code"
    # the payload is live: MLflow's own loader runs the stored file (what docs/security.md says
    # of mlflow.pyfunc.load_model and `mlflow models serve`); in a child, to keep this process's imports
    out = subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.pyfunc.load_model({str(stored)!r})"],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert marker.read_text() == "stored code ran"


def test_stored_code_appended_to_the_stored_library_copy_is_refused(workspace, tmp_path):
    _, stored = workspace
    marker = tmp_path / "pwned"
    target = stored / "code/flows/tracking/sampler.py"
    with open(target, "a") as fh:
        fh.write(PAYLOAD.format(marker=str(marker)))
    with pytest.raises(integrity.TamperedVersion, match=r"stored file code/flows/tracking/sampler\.py"):
        registry.load_sampler(NAME, ALIAS)
    assert not marker.exists()


def test_one_changed_byte_of_the_weights_is_refused_naming_the_file(workspace):
    _, stored = workspace
    weights = stored / "artifacts/model/weights.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(integrity.TamperedVersion, match=r"stored file artifacts/model/weights\.pt does not match"):
        registry.load_sampler(NAME, ALIAS)


def test_an_added_or_a_removed_file_is_refused_naming_it(workspace):
    _, stored = workspace
    (stored / "code/sitecustomize.py").write_text("print('hello')\n")
    with pytest.raises(integrity.TamperedVersion, match=r"code/sitecustomize\.py was not stored at registration"):
        registry.load_sampler(NAME, ALIAS)
    (stored / "code/sitecustomize.py").unlink()
    (stored / "artifacts/spec.json").unlink()
    with pytest.raises(integrity.TamperedVersion, match=r"stored file artifacts/spec\.json is missing"):
        registry.load_sampler(NAME, ALIAS)


def test_a_manifest_rewritten_to_match_a_tampered_file_is_refused(workspace):
    """Whoever writes only to the artifact store cannot vouch for a change: the manifest's own
    digest is a registry tag."""
    _, stored = workspace
    with open(stored / "sampler_model.py", "a") as fh:
        fh.write("import os\n")
    manifest = json.loads((stored / integrity.MANIFEST).read_text())
    manifest["files"]["sampler_model.py"] = hashlib.sha256((stored / "sampler_model.py").read_bytes()).hexdigest()
    (stored / integrity.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(integrity.TamperedVersion, match=r"manifest\.json does not match the tag sha256\.manifest"):
        registry.load_sampler(NAME, ALIAS)


def test_a_version_without_recorded_digests_is_refused(workspace):
    client = tracking.client()
    version = client.get_model_version_by_alias(NAME, ALIAS)
    client.delete_model_version_tag(NAME, version.version, integrity.DIGEST_TAG)
    try:
        with pytest.raises(integrity.TamperedVersion, match="carries no tag sha256.manifest"):
            registry.load_sampler(NAME, ALIAS)
    finally:
        client.set_model_version_tag(NAME, version.version, integrity.DIGEST_TAG,
                                     version.tags[integrity.DIGEST_TAG])
    assert registry.load_sampler(NAME, ALIAS).predict(None, params={"num_samples": 2}).shape == (2, 1, 8, 8)


def test_the_verified_sampler_draws_the_sample_stages_samples(workspace):
    """Loaded by the installed code, sample i of seed s is still the pipeline's sample i."""
    import numpy as np

    from flows.distributed import sample_ray

    root, _ = workspace
    x = registry.load_sampler(NAME, ALIAS).predict(None, params={"num_samples": 4, "seed": 3})
    data = tiny_params("digits")
    stage = parse_params({**data, "sample": {**data["sample"], "seed": 3}})
    part = sample_ray.stage_callables(stage, "ddpm", root / "models" / "ddpm", "image", (1, 8, 8))
    drawn, _ = part["draw"](part["load_model"](), part["seeds_of"](1, 3))
    np.testing.assert_allclose(x[1:], drawn, rtol=0, atol=1e-5)
