"""Where a study lives, as people and records see it: the URI without its password.

A study is told where its stores are by URIs (`--storage`, `--tracking-uri`, `tracking.uri`,
`tracking.storage`), and a URI may carry a password: ``postgresql://lorsp:PASSWORD@db:5432/optuna``,
``http://user:PASSWORD@mlflow:5000``. The secret belongs to the command line (or to the password-free
ways of giving it: ``PGPASSWORD`` or a ``~/.pgpass`` file for PostgreSQL, ``MLFLOW_TRACKING_USERNAME``
/ ``MLFLOW_TRACKING_PASSWORD`` for an MLflow server) and to the process that connects with it.
Everything lorsp prints or records (console lines, MLflow params, tags and artifacts, the Optuna
study's attributes, checkpoints, the Ray experiment folder, exports) gets :func:`redact` of it: the
same URI with the password replaced by ``***``.

A URI read back from a record therefore cannot connect: :func:`require_secret` refuses one whose
password is ``***`` in one line that says what to pass instead, rather than letting the database
answer "password authentication failed".

Standard library only (SQLAlchemy, when installed, renders database URIs), so that :mod:`lorsp.config`
can import it.
"""

from __future__ import annotations

import re
import urllib.parse

from lorsp.errors import ConfigError

MASK = "***"
"""What a hidden secret reads as (SQLAlchemy's own `hide_password` rendering)."""

SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token",
                     "api_key", "apikey")
"""Query parameters whose value is a secret (`...?password=...` reaches the database driver as such)."""
_SECRET_QUERY = re.compile(r"(?i)(?<=[?&;])(" + "|".join(SECRET_QUERY_KEYS) + r")=([^&;#]*)")
_WEB_SCHEMES = ("http", "https")

_KNOWN: dict[str, str] = {}
"""Redacted URI -> the URI it stands for, of the URIs this process was given (see :func:`remember`)."""


# ---------------------------------------------------------------- rendering
def redact(uri: str | None) -> str | None:
    """`uri` with its password (and any secret query parameter) replaced by ``***``; unchanged when
    it has none. Database URIs are rendered by SQLAlchemy (``make_url(uri).render_as_string(
    hide_password=True)``), web addresses and anything SQLAlchemy does not parse by urllib."""
    if not uri or "://" not in uri:
        return uri
    out = _hide_userinfo(uri)
    out = _SECRET_QUERY.sub(lambda m: f"{m.group(1)}={MASK}" if m.group(2) else m.group(0), out)
    return out


def _hide_userinfo(uri: str) -> str:
    if not _passwords(uri):
        return uri
    loose = _loose_userinfo(uri)
    if loose is not None and urllib.parse.unquote(loose[1]) != _parsed_password(uri):
        # The parsers cut the password short (an unescaped '@' or '/' in it): hide everything
        # between the user name and the last '@' of the address instead.
        return _blunt_render(uri)
    rendered = None
    if uri.split("://", 1)[0].lower() not in _WEB_SCHEMES:
        rendered = _sqlalchemy_render(uri)
    return rendered if rendered is not None else _urllib_render(uri)


def _parsed_password(uri: str) -> str | None:
    """The password as the library that connects reads it: SQLAlchemy for a database, else urllib."""
    if uri.split("://", 1)[0].lower() not in _WEB_SCHEMES:
        try:
            from sqlalchemy.engine import make_url

            password = make_url(uri).password
            return None if password is None else str(password)
        except Exception:
            pass
    try:
        return urllib.parse.urlsplit(uri).password
    except ValueError:
        return None


def _sqlalchemy_render(uri: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url
    except ImportError:
        return None
    try:
        url = make_url(uri)
    except Exception:  # not a database URI SQLAlchemy knows: urllib's reading will do
        return None
    if url.password is None:
        return None
    return url.render_as_string(hide_password=True)


def _urllib_render(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{hostport}"))


def _loose_userinfo(uri: str) -> tuple[str, str] | None:
    """(user, password) read up to the last '@' before the query, for a password with an unescaped
    '@' or '/' that urllib and SQLAlchemy cut short; None when that part is no `user:password`
    (a user name never holds a '/': `sqlite:////tmp/a:b@c.db` is a path)."""
    head = uri.split("://", 1)[1].split("?", 1)[0]
    userinfo, at, _ = head.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon or "/" in user:
        return None
    return user, password


def _blunt_render(uri: str) -> str:
    loose = _loose_userinfo(uri)
    if loose is None:
        return uri
    scheme, rest = uri.split("://", 1)
    user, password = loose
    return f"{scheme}://{user}:{MASK}@{rest[len(user) + 1 + len(password) + 1:]}"


def _passwords(uri: str) -> list[str]:
    """Every reading of the password in `uri` (as written and decoded; urllib's and SQLAlchemy's)."""
    out: list[str] = []
    try:
        parts = urllib.parse.urlsplit(uri)
        userinfo, at, _ = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            raw = userinfo.split(":", 1)[1]
            out += [raw, urllib.parse.unquote(raw)]
    except ValueError:
        pass
    loose = _loose_userinfo(uri)
    if loose is not None:
        out += [loose[1], urllib.parse.unquote(loose[1])]
    try:
        from sqlalchemy.engine import make_url

        password = make_url(uri).password
        if password:
            out.append(str(password))
    except Exception:
        pass
    return [s for s in dict.fromkeys(out) if s]


def secrets_of(uri: str | None) -> list[str]:
    """The secrets `uri` carries (its password, as written and decoded, and secret query values)."""
    if not uri or "://" not in uri:
        return []
    found = [s for s in _passwords(uri) if s != MASK]
    for match in _SECRET_QUERY.finditer(uri):
        value = match.group(2)
        if value and value != MASK:
            found += [value, urllib.parse.unquote_plus(value)]
    return list(dict.fromkeys(found))


def scrub(text: str, *uris: str | None) -> str:
    """`text` (an error message, a log line) with each of `uris` redacted and their secrets masked
    wherever else they appear (a driver's message may quote the URI in its own form)."""
    for uri in uris:
        if not uri:
            continue
        text = text.replace(uri, redact(uri) or "")
        for secret in sorted(secrets_of(uri), key=len, reverse=True):
            if len(secret) >= 4:  # a shorter one would mask ordinary letters of the message
                text = text.replace(secret, MASK)
    return text


def _split_arg(arg: str) -> tuple[str, str]:
    """(prefix, URI) of a command-line argument: a bare URI (`--storage URI`) has no prefix, the value
    of a `KEY=URI` (`--storage=URI`, `--set tracking.uri=URI`) has `KEY=`."""
    key, eq, value = arg.partition("=")
    if eq and "://" not in key and "://" in value:
        return f"{key}=", value
    return "", arg


def redact_arg(arg: str) -> str:
    """One command-line argument with any URI in it redacted (see :func:`_split_arg`)."""
    if "://" not in arg:
        return arg
    prefix, uri = _split_arg(arg)
    return prefix + (redact(uri) or uri)


def browser_url(url: str) -> str:
    """A web address to open in a browser: without any user name or password (the browser asks)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# ---------------------------------------------------------------- hidden secrets
def is_masked(uri: str | None) -> bool:
    """Whether `uri` is a redacted one: its password (or a secret query value) reads ``***``."""
    if not uri or "://" not in uri:
        return False
    if MASK in _passwords(uri):
        return True
    return any(m.group(2) in (MASK, urllib.parse.quote(MASK, safe="")) for m in _SECRET_QUERY.finditer(uri))


def password_free_ways(uri: str | None) -> str:
    """How to give the secret of `uri` without writing it into the URI."""
    if uri and uri.split("://", 1)[0].lower() in _WEB_SCHEMES:
        return "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (an MLflow server)"
    return "PGPASSWORD or a ~/.pgpass file"


def require_secret(uri: str | None, flag: str) -> None:
    """Refuse to connect with a URI whose password lorsp hid when it recorded it.

    `flag`: the option that gives this URI on the command line (`--storage`, `--tracking-uri`).
    """
    if is_masked(uri):
        raise ConfigError(
            f"{redact(uri)}: its password is hidden ({MASK}), as lorsp records and prints every URI, so it cannot "
            f"connect; pass {flag} with the real password, or {flag} without a password and the password in "
            f"{password_free_ways(uri)}"
        )


def hint(*uris: str | None) -> str:
    """The note that goes with a command printed with its secrets masked; '' when nothing was masked.

    `uris`: the URIs (or `KEY=URI` arguments) the command was given."""
    masked = [u for u in (_split_arg(a)[1] for a in uris if a) if redact(u) != u]
    if not masked:
        return ""
    ways = "; ".join(dict.fromkeys(password_free_ways(u) for u in masked))
    return (f"the password is shown as {MASK}: type it in, or leave it out of the URI and give it in {ways}; "
            "see the README's cluster section")


def with_hint(command: str, *uris: str | None) -> str:
    """`command` followed by :func:`hint` as a shell comment, so the line can still be pasted as is."""
    note = hint(*uris)
    return f"{command}  # {note}" if note else command


# ---------------------------------------------------------------- pickles
def remember(uri: str) -> str:
    """The redacted form of `uri`, which this process can turn back into `uri` (:func:`reveal`).

    For objects that hold a URI to connect with and that Ray Tune pickles into its experiment
    folder (the searcher's Optuna storage, the MLflow callback): their pickles carry the redacted
    URI, and a copy made in this process (Tune copies its configuration) still connects.
    """
    shown = redact(uri) or uri
    if shown != uri:
        _KNOWN[shown] = uri
    return shown


def reveal(uri: str) -> str:
    """The URI that :func:`remember` redacted into `uri`, when this process knows it; else `uri`."""
    return _KNOWN.get(uri, uri)
