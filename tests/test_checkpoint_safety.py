"""Resume checkpoints are untrusted input (a group-writable work folder): never unpickled, checksummed, bound to
their run. A malicious, damaged or foreign checkpoint is discarded with a warning naming it, and the run redoes
that step: its row equals an undisturbed run's."""
import hashlib
import io
import json
import os
import pathlib
import random
import shutil
import signal
import warnings
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from bench_harness.api import make_recipe
from bench_harness.running import checkpoint
from bench_harness.running.runner import execute_run
from bench_harness.running.trainer import Trainer
from tests.conftest import runs_of

SUITE = """
name: ckpt
grid:
  models: [mlp]
  datasets: [{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}]
  sparsities: [0.5, 0.8]
  pruners: [magnitude]
recipe: {epochs: 4, batch_size: 32, lr: 0.05}
"""
COMPARED = ("status", "top1", "top5", "loss", "top1_before_training", "loss_before_training", "achieved_sparsity",
            "layer_density", "params_nonzero")


def _runs(root):
    return runs_of(SUITE, root, "ckpt.yaml")


def _interrupted(run, at_epoch):
    """Run with checkpoints and stop at the end of training epoch ``at_epoch`` with a real Ctrl-C (a
    KeyboardInterrupt without a SIGINT is a plugin's, a failed run): pruned.pt and train.pt stay."""
    def interrupt(phase, epoch, total, loss):
        if epoch == at_epoch:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        execute_run(run, on_epoch=interrupt, resume=True)
    assert checkpoint.pruned_path(run.results_root, run.suite, run.run_id).exists()
    assert checkpoint.checkpoint_path(run.results_root, run.suite, run.run_id).exists()


def _assert_same_row(row, plain):
    for key in COMPARED:
        assert row[key] == plain[key], key


def _warnings_of(row):
    return json.loads(row["warnings"]) if row["warnings"] else []


def _assert_discarded(row, name, why):
    hits = [w for w in _warnings_of(row) if w.startswith("CheckpointDiscarded") and name in w and why in w]
    assert hits, _warnings_of(row)


@pytest.fixture(scope="module")
def plain_rows(tmp_path_factory):
    """Undisturbed runs (no checkpoints) of the suite, by run id."""
    return {run.run_id: execute_run(run) for run in _runs(tmp_path_factory.mktemp("plain"))}


# -- malicious checkpoints --------------------------------------------------------------------------------------

class _Plant:
    """Unpickling it creates the marker file."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _plant_old_format(path, marker, run_id):
    """A checkpoint as bf202ae wrote them (a bare torch.save), holding an object that runs code when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_pickled({"run_id": run_id, "boom": _Plant(marker)}))


def _plant_enveloped(path, marker, owner):
    """The same object inside a well-formed checkpoint of the current format (right header and checksum: an
    attacker can compute those)."""
    body = _pickled({"owner": owner, "payload": {"boom": _Plant(marker)}})
    header = {"format": checkpoint.FORMAT, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    path.write_bytes(checkpoint.MAGIC + json.dumps(header).encode() + b"\n" + body)


def test_the_plant_runs_code_when_unpickled(tmp_path):
    """The planted files are really malicious: a plain unpickling creates the marker."""
    marker = tmp_path / "MARKER"
    _plant_old_format(tmp_path / "x.pt", marker, "r")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("planted", ["pruned.pt", "train.pt", "both"])
def test_a_planted_malicious_checkpoint_is_not_unpickled(tmp_path, plain_rows, planted):
    run = _runs(tmp_path / "results")[0]
    _interrupted(run, at_epoch=2)
    marker = tmp_path / "MARKER"
    names = ["pruned.pt", "train.pt"] if planted == "both" else [planted]
    for name in names:
        _plant_old_format(checkpoint.work_dir(run.results_root, run.suite, run.run_id) / name, marker, run.run_id)

    row = execute_run(run, resume=True)

    assert not marker.exists()
    assert row["status"] == "ok", row.get("error")
    for name in names:
        _assert_discarded(row, name, "old-format")
    _assert_same_row(row, plain_rows[run.run_id])
    if planted == "train.pt":  # the pruned state is good: training redone from its first epoch
        assert row["resumed_from_epoch"] == 0
    if planted == "pruned.pt":  # pruned again, then the good train.pt of the interrupted attempt resumed
        assert row["resumed_from_epoch"] == 2


def test_a_malicious_checkpoint_with_a_valid_checksum_is_not_unpickled(tmp_path, plain_rows):
    run = _runs(tmp_path / "results")[0]
    _interrupted(run, at_epoch=2)
    marker = tmp_path / "MARKER"
    path = checkpoint.pruned_path(run.results_root, run.suite, run.run_id)
    _plant_enveloped(path, marker, checkpoint.run_owner(run.suite, run.run_id))

    row = execute_run(run, resume=True)

    assert not marker.exists()
    _assert_discarded(row, "pruned.pt", "weights_only=True")
    _assert_same_row(row, plain_rows[run.run_id])


def _fits(checkpoints):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    trainer = Trainer(batches, make_recipe({"epochs": 2, "lr": 0.05, "batch_size": 8}), torch.device("cpu"),
                      checkpoint_dir=checkpoints)
    return model, trainer.fit(model)


def test_a_planted_malicious_fit_checkpoint_is_not_unpickled(tmp_path):
    plain, _ = _fits(None)
    marker = tmp_path / "MARKER"
    _plant_old_format(tmp_path / "ck" / "fit-000.pt", marker, "r")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, fit = _fits(tmp_path / "ck")

    assert not marker.exists()
    assert not fit.restored and fit.resumed_from_epoch is None  # the fit was redone
    assert [w for w in caught if issubclass(w.category, checkpoint.CheckpointDiscarded)
            and "fit-000.pt" in str(w.message)]
    for a, b in zip(plain.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


# -- damaged and foreign checkpoints ----------------------------------------------------------------------------

def _flip_sign_bits(path, count=32):
    """Flip the sign bit of ``count`` non-zero float32 values of the largest tensor stored in a checkpoint (its
    torch.save zip, wherever it starts in the file)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        member = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        data = zf.read(member)
    start = raw.find(data)
    assert start > 0
    flipped = 0
    for offset in range(0, len(data) - 3, 4):
        if any(data[offset:offset + 4]) and flipped < count:
            raw[start + offset + 3] ^= 0x80
            flipped += 1
    assert flipped == count
    path.write_bytes(bytes(raw))


def test_bit_flips_in_train_checkpoint_are_detected(tmp_path, plain_rows):
    run = _runs(tmp_path / "results")[0]
    _interrupted(run, at_epoch=3)
    path = checkpoint.checkpoint_path(run.results_root, run.suite, run.run_id)
    _flip_sign_bits(path)

    row = execute_run(run, resume=True)

    _assert_same_row(row, plain_rows[run.run_id])
    _assert_discarded(row, "train.pt", "checksum")
    assert row["resumed_from_epoch"] == 0  # from the good pruned state, training from its first epoch
    assert not path.exists()  # a finished run leaves no checkpoint


def test_a_checkpoint_copied_from_another_run_is_foreign(tmp_path, plain_rows):
    donor, run = _runs(tmp_path / "results")
    _interrupted(donor, at_epoch=2)
    target = checkpoint.work_dir(run.results_root, run.suite, run.run_id)
    target.mkdir(parents=True)
    for name in ("pruned.pt", "train.pt"):
        shutil.copy(checkpoint.work_dir(donor.results_root, donor.suite, donor.run_id) / name, target / name)

    row = execute_run(run, resume=True)

    assert row["status"] == "ok", row.get("error")
    _assert_discarded(row, "pruned.pt", "foreign")
    _assert_discarded(row, "train.pt", "foreign")
    _assert_same_row(row, plain_rows[run.run_id])


# -- the file format, unit by unit ------------------------------------------------------------------------------

def _draws(generator):
    return (torch.rand(3).tolist(), random.random(), np.random.rand(3).tolist(),
            torch.rand(3, generator=generator).tolist())


def test_rng_states_round_trip_exactly(tmp_path):
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.randn()  # a cached Gaussian in the NumPy state
    checkpoint.save(tmp_path / "c.pt", {"rng": checkpoint.rng_state(generator)}, "me")
    expected = _draws(generator)
    _draws(generator), _draws(generator)  # move every RNG on
    checkpoint.restore_rng(checkpoint.load(tmp_path / "c.pt", "me")["rng"], generator)
    assert _draws(generator) == expected


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.9)),
                                  lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)])
def test_optimizer_state_round_trips(tmp_path, make):
    model = nn.Linear(4, 2)
    optimizer = make(model.parameters())
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
    state = optimizer.state_dict()
    checkpoint.save(tmp_path / "o.pt", {"optimizer": state, "model": model.state_dict()}, "me")
    loaded = checkpoint.load(tmp_path / "o.pt", "me")
    assert loaded["optimizer"]["param_groups"] == state["param_groups"]
    assert loaded["optimizer"]["state"].keys() == state["state"].keys()
    for i, buffers in state["state"].items():
        for name, value in buffers.items():
            assert torch.equal(torch.as_tensor(loaded["optimizer"]["state"][i][name]), torch.as_tensor(value))
    make(model.parameters()).load_state_dict(loaded["optimizer"])


def test_numpy_scalars_become_python_scalars_and_tuples_stay_tuples(tmp_path):
    checkpoint.save(tmp_path / "c.pt", {"a": np.float64(0.25), "b": np.int64(3), "t": (1, (2.0, None))}, "me")
    loaded = checkpoint.load(tmp_path / "c.pt", "me")
    assert loaded == {"a": 0.25, "b": 3, "t": (1, (2.0, None))} and type(loaded["b"]) is int


@pytest.mark.parametrize("bad", [np.zeros(3), object(), {1.5: 0}, torch.float32, {"nested": [set()]},
                                 __import__("collections").namedtuple("Pair", "a b")(1, 2)])
def test_a_payload_that_is_not_plain_fails_at_save_time(tmp_path, bad):
    with pytest.raises(TypeError, match="checkpoint payload"):
        checkpoint.save(tmp_path / "c.pt", {"x": bad}, "me")
    assert not (tmp_path / "c.pt").exists()


def _discarded(path, owner, why):
    with pytest.warns(checkpoint.CheckpointDiscarded, match=why) as record:
        assert checkpoint.load(path, owner) is None
    assert str(path) in str(record[0].message)
    assert not path.exists()  # removed: never read again


def test_old_format_truncated_damaged_and_foreign_files_are_discarded(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"epoch": 1}, old)
    _discarded(old, "me", "old-format")

    for cut in (10, len(checkpoint.MAGIC) + 5, 200):
        truncated = tmp_path / f"cut{cut}.pt"
        checkpoint.save(truncated, {"w": torch.ones(64)}, "me")
        truncated.write_bytes(truncated.read_bytes()[:cut])
        _discarded(truncated, "me", "old-format" if cut < len(checkpoint.MAGIC) else "damaged")

    damaged = tmp_path / "damaged.pt"
    checkpoint.save(damaged, {"w": torch.ones(64)}, "me")
    data = bytearray(damaged.read_bytes())
    data[-100] ^= 0x01
    damaged.write_bytes(bytes(data))
    _discarded(damaged, "me", "checksum")

    foreign = tmp_path / "foreign.pt"
    checkpoint.save(foreign, {"w": torch.ones(64)}, "suite/other-run")
    _discarded(foreign, "suite/this-run", "foreign")


def test_a_missing_checkpoint_loads_as_none_without_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkpoint.load(tmp_path / "none.pt", "me") is None
