"""sources.remote: one-line errors for local paths and fsspec URLs (offline: a local moto
S3 server, a port with nothing listening, hand-made exceptions)."""

from __future__ import annotations

import errno
import importlib.util
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from dahash_index.sources.remote import (
    RemoteError,
    describe,
    is_transient,
    parse_storage_options,
    read_url,
    url_filesystem,
)

BUCKET = "dahash-remote-test"
NO_CREDENTIALS = (
    "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile)"
)


def one_line(message: str, url: str) -> str:
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{url}: "), message
    return message[len(url) + 2:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_options(endpoint: str) -> dict:
    # A fresh S3FileSystem each time: fsspec caches instances by their options, and an
    # instance keeps the credentials it resolved first, whatever the environment says later.
    return {"client_kwargs": {"endpoint_url": endpoint}, "skip_instance_cache": True}


def without_aws(env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_SHARED_CREDENTIALS_FILE="/nonexistent/creds",
               AWS_CONFIG_FILE="/nonexistent/config")
    return env


@pytest.fixture
def aws_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    s3_client.put_object(Bucket=BUCKET, Key="scenes/a.jpg", Body=b"jpeg bytes")
    return BUCKET


# --- S3 through a local moto server ----------------------------------------------------------


def test_reads_an_object_through_an_endpoint(aws_env, s3_endpoint, bucket):
    assert read_url(f"s3://{bucket}/scenes/a.jpg", s3_options(s3_endpoint)) == b"jpeg bytes"
    options = parse_storage_options(["skip_instance_cache=true"], endpoint_url=s3_endpoint)
    assert read_url(f"s3://{bucket}/scenes/a.jpg", options) == b"jpeg bytes"


def test_missing_object(aws_env, s3_endpoint, bucket):
    url = f"s3://{bucket}/scenes/nope.jpg"
    with pytest.raises(RemoteError) as info:
        read_url(url, s3_options(s3_endpoint))
    assert one_line(str(info.value), url) == "not found"
    assert info.value.url == url and not info.value.transient
    assert isinstance(info.value, OSError)


def test_missing_bucket(aws_env, s3_endpoint, bucket):
    url = "s3://no-such-bucket-here/a.jpg"
    with pytest.raises(RemoteError) as info:
        read_url(url, s3_options(s3_endpoint))
    assert one_line(str(info.value), url) == "not found (no such bucket)"
    assert not info.value.transient


def test_prefix_is_a_directory(aws_env, s3_endpoint, bucket):
    for url in (f"s3://{bucket}", f"s3://{bucket}/scenes/"):
        with pytest.raises(RemoteError) as info:
            read_url(url, s3_options(s3_endpoint))
        assert one_line(str(info.value), url) == "is a directory, not a file"


def test_no_credentials(monkeypatch, s3_endpoint, bucket):
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in without_aws({}).items():
        monkeypatch.setenv(key, value)
    url = f"s3://{bucket}/scenes/a.jpg"
    with pytest.raises(RemoteError) as info:
        read_url(url, s3_options(s3_endpoint))
    assert one_line(str(info.value), url) == NO_CREDENTIALS
    assert not info.value.transient


def test_dead_endpoint_fails_fast(aws_env):
    endpoint = f"http://127.0.0.1:{free_port()}"
    url = "s3://bucket/a.jpg"
    start = time.monotonic()
    with pytest.raises(RemoteError) as info:
        read_url(url, s3_options(endpoint))
    assert time.monotonic() - start < 10
    assert one_line(str(info.value), url) == (
        f"cannot connect to endpoint {endpoint} (connection refused)"
    )
    assert info.value.transient and is_transient(info.value)


def test_silent_endpoint_times_out(aws_env):
    """An endpoint that accepts connections and never answers: the read timeout (here
    shortened, as --storage-option does) ends the read in one line, not minutes later."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    options = s3_options(endpoint) | {"config_kwargs": {"read_timeout": 0.5}, "retries": 1}
    start = time.monotonic()
    try:
        with pytest.raises(RemoteError, match="timed out") as info:
            read_url("s3://bucket/a.jpg", options)
    finally:
        server.close()
    assert time.monotonic() - start < 5  # 0.5 s x 2 attempts x 1 retry, plus setup
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("retries", [0, "x", 1.5])
def test_s3_retries_option_is_checked(retries):
    with pytest.raises(RemoteError, match="retries must be a positive integer"):
        url_filesystem("s3://bucket/a.jpg", {"retries": retries})


def test_s3_retry_defaults_only_when_unset(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    fs, path = url_filesystem("s3://bucket/a.jpg", {"skip_instance_cache": True})
    assert path == "bucket/a.jpg"
    assert fs.config_kwargs == {"retries": {"total_max_attempts": 2, "mode": "standard"},
                                "connect_timeout": 3, "read_timeout": 5}
    assert fs.retries == 2  # a silent endpoint: 5 s x 2 attempts x 2 retries
    mine = {"config_kwargs": {"retries": {"max_attempts": 7}, "connect_timeout": 9,
                              "read_timeout": 60}, "skip_instance_cache": True, "retries": 5}
    fs, _ = url_filesystem("s3://bucket/a.jpg", mine)
    assert fs.config_kwargs == {"retries": {"max_attempts": 7}, "connect_timeout": 9,
                                "read_timeout": 60}
    assert fs.retries == 5 and mine["retries"] == 5
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    fs, _ = url_filesystem("s3://bucket/a.jpg", {"skip_instance_cache": True})
    assert "retries" not in fs.config_kwargs
    fs, _ = url_filesystem("memory://x/a.jpg")  # not S3: options untouched
    assert "config_kwargs" not in fs.storage_options


def test_nothing_multiline_reaches_stderr(cli_env):
    """botocore / aiobotocore / s3fs log through `logging`; a failed read must not print a
    traceback (Python's last-resort handler shows WARNING and above on stderr)."""
    script = textwrap.dedent(
        f"""
        import os
        from dahash_index.sources.remote import RemoteError, read_url
        for url, creds in (("s3://b/a.jpg", True), ("s3://c/a.jpg", False)):
            if not creds:
                del os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
            try:
                read_url(url, {{"client_kwargs": {{"endpoint_url": "http://127.0.0.1:{free_port()}"}},
                               "skip_instance_cache": True}})
            except RemoteError as err:
                print(err)
        """
    )
    env = without_aws(cli_env)
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith("s3://b/a.jpg: cannot connect to endpoint http://127.0.0.1:")
    assert lines[1] == f"s3://c/a.jpg: {NO_CREDENTIALS}"
    assert len(result.stderr.splitlines()) <= 1, result.stderr


# --- other protocols and local files ---------------------------------------------------------


def test_missing_protocol_package():
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed, so gs:// does not fail for a missing package")
    for url in ("gs://bucket/a.jpg", "simplecache::gs://bucket/a.jpg"):
        with pytest.raises(RemoteError) as info:
            url_filesystem(url)
        assert one_line(str(info.value), url) == (
            "reading gs:// URLs needs the gcsfs package (pip install gcsfs)"
        )


def test_unknown_protocol():
    with pytest.raises(RemoteError) as info:
        read_url("nosuchproto://bucket/a.jpg")
    assert one_line(str(info.value), "nosuchproto://bucket/a.jpg") == (
        "unknown URL protocol nosuchproto://"
    )


def test_local_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"local")
    assert read_url(str(tmp_path / "a.jpg")) == b"local"
    assert read_url(f"file://{tmp_path}/a.jpg") == b"local"
    missing = str(tmp_path / "y.jpg")
    with pytest.raises(RemoteError) as info:
        read_url(missing)
    assert one_line(str(info.value), missing) == "not found"
    with pytest.raises(RemoteError) as info:
        read_url(str(tmp_path))
    assert one_line(str(info.value), str(tmp_path)) == "is a directory, not a file"


def test_remote_error_pickles():
    err = RemoteError("s3://b/a.jpg: not found", "s3://b/a.jpg", transient=False)
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.url == err.url and copy.transient is False


# --- parse_storage_options -------------------------------------------------------------------


def test_parse_storage_options_values():
    pairs = ["anon=true", "requester_pays=false", "key=abc", "n=3", "f=1.5", "x=null",
             's="123"', "empty=", "eq=a=b", " spaced =1"]
    assert parse_storage_options(pairs) == {
        "anon": True, "requester_pays": False, "key": "abc", "n": 3, "f": 1.5, "x": None,
        "s": "123", "empty": "", "eq": "a=b", "spaced": 1,
    }
    assert parse_storage_options([]) == {}


def test_parse_storage_options_endpoint():
    assert parse_storage_options([], endpoint_url="http://127.0.0.1:9000") == {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}
    }
    merged = parse_storage_options(['client_kwargs={"region_name": "eu-west-1"}', "anon=true"],
                                   endpoint_url="http://h:1")
    assert merged == {"client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://h:1"},
                      "anon": True}


@pytest.mark.parametrize("pair", ["anon", "=true", " =1", ""])
def test_parse_storage_options_rejects(pair):
    with pytest.raises(ValueError, match=r"^--storage-option expects KEY=VALUE, got "):
        parse_storage_options(["key=abc", pair])


def test_parse_storage_options_client_kwargs_not_an_object():
    with pytest.raises(ValueError, match="client_kwargs"):
        parse_storage_options(["client_kwargs=oops"], endpoint_url="http://h:1")


# --- describe() and is_transient() on hand-made exceptions -----------------------------------

URL = "s3://b/a.jpg"


def caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


# Stand-ins named like aiohttp's and botocore's classes: matching goes by class name, so
# describe() works whether or not those packages are installed.
class ClientConnectorError(OSError):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"Cannot connect to host {host}:{port}")
        self.host, self.port = host, port


class NoCredentialsError(Exception):
    pass


def client_error(code: str, status: int, message: str = "msg") -> Exception:
    exceptions = pytest.importorskip("botocore.exceptions")
    response = {"Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status}}
    return exceptions.ClientError(response, "GetObject")


def test_describe_without_botocore_classes():
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    assert describe(URL, caused(ClientConnectorError("127.0.0.1", 9), refused)) == (
        f"{URL}: cannot connect to endpoint 127.0.0.1:9 (connection refused)"
    )
    assert describe(URL, NoCredentialsError("Unable to locate credentials")) == (
        f"{URL}: {NO_CREDENTIALS}"
    )
    assert describe(URL, FileNotFoundError(errno.ENOENT, "No such file", "/x")) == (
        f"{URL}: not found"
    )
    assert describe("/x/y.jpg", PermissionError(errno.EACCES, "nope")) == (
        "/x/y.jpg: permission denied"
    )
    assert describe(URL, TimeoutError()) == f"{URL}: connection to the server failed (timed out)"
    assert describe(URL, ValueError("bad header\nsecond line")) == f"{URL}: ValueError: bad header"
    assert describe(URL, KeyError("k")) == f"{URL}: KeyError: 'k'"
    assert describe(URL, RuntimeError("")) == f"{URL}: RuntimeError: RuntimeError"
    assert describe(URL, RemoteError(f"{URL}: not found")) == f"{URL}: not found"


def test_describe_botocore_exceptions():
    exceptions = pytest.importorskip("botocore.exceptions")
    endpoint = "http://127.0.0.1:9"
    dead = caused(exceptions.EndpointConnectionError(endpoint_url=f"{endpoint}/b/a.jpg"),
                  ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    cases = {
        exceptions.NoCredentialsError(): NO_CREDENTIALS,
        dead: f"cannot connect to endpoint {endpoint} (connection refused)",
        exceptions.ConnectTimeoutError(endpoint_url=f"{endpoint}/b"):
            f"cannot connect to endpoint {endpoint} (timed out)",
        exceptions.ReadTimeoutError(endpoint_url=f"{endpoint}/b"):
            f"connection to endpoint {endpoint} failed (timed out)",
        exceptions.ConnectionClosedError(endpoint_url=f"{endpoint}/b"):
            f"connection to endpoint {endpoint} failed (connection closed by the server)",
        client_error("NoSuchKey", 404): "not found",
        client_error("404", 404): "not found",
        client_error("NoSuchBucket", 404): "not found (no such bucket)",
        client_error("AccessDenied", 403): "access denied",
        # what s3fs raises: its translation of the ClientError, with the original as cause
        caused(PermissionError("Access Denied"), client_error("AccessDenied", 403)):
            "access denied",
        caused(FileNotFoundError("bucket gone"), client_error("NoSuchBucket", 404)):
            "not found (no such bucket)",
        caused(PermissionError("bad key"), client_error("InvalidAccessKeyId", 403)):
            "credentials rejected (InvalidAccessKeyId)",
        caused(OSError(errno.EBUSY, "slow down"), client_error("SlowDown", 503)):
            "server error (HTTP 503, SlowDown)",
        exceptions.ParamValidationError(report="Invalid bucket name \"B!\""):
            'ParamValidationError: Parameter validation failed: Invalid bucket name "B!"',
    }
    for exc, reason in cases.items():
        assert describe(URL, exc) == f"{URL}: {reason}"


def test_describe_survives_cycles():
    first, second = OSError("first"), OSError("second")
    first.__context__, second.__context__ = second, first
    assert describe(URL, first) == f"{URL}: OSError: first"
    assert is_transient(first) is False


def test_is_transient_builtin():
    assert is_transient(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert is_transient(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert is_transient(TimeoutError())
    assert is_transient(OSError(errno.EIO, "I/O error"))
    assert is_transient(caused(RemoteError(f"{URL}: x"), ClientConnectorError("h", 1)))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "missing"))
    assert not is_transient(PermissionError(errno.EACCES, "denied"))
    assert not is_transient(IsADirectoryError(errno.EISDIR, "dir"))
    assert not is_transient(NoCredentialsError("Unable to locate credentials"))
    assert not is_transient(ValueError("cannot decode image"))
    assert not is_transient(OSError("no errno"))
    assert not is_transient(RemoteError(f"{URL}: not found"))


def test_is_transient_botocore():
    exceptions = pytest.importorskip("botocore.exceptions")
    assert is_transient(exceptions.EndpointConnectionError(endpoint_url="http://h:1"))
    assert is_transient(exceptions.ReadTimeoutError(endpoint_url="http://h:1"))
    assert is_transient(client_error("InternalError", 500))
    assert is_transient(caused(OSError(errno.EBUSY, "x"), client_error("SlowDown", 503)))
    assert is_transient(client_error("Throttling", 400))
    assert is_transient(client_error("TooManyRequests", 429))
    assert not is_transient(exceptions.NoCredentialsError())
    assert not is_transient(client_error("NoSuchKey", 404))
    assert not is_transient(client_error("AccessDenied", 403))
    # s3fs wraps an unknown 4xx code in OSError(EIO, ...): the HTTP answer decides
    assert not is_transient(caused(OSError(errno.EIO, "x"), client_error("InvalidArgument", 400)))
