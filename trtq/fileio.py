"""Atomic file writes: a failed or interrupted run never leaves a partial file behind.

Single files go through :func:`atomic_path` (temp file, then rename). A command that writes several files
that belong together (a model and its report, a cache and its sidecar) opens an :func:`output_set`: every
atomic write inside it is staged next to its final path and all of them are renamed into place together
when the block ends without error, with SIGINT and SIGTERM held back during the renames; otherwise none is.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from trtq.errors import TrtqError


def _temp_beside(final: Path, suffix: str) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".trtq-tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the final file the usual permissions
    return tmp_path


class OutputSet:
    """Files staged next to their final paths, renamed into place together by :func:`output_set`."""

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}  # final (absolute) -> staged temp file, in the order first staged

    def path(self, final: str | os.PathLike[str], suffix: str = "") -> Path:
        """The staged file for ``final`` (the same one if ``final`` was staged before: the last write wins)."""
        key = Path(os.path.abspath(final))
        if key not in self._staged:
            self._staged[key] = _temp_beside(key, suffix)
        return self._staged[key]

    def staged(self, final: str | os.PathLike[str]) -> Path | None:
        return self._staged.get(Path(os.path.abspath(final)))

    def drop(self, final: str | os.PathLike[str]) -> None:
        """Forget ``final`` (its writer failed) and delete its staged file."""
        tmp = self._staged.pop(Path(os.path.abspath(final)), None)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def finals(self) -> list[Path]:
        return list(self._staged)

    def _commit(self) -> None:
        """Rename every staged file into place; the first one staged (the model of a model + report set) last,
        so that even a crash in between leaves no primary file without its companions."""
        finals = list(self._staged)
        with signals_held():
            try:
                for final in finals[1:] + finals[:1]:
                    os.replace(self._staged[final], final)
                    del self._staged[final]
            finally:
                self._discard()

    def _discard(self) -> None:
        for tmp in self._staged.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._staged.clear()


_ACTIVE: contextvars.ContextVar[OutputSet | None] = contextvars.ContextVar("trtq_output_set", default=None)


@contextlib.contextmanager
def output_set() -> Iterator[OutputSet]:
    """Write every file of the block as one set: all land at the end, or (error, Ctrl-C, SIGTERM) none does.

    Inside the block :func:`atomic_path` (and so ``write_json``, ``write_text``, ...) writes to staged files;
    code that reads back a file it wrote in the block opens :func:`current` of its path. A nested
    ``output_set()`` joins the enclosing one.
    """
    outer = _ACTIVE.get()
    if outer is not None:
        yield outer
        return
    outputs = OutputSet()
    token = _ACTIVE.set(outputs)
    try:
        yield outputs
    except BaseException:
        outputs._discard()
        raise
    finally:
        _ACTIVE.reset(token)
    outputs._commit()


def current(path: str | os.PathLike[str]) -> Path:
    """Where ``path``'s content is now: its staged file inside an open :func:`output_set`, else ``path``."""
    outputs = _ACTIVE.get()
    staged = outputs.staged(path) if outputs is not None else None
    return staged if staged is not None else Path(path)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, so a set of renames is not cut in half.

    Python runs signal handlers in the main thread; a held signal is raised again, to the handler that was
    in place, once the block is over.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: object) -> None:
        pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Use for writers that want a file name (ONNX save, ultralytics export, TensorRT plans). Inside an
    :func:`output_set` the file is staged in the set instead and lands with the rest of it.
    """
    outputs = _ACTIVE.get()
    if outputs is not None:
        try:
            yield outputs.path(path, suffix)
        except BaseException:
            outputs.drop(path)
            raise
        return
    final = Path(path)
    tmp_path = _temp_beside(final, suffix)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; rename it into place on success."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_output(model: str | os.PathLike[str], suffix: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """``<model stem><suffix>`` in ``folder``, else next to the model, else (read-only folder) in the cwd."""
    src = Path(model)
    name = src.stem + suffix
    if folder is not None:
        return Path(folder) / name
    if os.access(src.parent if str(src.parent) else ".", os.W_OK):
        return src.parent / name
    return Path.cwd() / name


def names_folder(output: str | os.PathLike[str]) -> bool:
    """``-o`` names a folder: it ends in ``/`` or is an existing folder."""
    raw = os.fspath(output)
    return raw.endswith(("/", os.sep)) or Path(raw).is_dir()


def output_path(
    output: str | os.PathLike[str] | None,
    default: str | os.PathLike[str],
    *,
    suffixes: Sequence[str],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    companions: Sequence[str] = (),
    flag: str = "-o",
) -> Path:
    """Check a command's output path before any work; return it.

    * ``None``: ``default``. A folder (an existing one, or a path ending in ``/``): ``default``'s file name
      inside it.
    * The name must end in one of ``suffixes`` (case-insensitive).
    * Neither it nor a file written with it (its name + each of ``companions``, e.g. ``.json``; or the
      ``companions`` given as ``"stem:.report.json"``, which replace the main suffix) may be one of ``inputs``,
      compared as files (symlinks, relative paths and hard links included).
    * Its folder (or the nearest existing parent) must be writable.
    """
    default = Path(default)
    raw = os.fspath(output) if output is not None else None
    if raw is None:
        out = default
    elif names_folder(raw):
        out = Path(raw) / default.name
    else:
        out = Path(raw)
    if not out.name.lower().endswith(tuple(s.lower() for s in suffixes)):
        want = " or ".join(suffixes)
        raise TrtqError(f"{flag} {out}: the output must be a {want} file (or a folder to write the default name in)")
    written = [out, *(_companion(out, c, suffixes) for c in companions)]
    for path in written:
        if path.is_dir():
            raise TrtqError(f"{flag} {out}: {path} is a folder")
        for src in inputs:
            if src is not None and _same_file(path, Path(src)):
                what = "" if path == out else f" (its {path.name})"
                raise TrtqError(f"{flag} {out}{what} would overwrite the input {src}: choose another output path")
    check_writable(out.parent, flag=flag)
    return out


def _companion(out: Path, companion: str, suffixes: Sequence[str]) -> Path:
    if companion.startswith("stem:"):
        name = out.name
        for suffix in suffixes:
            if name.lower().endswith(suffix.lower()):
                name = name[: len(name) - len(suffix)]
                break
        return out.with_name(name + companion[len("stem:"):])
    return out.with_name(out.name + companion)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: compare where they point
        return os.path.realpath(a) == os.path.realpath(b)


def check_writable(folder: str | os.PathLike[str], *, flag: str = "-o") -> None:
    """Refuse (one line) when files cannot be created in ``folder`` (or, if missing, its nearest existing parent)."""
    probe = Path(os.path.abspath(folder))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise TrtqError(f"cannot write to {folder}: {probe} is not a folder; pass {flag} PATH in a writable folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise TrtqError(f"cannot write to {folder} (no write permission); pass {flag} PATH in a writable folder")
