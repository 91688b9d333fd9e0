"""The process-wide Earth Engine client: initialisation and what to retry.

* The request budget (how many requests a process may have in flight, and start per
  second) is :mod:`~pipelines.sources.earthengine.budget`'s; the credentials each process
  makes for itself are :mod:`~pipelines.sources.earthengine.credentials`'.
* The client's own retries are switched off (``ee.data.setMaxRetries(0)`` in
  :func:`initialize`), because googleapiclient would otherwise retry 429/5xx with its own
  fixed, unconfigurable backoff. Instead the source retries what :func:`is_retryable`
  accepts: HTTP 429 and 5xx answers (which ``ee`` surfaces as ``EEException`` chained to a
  ``googleapiclient.errors.HttpError``), connection errors and timeouts.

The ``ee`` client keeps its configuration in process-wide state, so one process talks to
one Earth Engine endpoint and project at a time.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httplib2
import requests

from pipelines.errors import SourceError
from pipelines.sources.earthengine.config import EEConfig

logger = logging.getLogger(__name__)

__all__ = ["client_is_for", "http_status", "initialize", "is_overload", "is_retryable"]

_RETRYABLE_MESSAGE = re.compile(
    r"too many|rate limit|quota exceeded|resource.?exhausted|service unavailable|"
    r"currently unavailable|internal error|backend error|deadline exceeded",
    re.IGNORECASE,
)
_OVERLOAD_MESSAGE = re.compile(r"too many|rate limit|quota exceeded|resource.?exhausted",
                               re.IGNORECASE)


class _Transport:
    """An httplib2-style transport on a ``requests`` session with connect/read timeouts.

    ``ee.Initialize(http_transport=...)`` accepts it in place of the client's default one
    (which has no connect timeout). Connection failures become the built-in
    ``ConnectionError`` / ``TimeoutError`` so the retry logic recognises them.
    """

    def __init__(self, connect_timeout: float, read_timeout: float, pool_size: int) -> None:
        self._timeout = (connect_timeout or None, read_timeout or None)
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=2,
                                                pool_maxsize=max(10, pool_size))
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def request(self, uri: str, method: str = "GET", body: Any = None,
                headers: dict[str, str] | None = None, redirections: int | None = None,
                connection_type: Any = None) -> tuple[httplib2.Response, bytes]:
        try:
            resp = self._session.request(method, uri, data=body, headers=headers,
                                         timeout=self._timeout)
        except requests.exceptions.ConnectionError as exc:  # includes ConnectTimeout
            raise ConnectionError(f"cannot connect to {uri.split('?')[0]}: {exc}") from exc
        except requests.exceptions.Timeout as exc:
            raise TimeoutError(f"no answer from {uri.split('?')[0]}: {exc}") from exc
        out = dict(resp.headers)
        out["status"] = str(resp.status_code)
        return httplib2.Response(out), resp.content

    def close(self) -> None:
        self._session.close()


_EE_LOCK = threading.Lock()
# What the process-wide ``ee`` client is initialised for, and the transport it uses.
_EE_CLIENT: dict[str, Any] = {"key": None, "transport": None}


def _client_key(config: EEConfig, credentials_factory: Callable[[], Any] | None) -> tuple:
    return (config.url, config.project, repr(credentials_factory), config.connect_timeout_s,
            config.read_timeout_s)


def client_is_for(config: EEConfig, credentials_factory: Callable[[], Any] | None) -> bool:
    """True when the process-wide client was last initialised for ``config`` and credentials."""
    return _EE_CLIENT["key"] == _client_key(config, credentials_factory)


def initialize(config: EEConfig, credentials_factory: Callable[[], Any] | None = None,
               pool_size: int = 10) -> None:
    """Initialise the process-wide ``ee`` client for ``config`` (a no-op when it already is).

    Args:
        config: Gives the endpoint, project and timeouts.
        credentials_factory: Returns the credentials to use, called here (in the process
            that reads); None uses the Earth Engine stored credentials or application
            default credentials.
        pool_size: Connections kept open (the requests this process may have in flight).

    Raises:
        SourceError: the endpoint is unreachable or refuses the credentials, or no
            credentials / project are available.
    """
    import ee

    key = _client_key(config, credentials_factory)
    with _EE_LOCK:
        if _EE_CLIENT["key"] == key and ee.data.is_initialized():
            return
        started = time.monotonic()
        transport = _Transport(config.connect_timeout_s, config.read_timeout_s, pool_size)
        # Retries are ours (see the module docstring): one attempt per client call.
        ee.data.setMaxRetries(0)
        try:
            credentials = credentials_factory() if credentials_factory else "persistent"
            ee.Initialize(credentials=credentials, url=config.url, project=config.project,
                          http_transport=transport)
        except Exception as exc:  # ee raises EEException, OSError, HttpError, auth errors
            transport.close()
            _EE_CLIENT["key"] = None
            hint = ("Check the endpoint URL and the network." if isinstance(exc, OSError)
                    else "Run `earthengine authenticate` (or provide application default "
                         "credentials) and set EEConfig.project to a Cloud project "
                         "registered for Earth Engine.")
            raise SourceError(
                f"Cannot initialise Earth Engine at {config.url} (project "
                f"{config.project!r}): {type(exc).__name__}: {exc}. {hint}"
            ) from exc
        old = _EE_CLIENT["transport"]
        _EE_CLIENT.update(key=key, transport=transport)
        if old is not None:
            old.close()
        logger.info("Earth Engine client initialised at %s (project %s) in %.2f s",
                    config.url, config.project, time.monotonic() - started)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an error: ``ee`` chains its EEException to an HttpError."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        resp = getattr(cur, "resp", None)
        status = getattr(resp, "status", None)
        if status is not None:
            return int(status)
        cur = cur.__cause__ or cur.__context__
    return None


def is_overload(exc: BaseException) -> bool:
    """True for a quota refusal: HTTP 429 or a RESOURCE_EXHAUSTED / rate-limit message."""
    status = http_status(exc)
    if status is not None:
        return status == 429
    return bool(_OVERLOAD_MESSAGE.search(str(exc)))


def is_retryable(exc: BaseException) -> bool:
    """True for HTTP 429 and 5xx answers, connection failures and timeouts."""
    status = http_status(exc)
    if status is not None:
        return status == 429 or status >= 500
    if isinstance(exc, ConnectionError | TimeoutError | requests.exceptions.RequestException):
        return True
    return bool(_RETRYABLE_MESSAGE.search(str(exc)))
