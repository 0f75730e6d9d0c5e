"""Precision, channels_last and compile (recipe options of the training step), on the CPU."""
import pytest
import torch
from torch import nn

from bench_harness.api import make_recipe
from bench_harness.contract import masking
from bench_harness.identity import non_default_fields
from bench_harness.running import step_options as so
from bench_harness.running.training import train

CPU = torch.device("cpu")


class Probe(nn.Module):
    """A small conv net that records the autocast state and the input layout of its forward passes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.seen = []

    def forward(self, x):
        if not torch.compiler.is_compiling():
            self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                              x.is_contiguous(memory_format=torch.channels_last)))
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _batches(n=4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def _trained(recipe_values, masks=False):
    torch.manual_seed(0)
    model = Probe()
    m = None
    if masks:
        m = masking.topk_masks({n: p.detach().abs() for n, p in masking.prunable_parameters(model).items()}, 0.5)
    train(model, _batches(), make_recipe({"epochs": 2, "lr": 0.05, **recipe_values}), CPU, masks=m)
    return model, m


def test_defaults_are_todays_path_and_not_part_of_the_identity():
    recipe = make_recipe({})
    assert non_default_fields(recipe) == {}
    assert so.step_options(recipe, CPU) == so.StepOptions("fp32", False, False)
    # mixed_precision (fp16) and fp16 are ignored off CUDA, as mixed_precision always was
    assert so.step_options(make_recipe({"mixed_precision": True}), CPU).precision == "fp32"
    assert so.step_options(make_recipe({"precision": "fp16"}), CPU).precision == "fp32"
    cuda = torch.device("cuda")
    fp16 = so.step_options(make_recipe({"mixed_precision": True}), cuda)
    assert fp16.precision == "fp16" and fp16.scaled and fp16.autocast_dtype == torch.float16
    bf16 = so.step_options(make_recipe({"precision": "bf16"}), cuda)
    assert not bf16.scaled and bf16.autocast_dtype == torch.bfloat16


def test_mixed_precision_contradicting_precision_is_refused():
    from bench_harness.config.suite import Recipe, SuiteError, build_dataclass

    with pytest.raises(SuiteError, match="mixed_precision") as refused:
        build_dataclass(Recipe, {"mixed_precision": True, "precision": "bf16"}, "s.yaml", "recipe")
    # the section and the dataclass's own sentence, not "recipe.: Value error, ... (got {the whole recipe})"
    assert str(refused.value) == ("s.yaml: recipe: mixed_precision: true means precision fp16, not 'bf16': drop "
                                  "mixed_precision or set precision: fp16")
    from bench_harness.api import make_recipe

    with pytest.raises(ValueError) as api_refused:
        make_recipe({"mixed_precision": True, "precision": "bf16"})
    assert str(api_refused.value) == str(refused.value).removeprefix("s.yaml: ")
    assert build_dataclass(Recipe, {"mixed_precision": True, "precision": "fp16"}, "s.yaml", "recipe")


def test_fp32_trains_without_autocast():
    model, _ = _trained({})
    assert model.seen and not any(enabled for enabled, _, _ in model.seen)


def test_bf16_autocasts_on_the_cpu_and_trains():
    model, _ = _trained({"precision": "bf16"})
    train_calls = model.seen
    assert train_calls and all(enabled and dtype == torch.bfloat16 for enabled, dtype, _ in train_calls)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_channels_last_changes_the_layout_not_the_result():
    plain, _ = _trained({})
    last, _ = _trained({"channels_last": True})
    assert last.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(cl for _, _, cl in last.seen) and not any(cl for _, _, cl in plain.seen)
    for a, b in zip(plain.parameters(), last.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.integration
def test_compile_trains_the_same_and_keeps_masks(monkeypatch):
    monkeypatch.setattr(so, "COMPILE_BACKEND", "aot_eager")  # the compiled graph without a C++ toolchain
    torch._dynamo.reset()
    plain, masks = _trained({}, masks=True)
    compiled, _ = _trained({"compile": True}, masks=True)
    assert not compiled.seen  # the forward ran as a compiled graph
    for name, p in compiled.named_parameters():
        if name in masks:
            assert torch.all(p[masks[name] == 0] == 0)
    for a, b in zip(plain.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    torch._dynamo.reset()


def test_the_row_records_what_was_applied(tmp_path):
    from bench_harness.running.runner import execute_run
    from tests.conftest import runs_of

    text = """
name: options
grid:
  models: [conv2]
  datasets: [{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 64, test_size: 32}}]
  sparsities: [0.5]
  pruners: [magnitude]
recipe: {epochs: 1, batch_size: 32, precision: bf16, channels_last: true}
"""
    row = execute_run(runs_of(text, tmp_path)[0])
    assert row["status"] == "ok", row.get("error")
    assert (row["precision"], row["channels_last"], row["compiled"], row["data_on_device"]) == ("bf16", True, False,
                                                                                                 False)
    assert row["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
