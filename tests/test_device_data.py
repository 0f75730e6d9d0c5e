"""Data on the device (recipe.data_on_device), tested on CPU tensors: the same examples, labels and batches as the
DataLoader path, augmentation as torchvision's and uniform, reproducible per seed, resumable, masks applied."""
import pickle
import weakref

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from bench_harness.api import make_recipe
from bench_harness.contract.datasets import head, make_loader
from bench_harness.contract.plugins import get_registry
from bench_harness.running import device_data
from bench_harness.running.device_data import DeviceLoader, device_loaders, random_crop, resident
from bench_harness.running.runner import execute_packed, execute_run
from tests.conftest import runs_of

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_resident():
    device_data.clear_resident()
    yield
    device_data.clear_resident()


def _cifar_root(tmp_path, per_file=12):
    """A CIFAR-10 folder in the official pickle format with random images (label = image index % 10)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = torch.randint(0, 256, (per_file, 3072), generator=g, dtype=torch.uint8).numpy()
        labels = [(i * per_file + j) % 10 for j in range(per_file)]
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    return tmp_path


def _cifar(root, augment, split="train"):
    return get_registry().get("dataset", "cifar10").load(root=str(root), split=split, augment=augment)


def _epochs(loader, n):
    return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb)
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert torch.equal(ya.long(), yb.long())
            assert torch.allclose(xa, xb, atol=1e-6, rtol=0), (xa - xb).abs().max()


@pytest.mark.parametrize("n, batch, drop_last", [(37, 8, True), (37, 8, False), (16, 16, False)])
def test_without_augmentation_the_batches_are_the_loader_paths(n, batch, drop_last):
    """Same order of examples, same image/label pairing, and the generator left in the same state."""
    x = torch.randn(n, 3, 4, 4)
    ds = TensorDataset(x, torch.arange(n) % 5)
    loader = make_loader(ds, batch, True, seed=7, drop_last=drop_last)
    data, idx = resident(ds, CPU)
    dev = DeviceLoader(data, idx, batch, True, seed=7, drop_last=drop_last)
    assert len(dev) == len(loader)
    _assert_same_batches(_epochs(dev, 3), _epochs(loader, 3))
    assert torch.equal(dev.generator.get_state(), loader.generator.get_state())


def test_cifar_uint8_batches_equal_the_torchvision_transforms(tmp_path):
    """The built-in CIFAR data set without augmentation: ToTensor + Normalize on the device, per batch."""
    root = _cifar_root(tmp_path)
    ds = head(_cifar(root, augment=False), 50)  # a Subset (train_subset) shares its parent's tensors
    loader = make_loader(ds, 16, True, seed=3, drop_last=True)
    recipe = make_recipe({"batch_size": 16, "data_on_device": True, "augment": False})
    train, test = device_loaders(ds, _cifar(root, False, "test"), recipe, 3, CPU)
    _assert_same_batches(_epochs(train, 2), _epochs(loader, 2))
    _assert_same_batches(_epochs(test, 1), _epochs(make_loader(_cifar(root, False, "test"), 512, False, 3), 1))


def test_fashion_mnist_like_images_equal_the_loader_path():
    from bench_harness_plugins.providers.datasets import NormalizedImages

    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8)
    ds = NormalizedImages(images, torch.arange(40) % 10, 0.2860, 0.3530)
    loader = make_loader(ds, 8, True, seed=1, drop_last=True)
    data, idx = resident(ds, CPU)
    _assert_same_batches(_epochs(DeviceLoader(data, idx, 8, True, 1, drop_last=True), 2), _epochs(loader, 2))


def test_augmented_batches_are_torchvisions_crop_and_flip_of_the_right_image(tmp_path):
    from PIL import Image
    from torchvision.transforms import functional as TF

    root = _cifar_root(tmp_path)
    ds = _cifar(root, augment=True)
    recipe = make_recipe({"batch_size": 10, "data_on_device": True})
    train, _ = device_loaders(ds, _cifar(root, False, "test"), recipe, 5, CPU)
    state = train.generator.get_state()
    order, dy, dx, flips = train.epoch_draws()
    train.generator.set_state(state)
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(3, 1, 1)
    k = 0
    for x, y in train:
        for j in range(len(y)):
            i = int(order[k])
            assert int(y[j]) == ds.targets[i]  # the pairing
            img = TF.pad(Image.fromarray(ds.data[i]), 4)
            img = TF.crop(img, int(dy[k]), int(dx[k]), 32, 32)
            if flips[k]:
                img = TF.hflip(img)
            expected = (TF.to_tensor(img) - mean) / std
            assert torch.allclose(x[j], expected, atol=1e-5)
            k += 1
    assert k == 60


def test_random_crop_matches_slicing_the_padded_image():
    x = torch.randint(0, 256, (6, 2, 5, 7), dtype=torch.uint8)
    dy, dx = torch.tensor([0, 1, 2, 3, 4, 2]), torch.tensor([4, 3, 2, 1, 0, 0])
    out = random_crop(x, dy, dx, 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 5, dx[i]:dx[i] + 7])


def test_the_cpu_and_gpu_crops_agree():
    form = {"images": torch.randint(0, 256, (30, 3, 6, 5), dtype=torch.uint8), "targets": torch.zeros(30),
            "crop_padding": 2, "flip": True}
    data = device_data._to_device(form, CPU)
    chosen = torch.tensor([4, 0, 29, 4, 7, 13, 2, 2])
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(5, (8,), generator=g), torch.randint(5, (8,), generator=g)
    flips = torch.randint(2, (8,), generator=g).bool()
    for f in (flips, None):
        grouped = device_data._crop_and_flip_grouped(data, chosen, dy, dx, f)
        assert torch.equal(grouped, device_data._crop_and_flip_gather(data, chosen, dy, dx, f))
        for i in range(8):
            expected = data.images[chosen[i], :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 5]
            assert torch.equal(grouped[i], expected.flip(2) if f is not None and f[i] else expected)


def test_crop_offsets_and_flips_are_uniform():
    n = 36_000
    form = {"images": torch.zeros(n, 1, 2, 2, dtype=torch.uint8), "targets": torch.zeros(n), "crop_padding": 4,
            "flip": True}
    data = device_data._to_device(form, CPU)
    _, dy, dx, flips = DeviceLoader(data, None, 100, True, 0, augment=True).epoch_draws()
    cells = torch.bincount(dy * 9 + dx, minlength=81).float()
    expected = n / 81
    chi2 = float(((cells - expected) ** 2 / expected).sum())
    assert chi2 < 130  # 80 degrees of freedom: p(chi2 > 130) < 1e-3
    assert torch.bincount(dy, minlength=9).min() > 0 and int(dy.max()) == 8
    assert abs(float(flips.float().mean()) - 0.5) < 0.015
    assert abs(float(flips[dy == 0].float().mean()) - 0.5) < 0.05  # flips independent of offsets


def test_same_seed_same_batches_other_seed_other_batches(tmp_path):
    root = _cifar_root(tmp_path)
    ds = _cifar(root, augment=True)
    data, idx = resident(ds, CPU)

    def batches(seed):
        return _epochs(DeviceLoader(data, idx, 16, True, seed, drop_last=True, augment=True), 2)

    a, b, c = batches(11), batches(11), batches(12)
    for ea, eb in zip(a, b):
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0][0], c[0][0][0])
    assert not torch.equal(a[0][0][0], a[1][0][0])  # each epoch draws anew


def test_a_restored_generator_resumes_the_same_epochs(tmp_path):
    """A checkpoint saves loader.generator at an epoch end (see running/checkpoint.py): restoring it gives the
    epochs the uninterrupted loader would have drawn, augmentation included."""
    root = _cifar_root(tmp_path)
    data, idx = resident(_cifar(root, augment=True), CPU)
    whole = DeviceLoader(data, idx, 16, True, 4, drop_last=True, augment=True)
    first = _epochs(whole, 1)
    saved = whole.generator.get_state()
    rest = _epochs(whole, 2)
    again = DeviceLoader(data, idx, 16, True, 4, drop_last=True, augment=True)
    again.generator.set_state(saved)
    _assert_same_batches(_epochs(again, 2), rest)
    assert first


def test_resident_data_is_moved_once_and_shared():
    ds = TensorDataset(torch.randn(20, 1, 2, 2), torch.arange(20))
    a, _ = resident(ds, CPU)
    b, idx = resident(Subset(ds, [3, 4]), CPU)
    assert a is b and idx.tolist() == [3, 4]


def test_auto_is_off_on_the_cpu_and_true_needs_a_tensor_form():
    from bench_harness.errors import RunFailure

    ds = TensorDataset(torch.randn(20, 1, 2, 2), torch.arange(20))
    assert device_loaders(ds, ds, make_recipe({}), 0, CPU) is None
    assert device_loaders(ds, ds, make_recipe({"data_on_device": False}), 0, CPU) is None

    class Opaque(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(1, 2, 2), 0

    with pytest.raises(RunFailure, match="no tensor form"):
        device_loaders(Opaque(), ds, make_recipe({"data_on_device": True}), 0, CPU)


class _Lying(torch.utils.data.Dataset):
    """16 examples of (3, 4, 4) whose tensor_form() says something else."""

    def __init__(self, **form):
        self.x, self.y, self.form = torch.randint(0, 256, (16, 3, 4, 4), dtype=torch.uint8), torch.arange(16) % 4, form

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return self.x[i].float() / 255, int(self.y[i])

    def tensor_form(self):
        return {"images": self.x, "targets": self.y, "crop_padding": 1, **self.form}


@pytest.mark.parametrize("form, subset, problem", [
    ({"targets": torch.arange(8)}, None, "targets of shape \\(8,\\) for 16 images"),
    ({"targets": torch.arange(16).view(16, 1)}, None, "targets of shape \\(16, 1\\)"),
    ({"targets": torch.zeros(16)}, None, "not integer class indices"),
    ({"images": torch.zeros(8, 3, 4, 4, dtype=torch.uint8), "targets": torch.arange(8)}, [12], "holds 8 images, and "
     "the data set 16"),
    ({"images": torch.zeros(16, 1, 4, 4, dtype=torch.uint8)}, None, "images of shape \\(1, 4, 4\\), and its "
     "examples \\(3, 4, 4\\)"),
    ({"crop_padding": -2}, None, "crop_padding -2"),
    ({"mean": (0.5, 0.5)}, None, "a mean of 2 values for 3 channels"),
    ({"images": torch.zeros(16, 48, dtype=torch.uint8)}, None, "not \\(N, C, H, W\\)"),
])
def test_a_tensor_form_that_does_not_describe_its_data_set_fails_the_run_before_any_indexing(form, subset, problem):
    """On CUDA an index out of bounds is a device-side assert that ends every later run of the process."""
    from bench_harness.errors import RunFailure

    ds = _Lying(**form)
    train = ds if subset is None else Subset(ds, subset)
    with pytest.raises(RunFailure, match=f"tensor form of data set _Lying .*{problem}"):
        device_loaders(train, _Lying(), make_recipe({"data_on_device": True}), 0, CPU)
    assert device_loaders(_Lying(), _Lying(), make_recipe({"data_on_device": True}), 0, CPU) is not None


def test_auto_on_cuda_asks_for_a_fraction_of_the_free_memory(monkeypatch):
    cuda = torch.device("cuda")
    ds = TensorDataset(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), torch.arange(100))  # 4,800 + 800 bytes
    free = {"bytes": 4 * 5_600}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 10**9))
    assert device_data.wanted("auto", [ds], cuda)  # 5,600 bytes <= 25 % of 22,400
    free["bytes"] -= 1
    assert not device_data.wanted("auto", [ds], cuda)
    assert not device_data.wanted(False, [ds], cuda) and device_data.wanted(True, [ds], torch.device("cpu"))
    # once held there (by an earlier run), it fits whatever memory is left: a sweep's runs take one path
    device_data._RESIDENT[(id(ds), str(cuda))] = (weakref.ref(ds), None)
    free["bytes"] = 0
    assert device_data.wanted("auto", [Subset(ds, [1, 2])], cuda)


SUITE = """
name: ondevice
grid:
  models: [conv2]
  datasets: [{{name: synthetic, params: {{num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}}}]
  sparsities: [0.8]
  seeds: [0, 1]
  pruners: [magnitude, random]
recipe: {{epochs: 2, batch_size: 32, lr: 0.05{extra}}}
"""


def test_a_run_on_device_data_equals_the_loader_run_and_keeps_its_masks(tmp_path):
    plain = execute_run(runs_of(SUITE.format(extra=""), tmp_path / "a")[0])
    run = runs_of(SUITE.format(extra=", data_on_device: true"), tmp_path / "b")[0]
    assert run.identity()["recipe"] == {"batch_size": 32, "data_on_device": True, "epochs": 2, "lr": 0.05}
    on = execute_run(run)
    assert plain["status"] == on["status"] == "ok", on.get("error")
    assert plain["data_on_device"] is False and on["data_on_device"] is True
    assert on["precision"] == "fp32" and on["channels_last"] is False and on["compiled"] is False
    assert on["achieved_sparsity"] == plain["achieved_sparsity"] == pytest.approx(0.8, abs=0.01)
    assert on["params_nonzero"] == plain["params_nonzero"]
    assert on["loss"] == pytest.approx(plain["loss"], rel=1e-4) and on["top1"] == plain["top1"]


def test_packed_runs_share_the_device_data_and_equal_runs_alone(tmp_path):
    text = SUITE.format(extra=", data_on_device: true, augment: false") + "packing: 4\n"
    alone = [execute_run(r) for r in runs_of(text, tmp_path / "alone")]
    device_data.clear_resident()
    packed = execute_packed(runs_of(text, tmp_path / "packed"))
    assert all(r["status"] == "ok" for r in alone + packed), [r.get("error") for r in alone + packed]
    assert len(device_data._RESIDENT) == 2  # one train and one test set for the four runs
    for a, p in zip(alone, packed):
        assert p["packed_runs"] == 4 and p["data_on_device"] is True
        assert p["loss"] == pytest.approx(a["loss"], rel=1e-2) and abs(p["top1"] - a["top1"]) <= 2 / 64
        assert p["params_nonzero"] == a["params_nonzero"]


def test_an_interrupted_device_data_run_resumes_to_the_same_result(tmp_path):
    import os
    import signal

    from bench_harness.running import checkpoint

    text = SUITE.format(extra=", data_on_device: true, epochs: 4").replace("epochs: 2, ", "")
    plain = execute_run(runs_of(text, tmp_path / "plain")[0])
    run = runs_of(text, tmp_path / "resumed")[0]

    def interrupt(phase, epoch, total, loss):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        execute_run(run, on_epoch=interrupt, resume=True)
    assert checkpoint.load(checkpoint.checkpoint_path(run.results_root, run.suite, run.run_id),
                           checkpoint.run_owner(run.suite, run.run_id))["epoch"] == 2
    resumed = execute_run(run, resume=True)
    assert resumed["status"] == "ok" and resumed["resumed_from_epoch"] == 2
    for key in ("top1", "loss", "achieved_sparsity", "params_nonzero"):
        assert resumed[key] == plain[key], key
