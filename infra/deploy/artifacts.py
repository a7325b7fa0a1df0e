"""Build and package: ``sam build`` without a container, then zips uploaded by content hash.

Each built function folder and the layer are zipped, named by the SHA-256 of their
content and uploaded to the artifact bucket once; ``CodeUri``/``ContentUri`` become
``s3://`` locations. Equal content gives an equal key, so a redeploy of unchanged code
uploads nothing and CloudFormation sees no change.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from infra.deploy.target import Clients, DeployError, DeployTarget


def sam_build(template: Path, build_dir: Path, cache_dir: Path) -> Path:
    """``sam build`` without a container; returns the built template."""
    sam = Path(sys.executable).parent / "sam"
    argv = [str(sam), "build", "--template-file", str(template), "--build-dir", str(build_dir),
            "--cached", "--cache-dir", str(cache_dir)]
    env = dict(os.environ, SAM_CLI_TELEMETRY="0")
    try:
        result = subprocess.run(argv, cwd=template.parent, env=env, capture_output=True, text=True,
                                timeout=900, check=False)
    except FileNotFoundError:
        raise DeployError(f"sam not found at {sam}: run `make deps` (aws-sam-cli is pinned)") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise DeployError(f"sam build failed (exit {result.returncode}):\n{tail}")
    return build_dir / "template.yaml"


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def content_hash(folder: Path) -> str:
    """SHA-256 over each file's relative path, mode and bytes: the folder's identity.

    Timestamps are left out, so a rebuild of unchanged code keeps its S3 key: nothing
    is uploaded and CloudFormation sees no change to the function.
    """
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(f"{os.access(path, os.X_OK)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def zip_folder(folder: Path) -> bytes:
    """A zip of ``folder`` as Lambda unpacks it into ``/var/task`` or ``/opt``.

    Files keep their modification times and the ``__pycache__`` that ``sam build``
    compiled: Python trusts a ``.pyc`` only when its recorded source mtime matches, and
    ``/opt`` is read-only on Lambda, so without them every cold start would compile
    the whole layer again.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in _files(folder):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def ensure_bucket(clients: Clients, target: DeployTarget) -> str:
    """The artifact bucket: checked, created on emulators, or payfn's own for ``resolve_s3``."""
    s3 = clients("s3")
    bucket = target.s3_bucket
    create = target.create_bucket
    if target.resolve_s3:
        account = clients("sts").get_caller_identity()["Account"]
        bucket, create = f"payfn-artifacts-{account}-{target.region}", True
    if not bucket:
        raise DeployError(f"no artifact bucket for --env {target.env}: set s3_bucket or resolve_s3 in "
                          "samconfig.toml, or pass --s3-bucket")
    try:
        s3.head_bucket(Bucket=bucket)
        return bucket
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    if not create:
        raise DeployError(f"S3 bucket {bucket!r} does not exist at {target.where}: create it "
                          f"(aws s3 mb s3://{bucket}) or set resolve_s3 = true in samconfig.toml")
    request: dict[str, Any] = {"Bucket": bucket}
    if target.region != "us-east-1":
        request["CreateBucketConfiguration"] = {"LocationConstraint": target.region}
    s3.create_bucket(**request)
    return bucket


def package(template: dict[str, Any], build_dir: Path, clients: Clients, bucket: str, prefix: str) -> int:
    """Upload each function's and layer's built folder; point the template at S3. Returns uploads."""
    s3 = clients("s3")
    uploaded = 0
    for logical_id, resource in template.get("Resources", {}).items():
        key_name = {"AWS::Serverless::Function": "CodeUri",
                    "AWS::Serverless::LayerVersion": "ContentUri"}.get(resource.get("Type", ""))
        properties = resource.get("Properties", {})
        location = properties.get(key_name) if key_name else None
        if not isinstance(location, str) or location.startswith("s3://"):
            continue
        folder = (build_dir / location).resolve()
        if not folder.is_dir():
            raise DeployError(f"{logical_id}: built folder {folder} is missing (did sam build run?)")
        key = f"{prefix}/{content_hash(folder)}.zip"
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError:
            s3.put_object(Bucket=bucket, Key=key, Body=zip_folder(folder))
            uploaded += 1
        properties[key_name] = f"s3://{bucket}/{key}"
    return uploaded
