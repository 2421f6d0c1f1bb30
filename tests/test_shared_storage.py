"""The Optuna journal and the feature cache under a shared storage path (a URI: mirrored with pyarrow)."""
from __future__ import annotations

from pathlib import Path

from sweeps.cluster.shared_storage import JournalMirror, feature_cache_dir, pull_dir, pull_file, push_dir, remote_size


def test_feature_cache_goes_under_a_local_storage_path_on_a_cluster_only() -> None:
    assert feature_cache_dir("", "/shared/ray", on_cluster=True) == "/shared/ray/dsl-cache"
    assert feature_cache_dir("", "/shared/ray", on_cluster=False) == ""  # a laptop keeps ~/.cache/dsl-sweeps
    assert feature_cache_dir("/my/cache", "/shared/ray", on_cluster=True) == "/my/cache"
    assert feature_cache_dir("", "s3://bucket/sweeps", on_cluster=True) == ""  # mirrored instead


def test_journal_mirror_survives_a_new_head(tmp_path: Path) -> None:
    remote = f"file://{tmp_path / 'storage'}/sweep/optuna.journal"
    head1 = tmp_path / "head1" / "sweep.journal"
    head1.parent.mkdir()
    head1.write_text('{"op": 0}\n')
    mirror = JournalMirror(head1, remote)
    mirror.on_trial_complete(0, [], None)
    assert remote_size(remote) == head1.stat().st_size
    head1.write_text('{"op": 0}\n{"op": 1}\n')
    mirror.push()
    head2 = tmp_path / "head2" / "sweep.journal"  # a fresh head: no local journal
    assert pull_file(remote, head2) and head2.read_text() == head1.read_text()
    assert not pull_file(remote, head2)  # already as long as the remote copy


def test_feature_entry_mirror_is_complete_or_absent(tmp_path: Path) -> None:
    entry = tmp_path / "cache" / "corpora" / "k1"
    entry.mkdir(parents=True)
    (entry / "frames.npy").write_bytes(b"x" * 1000)
    (entry / "index.json").write_text("{}")
    remote = f"file://{tmp_path / 'storage'}/dsl-cache/corpora/k1"
    assert push_dir(entry, remote) and not push_dir(entry, remote)  # once
    other = tmp_path / "cache2" / "corpora" / "k1"
    assert pull_dir(remote, other) and (other / "frames.npy").stat().st_size == 1000
    assert not pull_dir(f"file://{tmp_path / 'storage'}/dsl-cache/corpora/missing", tmp_path / "c3" / "k")
