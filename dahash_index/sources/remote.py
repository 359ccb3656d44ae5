"""The one place that opens fsspec URLs (local paths, s3://, gs://, http://, ...).

Every failure becomes a :class:`RemoteError` whose message is one line that starts with the
URL, e.g. ``s3://b/a.jpg: not found``. Object-store clients (s3fs, botocore, aiohttp) raise
their own exception types; they are recognised by class name along the exception's MRO and
its ``__cause__``/``__context__`` chain, so nothing here imports them.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

import fsspec
from fsspec.core import split_protocol
from fsspec.registry import get_filesystem_class, known_implementations

from dahash_index.errors import is_int


class RemoteError(OSError):
    """A URL cannot be opened, listed or read; str() is one line naming the URL and the reason.
    ``url`` is the URL as given; ``transient`` says whether retrying later may help."""

    def __init__(self, message: str, url: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.transient = transient


NO_CREDENTIALS = (
    "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile)"
)
_CONNECT = {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
            "ConnectionRefusedError", "gaierror", "ProxyConnectionError"}
_NETWORK = _CONNECT | {"ConnectionError", "HTTPClientError", "ClientConnectionError",
                       "ServerDisconnectedError", "ClientPayloadError", "TimeoutError",
                       "FSTimeoutError", "IncompleteRead", "IncompleteReadError",
                       "ResponseStreamingError", "ServerTimeoutError"}
_PERMANENT = {"FileNotFoundError", "IsADirectoryError", "NotADirectoryError", "PermissionError",
              "NoCredentialsError", "PartialCredentialsError", "ParamValidationError",
              "ValueError", "ImportError", "TypeError"}
_TRANSIENT_ERRNOS = {errno.EIO, errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET,
                     errno.ECONNREFUSED, errno.ECONNABORTED, errno.EHOSTUNREACH,
                     errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE,
                     getattr(errno, "EREMOTEIO", errno.EIO)}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
              "InternalError", "ServiceUnavailable", "RequestLimitExceeded"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                    "InvalidToken", "TokenRefreshRequired"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc, then its __cause__ (or else __context__), and so on."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 32:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[0] + (" " + lines[1] if lines[0].endswith(":") and len(lines) > 1 else "")
    return line if len(line) <= 240 else line[:237] + "..."


def _http(exc: BaseException) -> tuple[int | None, str | None]:
    """(HTTP status, error code) of a botocore ClientError or aiohttp ClientResponseError."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response["Error"].get("Code")
        return (status if isinstance(status, int) else None), (str(code) if code else None)
    status = getattr(exc, "status", None)
    if "ClientResponseError" in _names(exc) and isinstance(status, int):
        return status, None
    return None, None


def _endpoint(links: list[BaseException]) -> str | None:
    for exc in links:
        url = (getattr(exc, "kwargs", None) or {}).get("endpoint_url")  # botocore errors
        if isinstance(url, str) and url:
            parts = urlsplit(url)
            return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url
        host, port = getattr(exc, "host", None), getattr(exc, "port", None)  # aiohttp
        if isinstance(host, str) and host:
            return f"{host}:{port}" if port else host
    return None


def _network_reason(links: list[BaseException]) -> str:
    names = set().union(*map(_names, links))
    if "ConnectionRefusedError" in names:
        return "connection refused"
    if names & {"gaierror", "ClientConnectorDNSError"}:
        return "host not found"
    if names & {"TimeoutError", "ConnectTimeoutError", "ReadTimeoutError", "FSTimeoutError",
                "ServerTimeoutError"}:
        return "timed out"
    if names & {"ConnectionResetError", "ServerDisconnectedError", "ConnectionClosedError"}:
        return "connection closed by the server"
    return _first_line(links[-1])


def describe(url: str, exc: BaseException) -> str:
    """One line for an exception raised by fsspec / s3fs / botocore / aiohttp while touching url:
    ``<url>: <reason>`` (missing credentials, unreachable endpoint, not found, access denied,
    server error, or ``<ExceptionType>: <first line of its message>``)."""
    if isinstance(exc, RemoteError):
        return str(exc)
    links = list(_chain(exc))
    names = set().union(*map(_names, links))
    statuses = [_http(e) for e in links]
    codes = {code for _, code in statuses if code}
    status = next((s for s, _ in statuses if s is not None), None)
    if "NoCredentialsError" in names or "Unable to locate credentials" in " ".join(map(str, links)):
        reason = NO_CREDENTIALS
    elif "PartialCredentialsError" in names:
        reason = f"incomplete credentials ({_first_line(exc)})"
    elif codes & _BAD_CREDENTIALS:
        reason = f"credentials rejected ({sorted(codes & _BAD_CREDENTIALS)[0]})"
    elif names & _CONNECT:
        endpoint = _endpoint(links)
        where = f"cannot connect to endpoint {endpoint}" if endpoint else "cannot connect"
        reason = f"{where} ({_network_reason(links)})"
    elif "NoSuchBucket" in codes or "NoSuchBucket" in names:
        reason = "not found (no such bucket)"
    elif "FileNotFoundError" in names or codes & {"NoSuchKey", "404", "NotFound"} or status == 404:
        reason = "not found"
    elif "PermissionError" in names or codes & {"AccessDenied", "403"} or status in (401, 403):
        reason = "access denied" if codes or status else "permission denied"
    elif "IsADirectoryError" in names:
        reason = "is a directory, not a file"
    elif status is not None and status >= 500:
        reason = f"server error (HTTP {status}{', ' + sorted(codes)[0] if codes else ''})"
    elif names & _NETWORK:
        endpoint = _endpoint(links)
        reason = (f"connection to {'endpoint ' + endpoint if endpoint else 'the server'} failed "
                  f"({_network_reason(links)})")
    else:
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
    return f"{url}: {reason}"


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying later (connection refused/reset, timeouts, endpoint
    unreachable, HTTP 5xx/429/throttling, EIO); False for missing files, permission denied,
    bad credentials, bad data and anything unrecognised."""
    links = list(_chain(exc))
    for link in links:  # an HTTP answer decides: s3fs wraps unknown codes in OSError(EIO)
        status, code = _http(link)
        if status is not None or code is not None:
            return (status or 0) >= 500 or status in (408, 429) or code in _THROTTLED
    for link in links:
        names = _names(link)
        if names & _PERMANENT:
            return False
        if names & _NETWORK or getattr(link, "errno", None) in _TRANSIENT_ERRNOS:
            return True
    return False


def _missing_package(url: str, exc: BaseException) -> str:
    for part in url.split("::"):
        protocol = split_protocol(part)[0] or "file"
        try:
            get_filesystem_class(protocol)
        except ImportError as err:
            package = known_implementations.get(protocol, {}).get("class", "").split(".")[0]
            if package not in ("", "fsspec") and importlib.util.find_spec(package) is None:
                need = f"the {package} package (pip install {package})"
            else:
                need = f"a missing package ({_first_line(err)})"
            return f"reading {protocol}:// URLs needs {need}"
        except ValueError:
            return f"unknown URL protocol {protocol}://"
    return f"{type(exc).__name__}: {_first_line(exc)}"


# Timeouts of s3:// reads. A refused endpoint fails in about a second; one that accepts
# connections but never answers costs READ_TIMEOUT x botocore's attempts x s3fs's retries
# (5 x 2 x 2 = 20 s, plus backoff), where the libraries' defaults (15 s x 2 x 5) took 163 s.
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 5
S3FS_RETRIES = 2
TIMEOUTS_HELP = (f"s3:// reads time out after {CONNECT_TIMEOUT} s to connect and "
                 f"{READ_TIMEOUT} s to read, tried at most 4 times (a dead endpoint fails "
                 "within about 30 s); override with --storage-option "
                 "config_kwargs='{\"read_timeout\": 60}' or retries=5.")


def _s3_defaults(options: dict) -> dict:
    """Fail fast on a dead endpoint. botocore's default ('legacy', 5 attempts with random
    exponential backoff) spends 5-12 s on a refused connection (s3fs does not retry that one
    itself); one retry in 'standard' mode (which still backs off on throttling and 5xx) and a
    short connect timeout bring a refused endpoint down to 0.3-1.1 s, and a short read timeout
    a silent one to TIMEOUTS_HELP's bound. A caller's own config_kwargs, or AWS_MAX_ATTEMPTS /
    AWS_RETRY_MODE, win."""
    config = dict(options.get("config_kwargs") or {})
    if "retries" not in config and not {"AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"} & set(os.environ):
        config["retries"] = {"total_max_attempts": 2, "mode": "standard"}
    config.setdefault("connect_timeout", CONNECT_TIMEOUT)
    config.setdefault("read_timeout", READ_TIMEOUT)
    return {**options, "config_kwargs": config}


def url_filesystem(
    url: str, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec.core.url_to_fs with one-line errors: (filesystem, path inside it). A protocol
    whose package is missing or unknown raises RemoteError naming the package to install.
    For s3:// URLs, the option ``retries`` sets s3fs's own retries (a class attribute there,
    not an option) [default: S3FS_RETRIES]."""
    options = dict(storage_options or {})
    s3 = "::" not in url and split_protocol(url)[0] in ("s3", "s3a")
    if s3:
        retries = options.pop("retries", S3FS_RETRIES)
        if not is_int(retries) or retries < 1:
            raise RemoteError(f"{url}: storage option retries must be a positive integer, "
                              f"got {retries!r}", url)
        options = _s3_defaults(options)
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except Exception as exc:
        if isinstance(exc, ImportError) or "Protocol not known" in str(exc):
            raise RemoteError(f"{url}: {_missing_package(url, exc)}", url) from exc
        raise RemoteError(describe(url, exc), url, is_transient(exc)) from exc
    if s3:
        fs.retries = retries  # fsspec caches instances by options: set on every call
    return fs, path


def read_url(url: str, storage_options: dict | None = None) -> bytes:
    """The whole object/file at url (local path or any fsspec URL), or RemoteError with one
    line."""
    fs, path = url_filesystem(url, storage_options)
    try:
        return fs.cat_file(path)
    except Exception as exc:
        message = describe(url, exc)
        if url.endswith("/") or any("ParamValidationError" in _names(e) for e in _chain(exc)):
            try:  # botocore's answer to reading a bucket (an empty key); s3fs strips a prefix/
                if fs.isdir(path):
                    message = f"{url}: is a directory, not a file"
            except Exception:
                pass  # the first error is the one to report
        raise RemoteError(message, url, is_transient(exc)) from exc


def parse_storage_options(pairs: Sequence[str], endpoint_url: str | None = None) -> dict:
    """CLI helper: ['anon=true', 'key=abc'] -> {'anon': True, 'key': 'abc'}. Values are parsed
    as JSON when they parse (true/false/numbers/null/objects; quote '"123"' to keep a string),
    else kept as strings. endpoint_url (if given) is merged in as
    {'client_kwargs': {'endpoint_url': ...}}, which is how s3fs takes it."""
    options: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--storage-option expects KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    if endpoint_url:
        client = options.get("client_kwargs") or {}
        if not isinstance(client, dict):
            raise ValueError(f"--storage-option client_kwargs must be a JSON object: {client!r}")
        options["client_kwargs"] = {**client, "endpoint_url": endpoint_url}
    return options
