"""The one validation module: every value from outside is checked here where it enters a task.

Refs, commit ids, repository locations, environment / project / service names, router routes,
environment-variable names and repository paths. A value is returned (normalised where said) or
InputError is raised naming the argument (`--ref: … is not a valid git ref: …`). Nothing here
imports Prefect or runs a command.

Decisions:
    * A ref is an ASCII subset of what git accepts: letters, digits and ``. _ / - + @ # , =``; no
      part of it (nor its short form, `refs/heads/X` → `X`) starts with `-`, so git cannot read it as
      an option even where `--end-of-options` is not understood.
    * A repository URL carries no secret: `https://`, `http://`, `git://`, `file://` URLs with a user
      part (`https://token@host`, `https://user:token@host`) are refused, and so are query strings.
      An ssh user name (`git@github.com:acme/app.git`, `ssh://git@host/app.git`: a lower-case POSIX
      login of at most 32 characters, which a token is not) is not a secret and is allowed; an ssh
      password is not. Remote-helper transports (`ext::`, `fd::`, any `X::`) and
      anything starting with `-` are refused. A message never quotes a user part: it is redacted.
    * A path stays inside its root at every step: each directory on the way and the file itself are
      resolved (symlinks followed) and must be inside the root.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from sunday_release.errors import InputError

__all__ = [
    "ENV_KEY_PATTERN",
    "NAME_PATTERN",
    "ROUTE_PATTERN",
    "ROUTE_RULE",
    "database_name",
    "env_key",
    "inside",
    "is_env_key",
    "is_route",
    "is_sha",
    "name",
    "redact_url",
    "ref",
    "repo",
    "route",
    "sha",
    "short_ref",
]

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
ROUTE_PATTERN = r"^/(?:[A-Za-z0-9._~-]+/)*[A-Za-z0-9._~-]*$"
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

_NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
_ROUTE = re.compile(r"/(?:[A-Za-z0-9._~-]+/)*[A-Za-z0-9._~-]*")
_DATABASE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SHA = re.compile(r"[0-9a-f]{7,40}|[0-9a-f]{64}")
_REF_CHARS = re.compile(r"[A-Za-z0-9._/+@#,=-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCHEME = re.compile(r"([A-Za-z0-9+.-]+)://")
_TRANSPORT = re.compile(r"[A-Za-z0-9+.-]*::")  # git's `<transport>::<address>` (remote helpers)
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\]")
_URL_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")  # a name, or IPv6
_SSH_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")  # a POSIX login (`git`): not a token
_CREDENTIALS = ("a URL with a user name or password is refused (it would end up in logs, flow parameters and "
                "image labels): use a git credential helper, or a Prefect Secret / GitHub token block")
_MAX_REF, _MAX_URL, _MAX_ROUTE, _SHOWN = 255, 2048, 256, 120


def _shown(value: object) -> str:
    """`value` quoted for a message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _refuse(arg: str, message: str) -> InputError:
    return InputError(f"{arg}: {message}" if arg else message)


# --- refs and commits ----------------------------------------------------------------------------


def is_sha(value: str) -> bool:
    """True for a (possibly abbreviated) lower-case hex commit id (SHA-1, or a full SHA-256)."""
    return isinstance(value, str) and _SHA.fullmatch(value) is not None


def short_ref(value: str) -> str:
    """`refs/heads/main` → `main`, `refs/tags/v1.2.3` → `v1.2.3`, anything else unchanged."""
    for prefix in ("refs/heads/", "refs/tags/"):
        if value.startswith(prefix):
            return value[len(prefix):]
    return value


def _ref_problem(value: str) -> str | None:
    """Why `value` is not an acceptable ref, or None."""
    if not value:
        return "it is empty"
    if len(value) > _MAX_REF:
        return f"it is longer than {_MAX_REF} characters"
    parts = value.split("/")
    if any(p.startswith("-") for p in parts) or short_ref(value).startswith("-"):
        return "it (or a part of it) starts with '-' and git would read it as an option"
    if not _REF_CHARS.fullmatch(value):
        return "only letters, digits and . _ / - + @ # , = are allowed"
    if value.startswith("/") or value.endswith("/") or "" in parts:
        return "it starts or ends with '/', or has '//'"
    if value.startswith("+"):
        return "it starts with '+'"
    if any(p.startswith(".") or p.endswith(".lock") for p in parts):
        return "a part of it starts with '.' or ends with '.lock'"
    if ".." in value or value.endswith(".") or value == "@" or "@{" in value:
        return "it has '..', ends with '.', or is '@'"
    return None


def ref(value: str, arg: str = "--ref") -> str:
    """Return `value` if it is a branch, tag, full ref (`refs/heads/main`) or commit SHA; else InputError.

    Both the ref and its short form are checked: `refs/heads/--upload-pack=…` is refused.
    """
    if not isinstance(value, str):
        raise _refuse(arg, f"{_shown(value)} is not a valid git ref (expected a branch, tag or commit SHA)")
    problem = _ref_problem(value)
    if problem is not None:
        raise _refuse(arg, f"{_shown(value)} is not a valid git ref (expected a branch, tag or commit SHA): {problem}")
    return value


def sha(value: str, arg: str = "--sha") -> str:
    """Return `value` if it is a commit id (7 to 40 lower-case hex digits, or 64); else InputError."""
    if not is_sha(value):
        raise _refuse(arg, f"{_shown(value)} is not a commit SHA (expected 7 to 40 lower-case hex digits)")
    return value


# --- repositories --------------------------------------------------------------------------------


def redact_url(value: str) -> str:
    """`value` with every user part (`user:token@`) and any query string replaced by `***`: safe to print."""
    text = str(value)
    scheme = _SCHEME.match(text)
    head = scheme.group(0) if scheme else ""
    rest = re.sub(r"[^/@]*@", "***@", text[len(head):])
    for mark in ("?", "#"):
        if mark in rest:
            rest = rest.split(mark, 1)[0] + mark + "***"
    return head + rest


def _url(value: str, arg: str) -> str:
    """A `scheme://` URL: allowed scheme, a host, no secret."""
    scheme = _SCHEME.match(value)
    assert scheme is not None
    if scheme.group(1).lower() not in _SCHEMES:
        raise _refuse(arg, f"{_shown(redact_url(value))} uses a transport that is not allowed "
                           f"(expected one of {', '.join(s + '://' for s in _SCHEMES)})")
    netloc = value[scheme.end():].partition("/")[0]
    userinfo = netloc.rpartition("@")[0] if "@" in netloc else None
    ssh_user = scheme.group(1).lower() == "ssh" and userinfo is not None and _SSH_USER.fullmatch(userinfo)
    if (userinfo is not None and not ssh_user) or value.count("@") > (1 if ssh_user else 0):
        raise _refuse(arg, f"{_CREDENTIALS} (got {_shown(redact_url(value))})")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise _refuse(arg, f"{_shown(redact_url(value))} is not a valid URL") from None
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise _refuse(arg, f"a URL with a query string or fragment is refused (it may carry a token; got "
                           f"{_shown(redact_url(value))})")
    if scheme.group(1).lower() != "file" and not _URL_HOST.fullmatch(parts.hostname or ""):
        raise _refuse(arg, f"{_shown(redact_url(value))} has no valid host name")
    if not parts.path or parts.path == "/":
        raise _refuse(arg, f"{_shown(redact_url(value))} names no repository")
    return value


def _scp(value: str, arg: str) -> str:
    """git's ssh shorthand `[user@]host:path`: an ssh user name is allowed, a password is not."""
    head, _, path = value.partition(":")
    user, at, host = head.rpartition("@")
    if (at and not _SSH_USER.fullmatch(user)) or value.count("@") > (1 if at else 0):  # `user:password@host:path`
        raise _refuse(arg, f"{_CREDENTIALS} (got {_shown(redact_url(value))})")
    if not _HOST.fullmatch(host) or host.startswith("-"):
        raise _refuse(arg, f"{_shown(redact_url(value))} has no valid host name")
    if not path or path.startswith(("-", ":")) or "?" in path:
        raise _refuse(arg, f"{_shown(redact_url(value))} names no valid repository path")
    return value


def repo(value: str, arg: str = "--repo") -> str:
    """Return a usable repository location: a git URL, or the resolved path of a local git repository.

    Refused (InputError): a URL with a user part or password (ssh user names excepted), a query
    string, a transport other than https, http, ssh, git and file (`ext::…`), anything that starts
    with `-`, control characters or whitespace, a path that is not a git repository.
    """
    if not isinstance(value, str) or not value:
        raise _refuse(arg, f"{_shown(redact_url(str(value)))} is neither an existing directory nor a git URL")
    if len(value) > _MAX_URL or _CONTROL.search(value) or any(c.isspace() for c in value):
        raise _refuse(arg, f"{_shown(redact_url(value))} has whitespace or control characters, or is too long")
    if value.startswith("-"):
        raise _refuse(arg, f"{_shown(redact_url(value))} starts with '-' (git would read it as an option)")
    if _SCHEME.match(value):
        return _url(value, arg)
    if _TRANSPORT.match(value):
        raise _refuse(arg, f"{_shown(redact_url(value))}: remote-helper transports (`ext::`, `fd::`, …) are "
                           f"refused (expected a local repository or a {', '.join(_SCHEMES)} URL)")
    head = value.partition("/")[0]
    if ":" in head:  # git reads `host:path` (no '/' before the first ':') as ssh
        return _scp(value, arg)
    try:
        path = Path(value).expanduser()
        found, is_repo = path.exists(), (path / ".git").exists() or (path / "HEAD").is_file()
    except (OSError, RuntimeError):  # `~nobody`, a name too long
        found = is_repo = False
    if not found:
        raise _refuse(arg, f"{_shown(redact_url(value))} is neither an existing directory nor a git URL")
    if not is_repo:
        raise _refuse(arg, f"{_shown(redact_url(value))} is not a git repository (no .git)")
    return str(path.resolve())


# --- names, routes, keys ---------------------------------------------------------------------------


def name(value: str, arg: str = "--env") -> str:
    """Return `value` if it is an environment, project or service name (`^[a-z][a-z0-9-]{0,39}$`)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _refuse(arg, f"{_shown(value)} is not a valid name (expected a lower-case letter, then up to 39 "
                           "lower-case letters, digits or '-')")
    return value


def database_name(value: str, arg: str = "database") -> str:
    """Return `value` if it is a PostgreSQL database name the pipeline makes or uses (`^[a-z_][a-z0-9_]{0,62}$`:
    an unquoted identifier, at most 63 bytes); else InputError."""
    if not isinstance(value, str) or not _DATABASE.fullmatch(value):
        raise _refuse(arg, f"{_shown(value)} is not a valid database name (expected a lower-case letter or '_', then "
                           "up to 62 lower-case letters, digits or '_')")
    return value


def is_route(value: str) -> bool:
    """True for a router path: `/`, or `/`-separated segments of `A-Z a-z 0-9 . _ ~ -`, no `.`/`..` segment."""
    return (isinstance(value, str) and len(value) <= _MAX_ROUTE and _ROUTE.fullmatch(value) is not None
            and not any(segment in (".", "..") for segment in value.split("/")))


ROUTE_RULE = ("expected a URL path: '/' or '/'-separated segments of letters, digits and . _ ~ - "
              "(no '.' or '..' segment, no '//', at most 256 characters)")


def route(value: str, arg: str = "route") -> str:
    """Return `value` if it matches the route grammar (`is_route`); else InputError."""
    if not is_route(value):
        raise _refuse(arg, f"{_shown(value)} is not a valid route ({ROUTE_RULE})")
    return value


def is_env_key(value: str) -> bool:
    """True for an environment variable / build argument name (`^[A-Za-z_][A-Za-z0-9_]*$`)."""
    return isinstance(value, str) and _ENV_KEY.fullmatch(value) is not None


def env_key(value: str, arg: str = "env") -> str:
    """Return `value` if it is a variable name (`is_env_key`); else InputError."""
    if not is_env_key(value):
        raise _refuse(arg, f"{_shown(value)} is not a variable name (expected letters, digits and '_', "
                           "not starting with a digit)")
    return value


# --- paths -------------------------------------------------------------------------------------------


def inside(root: str | Path, path: str, arg: str = "path") -> Path:
    """`root/path` resolved, if it and every directory on the way stay inside `root` (symlinks followed).

    `path` is relative (no leading `/`, no `..` part, no control characters). A symlink anywhere on
    the way that leads out of `root` is refused, even when a later one leads back in.
    """
    base = Path(root).resolve()
    if not isinstance(path, str) or not path or path.startswith("/") or _CONTROL.search(path):
        raise _refuse(arg, f"{_shown(path)} is not a path relative to the repository root")
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise _refuse(arg, f"{_shown(path)} has a '..' part")
    current = base
    for part in parts:
        try:
            current = (current / part).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long
            raise _refuse(arg, f"{_shown(path)} cannot be resolved (a symbolic link loop?)") from None
        if not current.is_relative_to(base):
            raise _refuse(arg, f"{_shown(path)} leaves the repository (through a symbolic link)")
    return current
