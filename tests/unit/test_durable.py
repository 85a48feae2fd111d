"""common.durable: crash-safe writes, sealed files that catch any flipped bit, manifests."""
from __future__ import annotations

import hashlib
import os

import pytest

from common import durable
from common.errors import CheckpointError


def test_a_sealed_file_round_trips():
    body = {"format": 1, "files": {}, "rng": {"state": 2 ** 100}, "x": 1e-5, "name": "caf\u00e9"}
    assert durable.unseal(durable.seal(body), "m") == body


def test_every_single_bit_flip_of_a_sealed_file_is_caught():
    """Exhaustive over a small manifest: each of its bits, flipped alone."""
    data = durable.seal({"format": 1, "counter": 1e-05, "files": {
        "a.npy": {"size": 10, "sha256": "0" * 64}}, "ok": True})
    for pos in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[pos] ^= 1 << bit
            with pytest.raises(CheckpointError, match="^m: "):
                durable.unseal(bytes(damaged), "m")


@pytest.mark.parametrize("data", [b"", b"{}", b"{}\nsha256:", b"[]\nsha256:" + b"0" * 64 + b"\n",
                                  b"\xff" * 100])
def test_unsealed_or_foreign_bytes_are_refused(data):
    with pytest.raises(CheckpointError, match="^m: "):
        durable.unseal(data, "m")


def test_a_sealed_non_object_is_refused():
    body = b"[1]"
    data = body + b"\nsha256:" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    with pytest.raises(CheckpointError, match="holds list"):
        durable.unseal(data, "m")


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "f"
    durable.atomic_write_text(path, "old")

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        durable.atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f"]


def test_the_digest_is_that_of_the_bytes_on_disk(tmp_path):
    digest = durable.write_file(tmp_path / "a", lambda f: [f.write(b"x" * 1000), f.write(b"yz")])
    assert digest == durable.file_digest(tmp_path / "a") and digest.size == 1002


@pytest.mark.parametrize("table,match", [
    ([], "files table is list"),
    ({"/etc/passwd": {"size": 1, "sha256": "0" * 64}}, "not a relative path"),
    ({"a/../../b": {"size": 1, "sha256": "0" * 64}}, "not a relative path"),
    ({"a": None}, "not an object"),
    ({"a": {"size": True, "sha256": "0" * 64}}, "not a byte count"),
    ({"a": {"size": -1, "sha256": "0" * 64}}, "not a byte count"),
    ({"a": {"size": 1, "sha256": "0" * 63}}, "not a digest"),
    ({"a": {"size": 1, "sha256": "A" * 64}}, "not a digest"),
])
def test_a_bad_files_table_is_refused(table, match):
    with pytest.raises(CheckpointError, match=match):
        durable.parse_files(table, "m")


def test_verify_manifest_follows_nested_manifests(tmp_path):
    inner = tmp_path / "sub"
    inner.mkdir()
    (inner / "data").write_bytes(b"abc" * 100)
    durable.write_sealed(inner / durable.MANIFEST, {"files": durable.manifest_for(inner, ["data"])})
    (tmp_path / "top").write_text("top")
    durable.write_sealed(tmp_path / durable.MANIFEST,
                         {"files": durable.manifest_for(tmp_path, ["top", "sub/manifest.json"])})
    durable.verify_manifest(tmp_path, durable.Check.CONTENT)
    data = bytearray((inner / "data").read_bytes())
    data[7] ^= 4
    (inner / "data").write_bytes(bytes(data))
    durable.verify_manifest(tmp_path, durable.Check.STRUCTURE)  # sizes only: still fine
    with pytest.raises(CheckpointError, match=r"sub/data: checksum mismatch"):
        durable.verify_manifest(tmp_path, durable.Check.CONTENT)
