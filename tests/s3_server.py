"""A real S3 protocol server (moto) on loopback for the storage and cluster tests."""
import contextlib
from pathlib import Path


@contextlib.contextmanager
def moto_s3(home: Path, bucket: str):
    """Yield (environment, boto3 client) for a moto server on a free loopback port with ``bucket``.

    The environment holds the AWS SDK's own variables, read alike by pyarrow
    (our storage and Ray's), boto3 and the aws CLI; ``home`` takes their config files.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probing for credentials
            "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        }
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=bucket)
        yield env, client
    finally:
        server.stop()


def listing(client, bucket: str, prefix: str) -> dict[str, dict]:
    """{key: the object's listing entry (Size, ETag, ...)} for every object under ``prefix``."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update({item["Key"]: item for item in page.get("Contents", [])})
    return found
