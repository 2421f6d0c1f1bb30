"""Helpers shared by the benchmark sections: data location, timing, thread control, process memory."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EMODB = REPO.parent / "shared" / "data" / "emodb"


class Skip(Exception):
    """A section cannot run here (missing data or module); the message says why."""


def emodb_root() -> Path | None:
    """`../shared/data/emodb` next to the checkout, else `$DSL_EMODB`; None when neither exists."""
    for candidate in (DEFAULT_EMODB, os.environ.get("DSL_EMODB")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def require_emodb() -> Path:
    root = emodb_root()
    if root is None:
        raise Skip(f"EmoDB not found at {DEFAULT_EMODB} and $DSL_EMODB is unset")
    return root


def cache_dir() -> str:
    """Feature cache: $DSL_CACHE_DIR, else the warm /tmp/dslcache when present, else dsl's default."""
    env = os.environ.get("DSL_CACHE_DIR")
    if env:
        return env
    if Path("/tmp/dslcache").is_dir():
        return "/tmp/dslcache"
    return ""


def device_description() -> str:
    """E.g. '2-core AMD EPYC VM, no GPU' ('VM' when /proc/cpuinfo shows the hypervisor flag)."""
    model, vm = "", False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and " hypervisor" in line:
                vm = True
    except OSError:
        pass
    try:
        import torch

        gpu = f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    except Exception:
        gpu = "no GPU"
    return f"{os.cpu_count()}-core {model or platform.processor() or 'unknown CPU'}{' VM' if vm else ''}, {gpu}"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


_DEFAULT_THREADS: int | None = None


def default_threads() -> int:
    """torch's default intra-op thread count in this process (recorded before any section changes it)."""
    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        import torch

        _DEFAULT_THREADS = torch.get_num_threads()
    return _DEFAULT_THREADS


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with `n` intra-op threads (None: torch's default), restoring the previous setting."""
    import torch

    default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(n or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ----------------------------------------------------------------------------------------- memory (/proc)

SMAPS_FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty")


def smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """Bytes of Rss, Pss, Shared_*, Private_* and uss (= Private_Clean + Private_Dirty) of one process.

    USS is what the process alone holds; PSS splits every shared page evenly among the processes
    mapping it, so summing PSS over processes counts a shared page once. RSS counts it in every process.
    """
    out = {k: 0 for k in SMAPS_FIELDS}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].rstrip(":") in out:
            out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    out["uss"] = out["Private_Clean"] + out["Private_Dirty"]
    out["shared"] = out["Shared_Clean"] + out["Shared_Dirty"]
    return out


def peak_rss(pid: int | str = "self") -> int:
    """VmHWM (peak resident set) in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_cmdlines(descendants_of: int | None = None) -> dict[int, str]:
    """pid -> command line of every process, or only of the descendants of `descendants_of`."""
    out, parent = {}, {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (p / "stat").read_text()
                parent[int(p.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    if descendants_of is None:
        return out

    def descends(pid: int) -> bool:
        seen = set()
        while pid in parent and pid not in seen:
            seen.add(pid)
            pid = parent[pid]
            if pid == descendants_of:
                return True
        return False

    return {pid: cmd for pid, cmd in out.items() if descends(pid)}


def mib(n: float) -> float:
    return round(n / 2**20, 2)
