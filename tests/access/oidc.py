"""A real OpenID Provider for tests: runs tests/oidc_provider/provider.mjs and signs in through its pages."""

from __future__ import annotations

import json
import secrets
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from urllib.parse import urljoin, urlsplit

import httpx2

from tests.conftest import read_line

PROVIDER_DIR = Path(__file__).resolve().parents[1] / "oidc_provider"


@dataclass(frozen=True)
class OidcAccount:
    """A user the provider knows; `sub` defaults to the username (as provider.mjs does)."""

    username: str
    password: str
    email: str
    groups: list[str] = field(default_factory=list)
    name: str | None = None

    @property
    def sub(self) -> str:
        return self.username


ALICE = OidcAccount("alice", "alice-password", "alice@example.test", ["fleet-admins"], "Alice Admin")
BOB = OidcAccount("bob", "bob-password", "bob@example.test", ["fleet-readers"], "Bob Reader")
DEFAULT_ACCOUNTS = (ALICE, BOB)


class OidcProvider:
    """One `node provider.mjs` process on a free loopback port; a context manager, or start()/stop()."""

    def __init__(
        self,
        redirect_uri: str,
        accounts: tuple[OidcAccount, ...] | list[OidcAccount] = DEFAULT_ACCOUNTS,
        *,
        client_id: str = "fleetkeeper",
        client_secret: str | None = None,
        token_endpoint_auth_method: str = "client_secret_basic",  # noqa: S107 (a method name, not a secret)
    ) -> None:
        self.redirect_uri = redirect_uri
        self.accounts = list(accounts)
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(32)
        self.token_endpoint_auth_method = token_endpoint_auth_method
        self.issuer = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def log(self) -> str:
        """The provider's stderr so far, for failure messages."""
        if self._workdir is None:
            return ""
        return (Path(self._workdir.name) / "provider.log").read_text(errors="replace")

    def start(self, timeout: float = 30) -> OidcProvider:
        if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError(f"run `npm install --no-package-lock` in {PROVIDER_DIR} (make test does)")
        self._workdir = tempfile.TemporaryDirectory(prefix="oidc-provider-")
        workdir = Path(self._workdir.name)
        config = {
            "host": "127.0.0.1",
            "port": 0,
            "exit_on_stdin_close": True,
            "client": {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "redirect_uris": [self.redirect_uri],
                "token_endpoint_auth_method": self.token_endpoint_auth_method,
            },
            "accounts": [asdict(account) | {"sub": account.sub} for account in self.accounts],
        }
        (workdir / "config.json").write_text(json.dumps(config))
        with (workdir / "provider.log").open("wb") as log:
            # node picks the port (port 0) and reports it, so there is no window for another process
            # to take a port chosen here; stdin stays open only so node exits if the suite dies.
            self._process = subprocess.Popen(
                ["node", "provider.mjs", str(workdir / "config.json")],
                cwd=PROVIDER_DIR,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        assert self._process is not None
        line = read_line(self._process, timeout)
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"oidc provider did not start: {line!r}\n{self.log[-3000:]}")
        self.issuer = line.removeprefix("READY ").strip()
        return self

    def stop(self, timeout: float = 10) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def account(self, username: str) -> OidcAccount:
        return next(account for account in self.accounts if account.username == username)


# --- driving the provider's pages like a browser would ---------------------------------------------


class LoginRejectedError(Exception):
    """The provider showed its sign-in form again: the username or password was not accepted."""


class OidcFlowError(Exception):
    """The provider answered with something other than its pages or a redirect to the client."""


@dataclass
class _Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    password_field: str | None = None
    text_field: str | None = None


class _PageParser(HTMLParser):
    """Collects the forms on a page and the text of its role="alert" element, the way a person sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.alert = ""
        self._in_form = False
        self._in_alert = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "form":
            method = attributes.get("method", "get").lower()
            self.forms.append(_Form(attributes.get("action", ""), method))
            self._in_form = True
        elif tag == "input" and self._in_form and attributes.get("name"):
            form, name = self.forms[-1], attributes["name"]
            kind = attributes.get("type", "text").lower()
            form.fields[name] = attributes.get("value", "")
            if kind == "password":
                form.password_field = name
            elif kind in {"text", "email"} and form.text_field is None:
                form.text_field = name
        elif attributes.get("role") == "alert":
            self._in_alert = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif self._in_alert and tag in {"p", "div", "span"}:
            self._in_alert = False

    def handle_data(self, data: str) -> None:
        if self._in_alert:
            self.alert += data


def _same_origin(url: str, other: str) -> bool:
    first, second = urlsplit(url), urlsplit(other)
    return (first.scheme, first.netloc) == (second.scheme, second.netloc)


async def complete_login(authorize_url: str, username: str, password: str, *, max_steps: int = 12) -> str:
    """Signs in at the provider and gives consent, returning the redirect to the client it ends with.

    Follows the provider's own redirects, fills its sign-in form with `username` and `password`
    and submits every other form as it stands (consent). The first redirect that leaves the
    provider's origin (the client's redirect_uri, with `code` and `state`, or `error`) is returned
    without being requested. Raises LoginRejectedError when the credentials are refused.
    """
    async with httpx2.AsyncClient(follow_redirects=False, timeout=10) as client:
        response = await client.get(authorize_url)
        submitted_login = False
        for _ in range(max_steps):
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                if not _same_origin(target, authorize_url):
                    return target
                response = await client.get(target)
                continue
            if response.status_code != 200 or "html" not in response.headers.get("content-type", ""):
                raise OidcFlowError(f"{response.status_code} from {response.url}: {response.text[:500]}")
            parser = _PageParser()
            parser.feed(response.text)
            if not parser.forms:
                raise OidcFlowError(f"no form on {response.url}: {response.text[:500]}")
            form = parser.forms[0]
            data = dict(form.fields)
            if form.password_field is not None:
                if submitted_login:
                    raise LoginRejectedError(
                        f"{username!r} was not signed in: {parser.alert.strip() or 'no reason'}"
                    )
                if form.text_field is None:
                    raise OidcFlowError(f"sign-in form on {response.url} has no username field")
                data[form.text_field] = username
                data[form.password_field] = password
                submitted_login = True
            action = urljoin(str(response.url), form.action or str(response.url))
            if form.method == "post":
                response = await client.post(action, data=data)
            else:
                response = await client.get(action, params=data)
    raise OidcFlowError(f"no redirect to the client after {max_steps} steps")
