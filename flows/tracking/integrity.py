"""What a registry version stores, and proof that it is what registration stored.

Registration writes ``manifest.json`` beside the version's files: the sha256 of every file it
stores (weights, configs, the pyfunc's code), by path. The manifest's own sha256 goes into the
version's tag ``sha256.manifest``. The tag lives in the tracking server's database, apart from
the artifact store, so whoever can write only to the artifact store (a bucket's credentials, a
shared ``mlartifacts/`` folder) cannot change a file without the loader seeing it; changing the
tag takes write permission on the registered model itself. One tag rather than one per file: a
version stores about a hundred files (the pyfunc's copy of the code), and one digest anchors
them all. No signature: a signing key would have to be shared with every registering machine,
and it would guard nothing that the server's permissions on the tag do not.

``load_verified`` downloads the whole version, checks every file (a changed, missing or extra
file is refused, naming it), then builds the sampler from three of them with the installed code.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow

from diffusion_core.data.digest import file_sha256
from flows.tracking.sampler import RegisteredSampler

MANIFEST = "manifest.json"
DIGEST_TAG = "sha256.manifest"
# the files the installed code reads (paths in the version, as _save_pyfunc lays them out)
SPEC, MODEL_DIR = "artifacts/spec.json", "artifacts/model"


class TamperedVersion(ValueError):
    """A registry version's stored files are not the ones registration recorded."""


def _stored_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its path relative to it ('/'-separated)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def write_manifest(folder: Path) -> str:
    """Write ``manifest.json`` (the sha256 of every other file in ``folder``) and return the
    manifest's own sha256, the value of the version's ``sha256.manifest`` tag."""
    folder = Path(folder)
    files = {rel: file_sha256(p) for rel, p in _stored_files(folder).items() if rel != MANIFEST}
    body = json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True)
    (folder / MANIFEST).write_text(body + "\n")
    return file_sha256(folder / MANIFEST)


def verify_folder(folder: Path, manifest_digest: str, label: str) -> None:
    """TamperedVersion naming the file unless ``folder`` holds exactly the files of its manifest,
    each with its recorded sha256, and the manifest's sha256 is ``manifest_digest``."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise TamperedVersion(f"{label}: its stored {MANIFEST} is missing: refusing to load it")
    if file_sha256(manifest) != manifest_digest:
        raise TamperedVersion(f"{label}: its stored {MANIFEST} does not match the tag {DIGEST_TAG} "
                              f"recorded at registration: refusing to load it")
    recorded = json.loads(manifest.read_text())["files"]
    stored = {rel: p for rel, p in _stored_files(folder).items() if rel != MANIFEST}
    extra, missing = sorted(set(stored) - set(recorded)), sorted(set(recorded) - set(stored))
    if extra:
        raise TamperedVersion(f"{label}: stored file {extra[0]} was not stored at registration "
                              f"(an extra file): refusing to load it")
    if missing:
        raise TamperedVersion(f"{label}: stored file {missing[0]} is missing: refusing to load it")
    for rel, path in stored.items():
        if file_sha256(path) != recorded[rel]:
            raise TamperedVersion(f"{label}: stored file {rel} does not match the sha256 recorded "
                                  f"at registration: refusing to load it")


def download_verified(version, tracking_uri: str, dst: Path) -> Path:
    """Download a registry version (an MLflow ``ModelVersion``) into ``dst`` and check every
    stored file against its ``sha256.manifest`` tag; the folder, or TamperedVersion naming the
    file. (A verified folder is what to give `mlflow models serve -m`, which runs its code.)"""
    label = f"registered model {version.name!r} version {version.version}"
    digest = (version.tags or {}).get(DIGEST_TAG)
    if not digest:
        raise TamperedVersion(f"{label} carries no tag {DIGEST_TAG} (registered before file digests "
                              f"were recorded): refusing to load it; register its run again")
    source = version.source
    if source.startswith("models:/"):  # a logged model: its own files (a models:/ download adds one)
        source = mlflow.MlflowClient(tracking_uri).get_model_version_download_uri(version.name, version.version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                     tracking_uri=tracking_uri))
    verify_folder(local, digest, label)
    return local


def load_verified(version, tracking_uri: str) -> RegisteredSampler:
    """The sampler of a registry version, once ``download_verified`` has checked every stored
    file; built by the installed code from ``spec.json``, ``model.json`` and ``weights.pt``.
    Nothing stored is imported or run."""
    with tempfile.TemporaryDirectory(prefix="registry-version-") as tmp:
        local = download_verified(version, tracking_uri, Path(tmp))
        return RegisteredSampler.from_files(local / SPEC, local / MODEL_DIR)
