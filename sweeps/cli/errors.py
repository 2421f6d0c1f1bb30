"""The one handler every `dsl-sweep` command runs under: an expected failure is one line and an exit code.

Expected failures are the tool's own errors (bad config, corpus or audio, an unreachable tracking server,
a dead fold worker), an `OSError` (a file that cannot be read or written, a full disk) and Ctrl-C. Each
becomes `error: <what, naming the file or step> (<what was kept, what to do next>)` on stderr; the
traceback behind it only with `-v`. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

# Exit codes (docs/cluster.md lists them with the faults that give them).
EXIT_OK = 0
EXIT_PROBLEMS = 1  # finished, but found problems (validate) or some trials errored (sweep)
EXIT_INPUT = 2  # bad config, corpus, audio or manifest; the tracking server refused or is unreachable
EXIT_WORKER = 3  # a fold worker process died (OOM killer, killed by hand)
EXIT_FILES = 4  # a file or folder could not be read or written (read-only, missing, disk full)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), or a sweep interrupted before all its trials ran

# "module:Class" of the tool's own errors and their exit codes. Looked up in sys.modules only: an error
# whose module was never imported cannot have been raised, and the handler imports nothing heavy.
TOOL_ERRORS: dict[str, int] = {
    "dsl.config:ConfigError": EXIT_INPUT,
    "dsl.data.corpora:CorpusError": EXIT_INPUT,
    "dsl.data.audio:BadAudioError": EXIT_INPUT,
    "tracking.client:TrackingUnavailable": EXIT_INPUT,
    "dsl.execution.fold_runners:FoldWorkerError": EXIT_WORKER,
    "sweeps.selection.chains:ChainFailed": EXIT_WORKER,  # a chain of `best` failed; the finished ones are kept
    "sweeps.search.tuner:TrialWorkerKilled": EXIT_WORKER,  # Ray killed trial workers past the sweep's restores
}

_OS_HINTS = {
    errno.EROFS: "choose a writable place (another folder, or a writable mount)",
    errno.EACCES: "choose a place you may write, or fix its permissions",
    errno.EPERM: "choose a place you may write, or fix its permissions",
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file path, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def tool_error_code(exc: BaseException) -> int | None:
    """The exit code of one of the tool's own errors, None for anything else."""
    for name, code in TOOL_ERRORS.items():
        module, _, cls = name.partition(":")
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, cls)):
            return code
    return None


def _with_notes(text: str, exc: BaseException) -> str:
    from dsl.runtime.notes import notes_of

    notes = notes_of(exc)
    return f"{text} ({'; '.join(notes)})" if notes else text


def os_error_text(exc: OSError) -> str:
    """`<file>: <why>` for an OSError, whatever form it came in."""
    why = exc.strerror or (errno.errorcode.get(exc.errno or 0) if exc.errno else None) or str(exc)
    name = exc.filename
    if name is None:
        return str(exc) if not exc.strerror else why
    return f"{os.fsdecode(name)}: {why}" + (f" -> {os.fsdecode(exc.filename2)}" if exc.filename2 else "")


def describe_os_error(exc: OSError) -> str:
    from dsl.runtime.paths import NotWritableError

    if isinstance(exc, NotWritableError):
        return f"{exc}; nothing was started: {exc.hint or _OS_HINTS[errno.EROFS]}"
    hint = _OS_HINTS.get(exc.errno or 0)
    return os_error_text(exc) + (f"; {hint}" if hint else "")


def run_handled(handler: Callable[[Any], int | None], args: Any, verbose: bool = False) -> int:
    """`handler(args)` as a command: its exit code, or the one line and code of an expected failure."""
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt as exc:
        if verbose:
            traceback.print_exc()
        print(_with_notes("interrupted (Ctrl-C)", exc), file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = tool_error_code(exc)
        if code is not None:
            text = str(exc)
        elif isinstance(exc, OSError):
            code, text = EXIT_FILES, describe_os_error(exc)
        else:
            raise  # a bug: its traceback is what a report needs
        if verbose:
            traceback.print_exc()
        print("error: " + _with_notes(text, exc), file=sys.stderr, flush=True)
        return code
