"""DVC remote round trip: `dvc push` from a reproduced workspace, `git clone` it elsewhere, `dvc pull`,
and the clone's pipeline is up to date with byte-identical outputs. Once with a local-directory
remote, once with an S3 remote served on loopback by moto (no network, no AWS account)."""

import json
import logging
import socket
from pathlib import Path

import pytest

from conftest import commit_all, run


def cache_objects(cache: Path) -> set[str]:
    """Content-addressed files of a DVC 3 cache or remote (``files/md5/xx/yyyy``), relative."""
    return {p.relative_to(cache).as_posix() for p in (cache / "files/md5").rglob("*") if p.is_file()}


def cached_outputs(ws: Path) -> dict[str, bytes]:
    """Every file of the DVC-cached outputs (models, prepared data) in the workspace."""
    files = [*(ws / "models").glob("*"), *(ws / "data/prepared").rglob("*")]
    return {p.relative_to(ws).as_posix(): p.read_bytes() for p in files if p.is_file()}


def push_clone_pull(ws: Path, clone: Path) -> None:
    """Commit the remote config, push, clone with git, pull: the clone matches ``ws``."""
    commit_all(ws, "add a DVC remote")
    pushed = run(["dvc", "push"], ws)
    assert "files pushed" in pushed.stdout, pushed.stdout
    # the remote holds everything the workspace's cache does for the pipeline's outputs
    assert json.loads(run(["dvc", "status", "--cloud", "--json", "dvc.yaml"], ws).stdout) == {}

    run(["git", "clone", "-q", str(ws), str(clone)], clone.parent)
    assert not (clone / "models/student_int8.onnx").exists()
    assert not (clone / ".dvc/cache").exists(), "a fresh clone has no DVC cache"
    pulled = run(["dvc", "pull"], clone)
    assert "files fetched" in pulled.stdout, pulled.stdout

    # `dvc status` with no target also checks compare/dvc.yaml, which `dvc repro` does not run
    assert json.loads(run(["dvc", "status", "--json", "dvc.yaml"], clone).stdout) == {}
    original = cached_outputs(ws)
    assert "models/student_int8.onnx" in original and "data/prepared/meta.json" in original
    assert cached_outputs(clone) == original
    assert (clone / "metrics/evaluate.json").read_bytes() == (ws / "metrics/evaluate.json").read_bytes()


@pytest.mark.integration
def test_local_remote_round_trip(reproduced, tmp_path):
    ws, remote = reproduced, tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "local", str(remote)], ws)
    push_clone_pull(ws, tmp_path / "clone")
    assert_remote_is_the_outputs_cache(cache_objects(remote), ws, tmp_path / "clone")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch, tmp_path):
    """A moto S3 server on 127.0.0.1 for this test; credentials and region only from the environment."""
    pytest.importorskip("dvc_s3")
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        yield endpoint, boto3.client("s3", endpoint_url=endpoint)
    finally:
        server.stop()


@pytest.mark.integration
def test_s3_remote_round_trip(reproduced, tmp_path, s3_endpoint):
    endpoint, s3 = s3_endpoint
    ws = reproduced
    s3.create_bucket(Bucket="kdpipe-test")
    run(["dvc", "remote", "add", "-d", "s3", "s3://kdpipe-test/dvc-cache"], ws)
    run(["dvc", "remote", "modify", "s3", "endpointurl", endpoint], ws)
    push_clone_pull(ws, tmp_path / "clone")
    listed = s3.list_objects_v2(Bucket="kdpipe-test", Prefix="dvc-cache/")
    stored = {obj["Key"].removeprefix("dvc-cache/") for obj in listed.get("Contents", [])}
    assert not listed["IsTruncated"]
    assert_remote_is_the_outputs_cache(stored, ws, tmp_path / "clone")


def assert_remote_is_the_outputs_cache(stored: set[str], ws: Path, clone: Path) -> None:
    """The remote holds cache objects only, and the clone pulled all of them. The workspace's cache
    holds more: the run-cache's copies of the git-tracked metrics and plots (DVC commits them there
    so that it can restore a stage), which `dvc push` leaves out, git has them."""
    local = cache_objects(ws / ".dvc/cache")
    assert stored and stored <= local, stored - local
    # (a `.dir` object lists a directory's files: here the training-curve folders)
    extra = {(ws / ".dvc/cache" / rel).read_bytes() for rel in local - stored if not rel.endswith(".dir")}
    tracked = {(ws / rel).read_bytes() for rel in run(["git", "ls-files", "metrics", "plots"], ws).stdout.split()}
    assert extra <= tracked, "a cache object that is neither pushed nor a git-tracked metrics/plots file"
    assert cache_objects(clone / ".dvc/cache") == stored
