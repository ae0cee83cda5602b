"""Network for python-tuf's ngclient, and for resumable target downloads: httpx2 with the device's TLS
context (fleet CA, device certificate). Only update code imports this module (it pulls in tuf)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from urllib.parse import urljoin, urlsplit

import httpx2
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from fleetkeeper_agent import __version__

TIMEOUT_SECONDS = 30.0
# A presigned-URL redirect is one hop; a chain of them is a misconfiguration or a trap.
MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}


class MtlsFetcher(FetcherInterface):
    """Fetches metadata and targets from the device listener over mTLS.

    The listener answers a target with a 307 to a presigned object-store URL when it uses S3: that
    host is not the fleet's, so it is fetched with `redirect_tls` (the system's CAs by default) and
    without the device certificate. Nothing fetched is trusted for being fetched over TLS: metadata
    is verified by ngclient, targets by their signed length and hashes.
    """

    def __init__(
        self,
        tls: ssl.SSLContext,
        *,
        redirect_tls: ssl.SSLContext | None = None,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self._tls = tls
        self._redirect_tls = redirect_tls
        self._timeout = timeout
        self._client = self._new_client(tls)
        self._redirect_client: httpx2.Client | None = None

    def _new_client(self, context: ssl.SSLContext) -> httpx2.Client:
        return httpx2.Client(
            verify=context,
            timeout=self._timeout,
            # Redirects are followed by hand: the next hop gets a client with other trust (above).
            follow_redirects=False,
            # A device talks to its server directly; a proxy from the environment would be a surprise.
            trust_env=False,
            headers={"User-Agent": f"fleetkeeper-agent/{__version__}"},
        )

    def __enter__(self) -> MtlsFetcher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()
        if self._redirect_client is not None:
            self._redirect_client.close()

    # --- FetcherInterface ---------------------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        # A generator: the request starts at the first chunk ngclient asks for, and the response is
        # closed when ngclient stops (all read, too long, or an error).
        with self._opened(url) as response:
            if response.status_code != 200:
                raise exceptions.DownloadHTTPError(
                    f"{url}: HTTP {response.status_code}", response.status_code
                )
            yield from _chunks(response)

    # --- ranged fetches for resumable downloads -------------------------------------------------------

    @contextmanager
    def open(self, url: str, offset: int = 0) -> Iterator[httpx2.Response]:
        """A streaming GET of `url` from byte `offset` (a Range request when > 0), redirects followed.
        The caller reads the status (200 whole, 206 partial, 416 nothing left) and the body through
        `chunks()`. Raises DownloadError for a failed connection."""
        with self._opened(url, offset) as response:
            yield response

    @staticmethod
    def chunks(response: httpx2.Response) -> Iterator[bytes]:
        """The body in chunks; a broken connection raises DownloadError (SlowRetrievalError on timeout)."""
        return _chunks(response)

    @contextmanager
    def _opened(self, url: str, offset: int = 0) -> Iterator[httpx2.Response]:
        client = self._client
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        for _ in range(MAX_REDIRECTS + 1):
            response = _send(client, url, headers)
            if response.status_code not in _REDIRECTS:
                try:
                    yield response
                finally:
                    response.close()
                return
            location = response.headers.get("location")
            response.close()
            if not location:
                raise exceptions.DownloadHTTPError(
                    f"{url}: redirect without a location", response.status_code
                )
            next_url = urljoin(url, location)
            if _origin(next_url) != _origin(url):
                client = self._other_host_client()
            url = next_url
        raise exceptions.DownloadError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _other_host_client(self) -> httpx2.Client:
        if self._redirect_client is None:
            self._redirect_client = self._new_client(self._redirect_tls or ssl.create_default_context())
        return self._redirect_client


def _send(client: httpx2.Client, url: str, headers: dict[str, str]) -> httpx2.Response:
    try:
        return client.send(client.build_request("GET", url, headers=headers), stream=True)
    except httpx2.TimeoutException as exc:
        raise exceptions.SlowRetrievalError(f"{url}: no answer in time") from exc
    except httpx2.HTTPError as exc:
        raise exceptions.DownloadError(f"{url}: {_reason(exc)}") from exc


def _chunks(response: httpx2.Response) -> Iterator[bytes]:
    try:
        # As the network delivers them (no re-chunking): whatever arrived before a break gets written,
        # so a resumed download starts exactly where the bytes stopped.
        yield from response.iter_bytes()
    except httpx2.TimeoutException as exc:
        raise exceptions.SlowRetrievalError(f"{response.url}: the transfer stalled") from exc
    except httpx2.HTTPError as exc:
        raise exceptions.DownloadError(f"{response.url}: the transfer broke: {_reason(exc)}") from exc


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _reason(exc: BaseException) -> str:
    # A TLS failure sits a few levels down (httpx2 → httpcore → ssl); its own message says the most.
    cause: BaseException | None = exc
    for _ in range(10):
        cause = (cause.__cause__ or cause.__context__) if cause is not None else None
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return str(cause)
    return str(exc) or type(exc).__name__
