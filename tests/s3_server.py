"""A real S3 API on loopback: ``moto`` in server mode, in its own process (as dvc-s3's tests).

IAM is not enforced until :meth:`MotoS3Server.enforce_iam` is called, so a test first creates
buckets, users and their policies, then turns enforcement on and acts as those users.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx

from cerebrascan.testing.server_process import free_port, stop_process, wait_until_ready

REGION = "us-east-1"
SETUP_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "setup", "AWS_SECRET_ACCESS_KEY": "setup"}


@dataclass(frozen=True)
class AwsUser:
    """An IAM user of the test server and its access key."""

    name: str
    access_key_id: str
    secret_access_key: str

    def environment(self) -> dict[str, str]:
        """Environment variables that make boto3 (DVC, MLflow) act as this user.

        The endpoint is not among them: it comes from the ``storage`` settings under test.
        """
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
        }


@dataclass
class MotoS3Server:
    """A running moto server."""

    endpoint_url: str
    process: subprocess.Popen[bytes]

    def client(self, service: str = "s3", user: AwsUser | None = None) -> Any:
        """A boto3 client on this server (setup credentials unless ``user``)."""
        credentials = (
            {
                "aws_access_key_id": user.access_key_id,
                "aws_secret_access_key": user.secret_access_key,
            }
            if user
            else {
                "aws_access_key_id": SETUP_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": SETUP_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            }
        )
        return boto3.client(
            service, endpoint_url=self.endpoint_url, region_name=REGION, **credentials
        )

    def create_user(self, name: str, policy_file: Path) -> AwsUser:
        """An IAM user whose only permissions are the policy document in ``policy_file``."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        policy = iam.create_policy(
            PolicyName=f"{name}-policy", PolicyDocument=policy_file.read_text()
        )
        iam.attach_user_policy(UserName=name, PolicyArn=policy["Policy"]["Arn"])
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return AwsUser(name, key["AccessKeyId"], key["SecretAccessKey"])

    def enforce_iam(self) -> None:
        """From now on every request is authenticated and checked against IAM policies."""
        response = httpx.post(f"{self.endpoint_url}/moto-api/reset-auth", content=b"0")
        response.raise_for_status()

    def relax_iam(self) -> None:
        """Stop checking IAM (for a later test's setup)."""
        response = httpx.post(f"{self.endpoint_url}/moto-api/reset-auth", content=b"inf")
        response.raise_for_status()


@contextmanager
def moto_s3_server(log_path: Path, ready_timeout_s: float = 60.0) -> Iterator[MotoS3Server]:
    """Run ``python -m moto.server`` on a free loopback port until the block exits.

    Raises:
        RuntimeError: the server exited or did not answer in time (its log tail is included).
    """
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **SETUP_CREDENTIALS},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            process,
            f"{url}/moto-api/data.json",
            log_path,
            timeout_s=ready_timeout_s,
            what="moto",
            interval_s=0.2,
        )
        yield MotoS3Server(endpoint_url=url, process=process)
    finally:
        stop_process(process, timeout_s=15)
        log.close()


def policy_actions(policy_file: Path) -> set[str]:
    """Every action a policy document allows (for documentation checks)."""
    document = json.loads(policy_file.read_text())
    actions: set[str] = set()
    for statement in document["Statement"]:
        allowed = statement["Action"]
        actions.update([allowed] if isinstance(allowed, str) else allowed)
    return actions
