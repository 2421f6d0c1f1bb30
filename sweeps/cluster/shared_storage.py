"""What a resumed sweep needs besides Tune's own state, kept under the sweep's storage path when that path is
shared, so a new head (a restarted KubeRay head pod, another machine) finds it: the Optuna journal and the
feature cache.

- Storage on a local (or mounted) path: on a cluster (`--address`) the feature cache defaults to
  `<storage>/dsl-cache` (unless `cache_dir` is set); the journal already lives in `<storage>/<sweep>/`.
- Storage at a URI (`s3://`, `gs://`, `file://`; anything pyarrow opens): the journal needs a local file
  (Optuna's file locks), so it is kept in the local cache and mirrored to `<storage>/<sweep>/optuna.journal`:
  pulled at start when the local copy is missing or shorter, pushed after every finished trial and at the
  end. The corpus's feature entry is mirrored to `<storage>/dsl-cache/corpora/<key>/` the same way.
"""
from __future__ import annotations

from pathlib import Path

from ray import tune

from dsl.runtime.paths import is_uri


def feature_cache_dir(configured: str, root: str, on_cluster: bool) -> str:
    """The feature cache to use: the configured one, else `<storage>/dsl-cache` for a local storage path on a
    cluster, else "" (the default cache, `$DSL_CACHE_DIR` or `~/.cache/dsl-sweeps`)."""
    if configured or not on_cluster or is_uri(root):
        return configured
    return str(Path(root) / "dsl-cache")


def _fs(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def remote_size(uri: str) -> int | None:
    """Size of the file at `uri`, or None if there is none."""
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def pull_file(uri: str, local: Path) -> bool:
    """Copy `uri` over `local` when the remote copy is longer (an append-only journal); True if copied."""
    size = remote_size(uri)
    if size is None or (local.exists() and local.stat().st_size >= size):
        return False
    fs, path = _fs(uri)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(local.name + ".pull")
    with fs.open_input_stream(path) as src, open(tmp, "wb") as dst:
        dst.write(src.read())
    tmp.replace(local)
    return True


def push_file(local: Path, uri: str) -> None:
    fs, path = _fs(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with open(local, "rb") as src, fs.open_output_stream(path) as dst:
        dst.write(src.read())


def push_dir(local: Path, uri: str) -> bool:
    """Copy the folder `local` to `uri` unless a complete copy (its index.json) is there; True if copied."""
    import pyarrow.fs as pafs

    fs, path = _fs(uri)
    if fs.get_file_info(f"{path}/index.json").type == pafs.FileType.File:
        return False
    fs.create_dir(path, recursive=True)
    for f in sorted(local.iterdir(), key=lambda p: p.name == "index.json"):  # the index last: it marks done
        with open(f, "rb") as src, fs.open_output_stream(f"{path}/{f.name}") as dst:
            dst.write(src.read())
    return True


def pull_dir(uri: str, local: Path) -> bool:
    """Copy a complete remote folder (with index.json) to `local` when `local` has none; True if copied."""
    import pyarrow.fs as pafs

    if (local / "index.json").exists():
        return False
    fs, path = _fs(uri)
    if fs.get_file_info(f"{path}/index.json").type != pafs.FileType.File:
        return False
    tmp = local.with_name(local.name + ".pull")
    tmp.mkdir(parents=True, exist_ok=True)
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as src, open(tmp / info.base_name, "wb") as dst:
                dst.write(src.read())
    tmp.replace(local)
    return True


class JournalMirror(tune.Callback):
    """Pushes the local Optuna journal to the storage URI after every finished trial (and on `push()`)."""

    def __init__(self, local: Path, uri: str):
        self.local, self.uri = local, uri

    def push(self) -> None:
        if self.local.exists():
            push_file(self.local, self.uri)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.push()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.push()
