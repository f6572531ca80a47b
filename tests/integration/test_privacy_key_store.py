"""The key store on SQLite and PostgreSQL, and master-key rotation by the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from projections.privacy.cipher import CipherError, decode_master_key, new_key, unwrap
from projections.privacy.keystore import KeyStore, KeyStoreLocked
from stack.settings import Settings
from tests.node_process import run_cli


@pytest.fixture(params=["sqlite", "postgres"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, object]]:
    if request.param == "sqlite":
        yield {"sqlite_path": tmp_path / "keys.sqlite"}
    else:
        yield {"postgres_dsn": request.getfixturevalue("postgres_dsn")}


def test_data_keys_are_kept_wrapped_destroyed_and_never_recreated_for_a_suppressed_id(
    store_args: dict[str, object],
) -> None:
    master = new_key()
    store = KeyStore(master, **store_args)  # type: ignore[arg-type]
    try:
        created = store.data_keys(["a", "b", "c"], create=True)
        assert set(created) == {"a", "b", "c"} and len(set(created.values())) == 3
        assert store.data_keys(["a", "zz"], create=False) == {"a": created["a"]}
        assert store.count() == 3
        store.suppress(["b"], 1.0)
        store.suppress(["b"], 2.0)  # again: kept once
        assert store.destroy(["b", "unknown"]) == 1
        assert store.data_keys(["b"], create=True) == {}
        assert store.suppressed() == {"b"}
    finally:
        store.close()
    # Another process (a restart) with the same master key finds the same keys.
    again = KeyStore(master, **store_args)  # type: ignore[arg-type]
    try:
        assert again.data_keys(["a", "c"], create=False) == {
            "a": created["a"],
            "c": created["c"],
        }
        assert again.suppressed() == {"b"}
    finally:
        again.close()
    with pytest.raises(KeyStoreLocked):
        KeyStore(new_key(), **store_args)  # type: ignore[arg-type]


def test_rewrap_moves_every_key_to_the_new_master_and_the_old_one_opens_none(
    store_args: dict[str, object],
) -> None:
    old, new = new_key(), new_key()
    store = KeyStore(old, **store_args)  # type: ignore[arg-type]
    try:
        keys = store.data_keys([f"c{i}" for i in range(50)], create=True)
        lookup = store.lookup_key
        assert store.rewrap(new) == 50
        # The stored rows, read raw: wrapped under the new key, not the old.
        rows = store._tables.rows("SELECT customer_id, wrapped FROM privacy_data_keys")
        for customer_id, wrapped in rows:
            assert unwrap(new, bytes(wrapped), customer_id) == keys[customer_id]
            with pytest.raises(CipherError):
                unwrap(old, bytes(wrapped), customer_id)
    finally:
        store.close()
    with pytest.raises(KeyStoreLocked):
        KeyStore(old, **store_args)  # type: ignore[arg-type]
    reopened = KeyStore(new, **store_args)  # type: ignore[arg-type]
    try:
        assert reopened.data_keys(keys, create=False) == keys
        assert reopened.lookup_key == lookup  # stored hashes stay comparable
    finally:
        reopened.close()


def test_journeys_master_key_rotate_rewrites_the_key_file_and_keeps_no_old_copy(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    # The first use generates the key file, 0600 in a 0700 folder.
    from stack.privacy import open_vault

    vault = open_vault(settings)
    keys = vault.keys.data_keys(["u1", "u2"], create=True)
    vault.keys.close()
    path = settings.master_key_path
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert settings.key_store_path.stat().st_mode & 0o077 == 0
    old = decode_master_key(path.read_text())

    done = run_cli(settings, "master-key", "rotate")
    assert done.returncode == 0, done.stderr
    assert "re-wrapped 2 data keys" in done.stdout
    new = decode_master_key(path.read_text())
    assert new != old
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["master.key"]
    with pytest.raises(KeyStoreLocked):
        KeyStore(old, sqlite_path=settings.key_store_path)
    store = KeyStore(new, sqlite_path=settings.key_store_path)
    try:
        assert store.data_keys(keys, create=False) == keys
    finally:
        store.close()


def test_a_missing_master_key_beside_a_store_with_keys_is_refused_not_regenerated(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    from stack.privacy import MasterKeyMissing, open_vault

    vault = open_vault(settings)
    vault.keys.data_keys(["u1"], create=True)
    vault.keys.close()
    settings.master_key_path.unlink()
    with pytest.raises(MasterKeyMissing, match="already holds data keys"):
        open_vault(settings)
    assert not settings.master_key_path.exists()
    done = run_cli(settings, "master-key", "rotate")
    assert done.returncode == 2 and "already holds data keys" in done.stderr
