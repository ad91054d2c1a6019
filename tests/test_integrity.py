"""integrity.py: a folder's files.sha256 is written with it, read as `sha256sum -c` would, and every missing,
extra or changed file stops a command with one line naming it. End to end on damaged runs: test_safety.py and
test_received_folders.py."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from bidirect.integrity import check_manifest, write_manifest
from bidirect.rundir import RunDirError


@pytest.fixture
def folder(tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.safetensors").write_bytes(b"\x00" * 100)
    (model / "sub" / "config.json").write_text("{}")
    (model / "README.md").write_text("the card")  # rewritten after each evaluation: not covered
    write_manifest(model)
    return model


def test_the_manifest_is_sha256sum_format(folder):
    lines = (folder / "files.sha256").read_text().splitlines()
    assert lines == [f"{hashlib.sha256(b'{}').hexdigest()}  sub/config.json",
                     f"{hashlib.sha256(bytes(100)).hexdigest()}  weights.safetensors"]
    done = subprocess.run(["sha256sum", "-c", "files.sha256"], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_untouched_folder_passes_and_its_card_may_change(folder):
    (folder / "README.md").write_text("evaluated again")
    check_manifest(folder, "the model", "train it again")


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "weights.safetensors").write_bytes(b"\x01" * 100), "weights.safetensors: damaged: its sha256"),
    (lambda f: (f / "sub" / "config.json").unlink(), "sub/config.json: missing from the model"),
    (lambda f: (f / "extra.py").write_text("import os"), "extra.py: not part of the model as it was written"),
    (lambda f: (f / "files.sha256").write_text("not a hash\n"), "files.sha256: damaged"),
])
def test_each_kind_of_damage_is_named(folder, damage, message):
    damage(folder)
    with pytest.raises(RunDirError, match=message) as err:
        check_manifest(folder, "the model", "train it again")
    assert str(err.value).endswith("train it again")


def test_a_folder_without_a_manifest_is_not_checked(tmp_path):
    (tmp_path / "old.bin").write_bytes(b"1")
    check_manifest(tmp_path, "an old model", "nothing")
