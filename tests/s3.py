"""A real S3 server for the tests: moto's server mode on loopback, one per test session.

``s3_server`` starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 and a free port the
first time a test asks for it (as s3fs's own tests do). The ``s3`` fixture points this
process at it the way a user points pipec at any S3 endpoint (``AWS_ENDPOINT_URL`` and
the usual AWS variables, read by botocore), creates a fresh bucket for the test, and
hands back ``S3.env`` for the subprocesses a test starts (drivers, cluster workers).

tests/conftest.py registers them for every test file (`pytest_plugins`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import pytest


@dataclass
class S3:
    endpoint: str
    bucket: str
    env: dict[str, str]  # what a process needs to reach the server
    client: object  # a boto3 S3 client on the server, to look at what pipec wrote

    def url(self, key: str = "") -> str:
        """``s3://BUCKET/KEY``."""
        return f"s3://{self.bucket}/{key}".rstrip("/") if key else f"s3://{self.bucket}"

    def keys(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under ``prefix``, sorted."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes | str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key,
                               Body=data.encode("utf-8") if isinstance(data, str) else data)


@pytest.fixture(scope="session")
def s3_server():
    """The session's moto S3 server; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request lines in test output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the session's S3 server, with this process's environment set to
    reach it (undone after the test)."""
    import boto3
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "testing",
           # never read the machine's own AWS files (a missing file is fine; /dev/null is not)
           "AWS_CONFIG_FILE": "/nonexistent/pipec-tests/aws-config",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/pipec-tests/aws-credentials"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _forget_filesystems()
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"pipec-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    yield S3(s3_server, bucket, env, client)
    _forget_filesystems()


def _forget_filesystems() -> None:
    """Drop fsspec's cached S3 filesystems, so the next one reads the environment again."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()
