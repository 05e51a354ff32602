"""Crash-safe checkpoints: manifest last, verification, fallback, sweeping, retention, disk full."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors import SafetensorError

from mlm_core.training import checkpoints


def tensors(seed: int) -> tuple[dict, dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    model = {"w": torch.randn(8, 4, generator=gen), "b": torch.randn(4, generator=gen)}
    optimizer = {"state.0.exp_avg": torch.randn(8, 4, generator=gen), "rng.torch": torch.get_rng_state()}
    return model, optimizer, {"step": seed, "best": {"step": seed}}


def save(folder, step):
    return checkpoints.save_checkpoint(folder, step, *tensors(step))


def test_round_trip_and_layout(tmp_path):
    path = save(tmp_path, 12)
    assert path.name == "step-00000012"
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json", "model.safetensors", "optimizer.safetensors", "state.json"]
    model, optimizer, state = checkpoints.load_checkpoint(path)
    expected = tensors(12)
    assert all(torch.equal(model[k], v) for k, v in expected[0].items())
    assert all(torch.equal(optimizer[k], v) for k, v in expected[1].items())
    assert state == expected[2]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 12 and set(manifest["files"]) == {
        "model.safetensors", "optimizer.safetensors", "state.json"}
    assert not list(tmp_path.glob("*.tmp"))


def test_the_manifest_is_written_last_and_a_crash_before_it_leaves_only_a_temporary(tmp_path, monkeypatch):
    save(tmp_path, 1)
    order = []
    real_fsync = checkpoints._fsync_file

    def crash_at_manifest(path):
        order.append(path.name)
        if path.name == "manifest.json":
            raise KeyboardInterrupt("killed while writing the manifest")
        real_fsync(path)

    monkeypatch.setattr(checkpoints, "_fsync_file", crash_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2)
    assert order[-1] == "manifest.json" and len(order) == 4  # every data file was synced before it
    assert (tmp_path / "step-00000002.tmp").is_dir()
    assert not (tmp_path / "step-00000002").exists()
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["step-00000001"]
    assert checkpoints.latest_valid(tmp_path).name == "step-00000001"
    checkpoints.sweep_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]


@pytest.mark.parametrize("damage", ["flip-a-byte", "truncate", "delete-file", "delete-manifest", "bad-manifest"])
def test_verify_detects_damage_and_latest_valid_falls_back(tmp_path, damage):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    assert checkpoints.verify(newest) and checkpoints.latest_valid(tmp_path) == newest
    target = newest / "optimizer.safetensors"
    if damage == "flip-a-byte":  # same size: only the checksum can tell
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "delete-file":
        target.unlink()
    elif damage == "delete-manifest":
        (newest / "manifest.json").unlink()
    else:
        (newest / "manifest.json").write_text('{"step": 2, "fil')
    assert not checkpoints.verify(newest)
    assert checkpoints.latest_valid(tmp_path).name == "step-00000001"


def test_no_valid_checkpoint_means_start_from_scratch(tmp_path):
    assert checkpoints.latest_valid(tmp_path / "missing") is None
    only = save(tmp_path, 3)
    (only / "model.safetensors").write_bytes(b"")
    assert checkpoints.latest_valid(tmp_path) is None


def test_sweep_removes_stale_temporaries_only(tmp_path):
    save(tmp_path, 4)
    for name in ("step-00000005.tmp", "step-00000006.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    checkpoints.sweep_temporaries(tmp_path)
    checkpoints.sweep_temporaries(tmp_path / "missing")  # no folder yet: nothing to do
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000004"]


def test_a_rewritten_step_replaces_the_old_one_whole(tmp_path):
    save(tmp_path, 7)
    model, optimizer, state = tensors(99)
    path = checkpoints.save_checkpoint(tmp_path, 7, model, optimizer, state)
    assert checkpoints.verify(path) and checkpoints.load_checkpoint(path)[2] == state


def test_retain_keeps_the_newest_verified_checkpoints_only(tmp_path):
    for step in (1, 2, 3, 4, 5):
        save(tmp_path, step)
    kept = checkpoints.retain(tmp_path, 2)
    assert [p.name for p in kept] == ["step-00000005", "step-00000004"]
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["step-00000004", "step-00000005"]
    checkpoints.retain(tmp_path, 1)  # the default: what resume needs
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["step-00000005"]


def test_retain_keeps_the_previous_checkpoint_until_the_new_one_verifies(tmp_path):
    save(tmp_path, 3)
    damaged = save(tmp_path, 6)
    (damaged / "model.safetensors").write_bytes(b"torn")  # a write that did not come out whole
    checkpoints.retain(tmp_path, 1)
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["step-00000003", "step-00000006"]
    assert checkpoints.latest_valid(tmp_path).name == "step-00000003"  # resume still has its checkpoint
    save(tmp_path, 9)
    checkpoints.retain(tmp_path, 1)  # a newer one verifies: the older ones go, the damaged one too
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["step-00000009"]
    checkpoints.remove_all(tmp_path)
    assert checkpoints.checkpoints(tmp_path) == []


def test_optimizer_state_flattens_and_comes_back(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    flat, rest = checkpoints.flatten_optimizer(optimizer.state_dict())
    path = checkpoints.save_checkpoint(tmp_path, 1, {}, flat, {"optimizer": rest})
    loaded, loaded_flat, state = checkpoints.load_checkpoint(path)
    back = checkpoints.unflatten_optimizer(loaded_flat, json.loads(json.dumps(state["optimizer"])))
    fresh = torch.optim.AdamW(model.parameters(), lr=0.01)
    fresh.load_state_dict(back)
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][key], value)


def disk_full(*args, **kwargs):
    """What safetensors raises when the disk fills up under it (it is not an OSError)."""
    raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at path "x"')


def test_disk_full_raises_enospc_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    previous = save(tmp_path, 1)
    monkeypatch.setattr(checkpoints, "save_file", disk_full)
    with pytest.raises(OSError) as info:
        save(tmp_path, 2)
    assert info.value.errno == errno.ENOSPC
    assert not list(tmp_path.glob("*.tmp"))  # the half-written copy is gone: it would only take space
    assert checkpoints.verify(previous) and checkpoints.latest_valid(tmp_path) == previous


def test_disk_full_in_a_plain_write_is_an_oserror_too(tmp_path, monkeypatch):
    previous = save(tmp_path, 1)

    def full_fsync(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "_fsync_file", full_fsync)
    with pytest.raises(OSError) as info:
        save(tmp_path, 2)
    assert info.value.errno == errno.ENOSPC
    assert checkpoints.latest_valid(tmp_path) == previous and not list(tmp_path.glob("*.tmp"))
