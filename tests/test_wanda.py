"""Wanda (plugins/wanda/pruner.py): hand-computed scores and masks, N:M groups, the conv case, the walk, and the
masks of the official code (locuslab/wanda 8e8fc87) stored by scripts/wanda_official_fixtures.py.

The stand-ins below are what that script drives the official functions with instead of an LLM / a ViT:

- :class:`StandInLM`: what ``lib/prune.py`` ``prune_wanda`` reads of a Hugging Face LLaMA: ``model.model.layers``
  (decoder layers called as ``layer(x, attention_mask=..., position_ids=...)[0]``), ``model.config.use_cache`` /
  ``hidden_size``, ``model.seqlen``, ``model.hf_device_map``; its inputs are the hidden states (no embedding).
- :class:`StandInViT`: what ``image_classifiers/prune_utils.py`` ``prune_vit`` reads of a ViT: ``patch_embed``,
  ``cls_token``, ``pos_embed``, ``pos_drop``, ``blocks`` (called as ``blk(x)``); its inputs are flattened patches.

Each block holds the linear layers of a transformer block (attention q/k/v/o, an MLP up/down), without bias and
without normalisation. The tests never import the official code.
"""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bench_harness
from bench_harness.contract.pruning import SparsityOffTargetWarning
from bench_harness_plugins.wanda import pruner as wanda
from tests.conftest import suite_from_text

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "wanda" / "official.pt"

# -- stand-ins ------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x):
        att = torch.softmax(self.q_proj(x) @ self.k_proj(x).transpose(-1, -2) / x.shape[-1] ** 0.5, dim=-1)
        return self.o_proj(att @ self.v_proj(x))


class Mlp(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.self_attn = Attention(hidden)
        self.mlp = Mlp(hidden, inner)

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp(x)


class DecoderLayer(Block):
    def forward(self, x, attention_mask=None, position_ids=None):  # noqa: ARG002 (the LLaMA signature)
        return (super().forward(x),)


class Inner(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class StandInLM(nn.Module):
    def __init__(self, hidden: int = 16, inner: int = 32, blocks: int = 2, seqlen: int = 8) -> None:
        super().__init__()
        self.model = Inner([DecoderLayer(hidden, inner) for _ in range(blocks)])
        self.config = SimpleNamespace(use_cache=False, hidden_size=hidden)
        self.seqlen = seqlen
        self.hf_device_map: dict = {}

    def forward(self, x):
        for layer in self.model.layers:
            x = layer(x, attention_mask=None, position_ids=None)[0]
        return x


class StandInViT(nn.Module):
    def __init__(self, patch: int = 12, hidden: int = 16, inner: int = 32, blocks: int = 2, tokens: int = 6) -> None:
        super().__init__()
        self.patch_embed = nn.Linear(patch, hidden)
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, hidden) * 0.1)
        self.pos_drop = nn.Identity()
        self.blocks = nn.ModuleList([Block(hidden, inner) for _ in range(blocks)])

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return x[:, 0]


def block_weights(model: nn.Module, container: str) -> list[str]:
    """The weight names of the linear layers inside the blocks (what the official code prunes)."""
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(container)]


# -- helpers --------------------------------------------------------------------------------------------------------

def _prune(model, sparsity, data, prunable=None, **params):
    return bench_harness.prune(model, "wanda", sparsity, data=data, prunable=prunable, return_result=True, **params)


def _official():
    return torch.load(FIXTURE, weights_only=False)


# -- hand-computed --------------------------------------------------------------------------------------------------

W_HAND = [[1.0, 0.8, 0.6], [4.0, 1.5, -1.0]]
X_HAND = [[1.0, 0.0, 2.0], [1.0, 1.0, 0.0]]  # column norms over the two inputs: sqrt(2), 1, 2
X_T = torch.tensor(X_HAND, dtype=torch.float64)


def _hand_layer():
    layer = nn.Linear(3, 2, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W_HAND, dtype=torch.float64))
    return layer


def test_scores_of_a_2x3_layer_by_hand():
    """|W_ij| · ‖X_j‖, ‖X_j‖ = sqrt(Σ x_j² / examples): row 0 [1·√2, 0.8·1, 0.6·2], row 1 [4·√2, 1.5·1, 1·2] (/√2)."""
    layer = _hand_layer()
    sums = wanda.input_square_sums(layer, X_T)
    assert sums.tolist() == [2.0, 1.0, 4.0]
    scores = wanda.wanda_scores(layer.weight, wanda.row_norms(layer, sums, 2)) * 2 ** 0.5
    expected = torch.tensor([[2 ** 0.5, 0.8, 1.2], [4 * 2 ** 0.5, 1.5, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(scores, expected)


def test_mask_of_a_2x3_layer_by_hand_per_output_row():
    """Sparsity 1/3: each row prunes its lowest score: column 1 in both rows (magnitude would prune column 2)."""
    model = nn.Sequential(_hand_layer())
    masks = _prune(model, 1 / 3, X_T).masks
    assert masks["0.weight"].tolist() == [[True, False, True], [True, False, True]]
    assert model[0].weight.tolist() == [[1.0, 0.0, 0.6], [4.0, 0.0, -1.0]]


def test_mask_of_a_2x3_layer_by_hand_rounding_and_scopes():
    """Sparsity 1/2 (3 of 6): int(3 · 0.5) = 1 per row; 'floor' stops there (the official count), 'spread' prunes
    the third weight in row 0, whose next score (0.6·2 = 1.2) is below row 1's (1·2 = 2). Per layer: the three
    lowest scores are all in row 0."""
    x = X_T
    with pytest.warns(SparsityOffTargetWarning):  # 2 of 6 pruned: the official count falls short of the target
        floor = _prune(nn.Sequential(_hand_layer()), 0.5, x, row_rounding="floor").masks["0.weight"]
    assert floor.tolist() == [[True, False, True], [True, False, True]]
    spread = _prune(nn.Sequential(_hand_layer()), 0.5, x).masks["0.weight"]
    assert spread.tolist() == [[True, False, False], [True, False, True]]
    layer = _prune(nn.Sequential(_hand_layer()), 0.5, x, scope="layer").masks["0.weight"]
    assert layer.tolist() == [[False, False, False], [True, True, True]]
    per_input = _prune(nn.Sequential(_hand_layer()), 0.5, x, scope="input").masks["0.weight"]
    assert per_input.tolist() == [[False, False, False], [True, True, True]]  # each column drops its row-0 entry


def test_row_keep_spreads_the_remainder_and_gives_back_an_overshoot():
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.5, 5.0, 0.7], [9.0, 8.0, 7.0]], dtype=torch.float64)
    # 4 of 9 pruned: 1 per row, then the row whose second-lowest score is lowest (row 1: 0.7)
    assert wanda.row_keep(scores, 4 / 9).tolist() == [[False, True, True], [False, True, False],
                                                        [True, True, False]]
    assert wanda.row_keep(scores, 4 / 9, "floor").sum() == 6
    # int(3 · 0.29) = 0 but round(0.29 · 9) = 3 pruned: one per row
    assert int((~wanda.row_keep(scores, 0.29)).sum()) == 3


def test_the_variant_by_hand():
    """Row [1, 2, 3, 4] (sum 10): alpha 0.4 admits the cumulative sums 1, 3 (<= 4): scores <= 2 pruned, sparsity
    0.5. For the target 0.25 the bisection halves alpha to 0.2: cumulative sums <= 2: only the score 1 pruned."""
    row = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    keep, alpha = wanda.variant_keep(row, 0.5)
    assert keep.tolist() == [[False, False, True, True]] and alpha == 0.4
    keep, alpha = wanda.variant_keep(row, 0.25)
    assert keep.tolist() == [[False, True, True, True]] and alpha == 0.2
    with pytest.raises(ValueError, match="per-row"):
        _prune(nn.Sequential(nn.Linear(8, 4)), 0.5, torch.randn(4, 8), variant=True, scope="layer")


# -- N:M ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nm", ["2:4", "4:8", "1:4"])
def test_nm_keeps_exactly_n_of_every_m_consecutive_inputs_of_a_row(nm):
    n, m = (int(v) for v in nm.split(":"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 6))
    x = torch.randn(10, 16, 4, 4) * torch.exp(torch.randn(16))[:, None, None]
    result = _prune(model, 1 - n / m, x, nm=nm)
    conv = result.masks["0.weight"].permute(0, 2, 3, 1)  # (out, kh, kw, in): groups of M input channels
    assert (conv.reshape(8, 3, 3, 16 // m, m).sum(-1) == n).all()
    linear = result.masks["3.weight"]
    assert (linear.reshape(6, -1, m).sum(-1) == n).all()
    assert abs(result.achieved_sparsity - (1 - n / m)) < 1e-9
    # the kept N are the N highest scores of their group
    sums = wanda.input_square_sums(model[3], torch.relu(model[0](x)).flatten(1))
    scores = wanda.wanda_scores(model[3].weight, wanda.row_norms(model[3], sums, 10)).reshape(6, -1, m)
    kept = linear.reshape(6, -1, m)
    assert (scores.masked_fill(~kept, float("inf")).amin(-1) > scores.masked_fill(kept, -1.0).amax(-1)).all()


def test_nm_granularity_and_a_sparsity_that_does_not_match():
    assert wanda.Wanda.granularity_of(wanda.Params(nm="2:4")) == bench_harness.Granularity.N_M
    assert wanda.Wanda.granularity_of(wanda.Params()) == bench_harness.Granularity.UNSTRUCTURED
    with pytest.raises(ValueError, match="removes 0.5000"):
        _prune(nn.Sequential(nn.Linear(8, 4)), 0.7, torch.randn(4, 8), nm="2:4")
    with pytest.raises(ValueError, match="per row"):
        _prune(nn.Sequential(nn.Linear(8, 4)), 0.5, torch.randn(4, 8), nm="2:4", scope="layer")


# -- the conv case (ours) -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2, padding=2, dilation=2),
                                    dict(padding=1, groups=2), dict(padding="same"),
                                    dict(padding=1, padding_mode="reflect")])
def test_conv_norms_are_the_column_norms_of_the_unfolded_input(kwargs):
    """‖X_j‖² of a conv = Σ over examples and output positions of column j = (in_channel, kh, kw) of im2col."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, **kwargs).double()
    x = torch.randn(5, 4, 7, 7, dtype=torch.float64)
    sums = wanda.input_square_sums(conv, x)
    if conv.padding_mode != "zeros":
        padded = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        cols = F.unfold(padded, 3, dilation=conv.dilation, stride=conv.stride)
    else:
        pad = 1 if conv.padding == "same" else conv.padding
        cols = F.unfold(x, 3, dilation=conv.dilation, padding=pad, stride=conv.stride)
    expected = (cols ** 2).sum(dim=(0, 2)).reshape(4, 3, 3)
    torch.testing.assert_close(sums, expected)
    # im2col reproduces the conv: the columns are what the weight multiplies
    out = (conv.weight.reshape(conv.groups, 6 // conv.groups, -1) @ cols.reshape(5, conv.groups, -1, cols.shape[-1])
           ).reshape(5, 6, -1) + conv.bias[None, :, None]
    torch.testing.assert_close(out.reshape(conv(x).shape), conv(x))
    norms = wanda.row_norms(conv, sums, 5)
    assert norms.shape == conv.weight.shape
    if conv.groups == 2:  # rows 0-2 read channels 0-1, rows 3-5 channels 2-3
        torch.testing.assert_close(norms[4], (expected[2:] / 5).sqrt())


def test_conv1d_is_a_conv_of_height_one():
    torch.manual_seed(0)
    c1 = nn.Conv1d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 9, dtype=torch.float64)
    cols = F.unfold(x[:, :, None, :], (1, 3), padding=(0, 1))
    torch.testing.assert_close(wanda.input_square_sums(c1, x), (cols ** 2).sum(dim=(0, 2)).reshape(3, 3))


# -- the walk -------------------------------------------------------------------------------------------------------

def _bn_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                        nn.Conv2d(8, 8, 3, padding=1)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_blocks_are_the_outermost_items_of_sequential_containers():
    model = _bn_net()
    assert wanda.block_of(model, "3.0") == "3" and wanda.block_of(model, "3.3") == "3"
    assert wanda.block_of(model, "0") == "0"
    lm = StandInLM()
    assert wanda.block_of(lm, "model.layers.1.self_attn.q_proj") == "model.layers.1"
    assert wanda.block_of(nn.Linear(2, 2), "") == ""


def test_weights_untouched_batchnorm_in_eval_mode_and_the_training_flag_restored():
    model = _bn_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 3, 8, 8)
    result = _prune(model, 0.6, x)
    assert model.training
    for k, v in model.state_dict().items():
        expected = before[k] * result.masks[k] if k in result.masks else before[k]
        assert torch.equal(v, expected), k  # masked weights only; BN running statistics not updated
    assert result.info["steps"] == 3  # 0, the block 3 (three convs together), 6
    assert abs(result.achieved_sparsity - 0.6) < 1e-3


def test_sequential_feeds_each_block_the_pruned_network():
    """On the block's own input the score equals the dense-network score for the first block and not later; and
    'sequential' keeps the block's layers dense while they are scored, 'sequential_layers' does not."""
    model = _bn_net()
    x = torch.randn(12, 3, 8, 8)
    dense = _prune(copy.deepcopy(model), 0.7, x, calibration="dense").masks
    seq = _prune(copy.deepcopy(model), 0.7, x).masks
    per_layer = _prune(copy.deepcopy(model), 0.7, x, calibration="sequential_layers").masks
    assert torch.equal(dense["0.weight"], seq["0.weight"]) and torch.equal(seq["0.weight"], per_layer["0.weight"])
    assert not torch.equal(dense["3.0.weight"], seq["3.0.weight"])  # its input went through the pruned conv 0
    assert torch.equal(seq["3.0.weight"], per_layer["3.0.weight"])  # the first layer of the block: same inputs
    assert not torch.equal(seq["3.3.weight"], per_layer["3.3.weight"])  # inside the block: dense vs pruned 3.0
    # by hand: the mask of 3.3 in 'sequential' from its inputs in the network with conv 0 pruned, block 3 dense
    pruned0 = copy.deepcopy(model).eval()
    with torch.no_grad():
        pruned0[0].weight.mul_(seq["0.weight"])
        inp = pruned0[3][:3](pruned0[:3](x))
    sums = wanda.input_square_sums(pruned0[3][3], inp)
    scores = wanda.wanda_scores(model[3][3].weight, wanda.row_norms(model[3][3], sums, 12))
    assert torch.equal(wanda.row_keep(scores.reshape(8, -1), 0.7).reshape(8, 8, 3, 3), seq["3.3.weight"])


def test_scope_global_needs_dense_calibration_and_ranks_all_layers():
    model = _bn_net()
    x = torch.randn(6, 3, 8, 8)
    with pytest.raises(ValueError, match="calibration 'dense'"):
        _prune(copy.deepcopy(model), 0.5, x, scope="global")
    result = _prune(model, 0.5, x, scope="global", calibration="dense")
    densities = [float(m.float().mean()) for m in result.masks.values()]
    assert abs(result.achieved_sparsity - 0.5) < 1e-3 and max(densities) - min(densities) > 0.05


def test_parameters_of_other_layers_fall_back_to_magnitude():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(5, 4)
    result = _prune(model, 0.5, x, prunable=["0.weight", "0.bias", "2.weight"])
    assert result.info["magnitude_only"] == ["0.bias"]
    assert int(result.masks["0.bias"].sum()) == 3


def test_deterministic_and_independent_of_batching():
    model = _bn_net()
    x = torch.randn(12, 3, 8, 8, dtype=torch.float64)
    model = model.double()
    one = _prune(copy.deepcopy(model), 0.8, x).masks
    batched = _prune(copy.deepcopy(model), 0.8, [(x[:5], torch.zeros(5)), (x[5:], torch.zeros(7))]).masks
    assert all(torch.equal(one[n], batched[n]) for n in one)


def test_check_plugin_conformance():
    from bench_harness.conformance import check_pruner

    checks = check_pruner(wanda.Wanda, wanda.Wanda.make_params({}), sparsities=(0.5, 0.9))
    failed = [(c.name, c.detail) for c in checks if not c.passed]
    assert not failed, failed


def test_a_suite_prunes_a_harness_pretrained_resnet(tmp_path):
    from bench_harness.contract.plugins import get_registry
    from bench_harness.running.runner import execute_run

    text = """
name: wanda_small
grid:
  models: [{name: resnet20, params: {width: 4}}]
  datasets: [{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 64, test_size: 32}}]
  sparsities: [0.5]
  pruners:
    - wanda
    - {name: wanda, params: {nm: "2:4"}}
    - {name: wanda, params: {scope: global, calibration: dense}}
prunable: {exclude_first: true}  # 3 input channels: no whole group of 4
recipe: {epochs: 0, batch_size: 32}
pretrain: {epochs: 1, batch_size: 32, lr: 0.05}
scoring: {examples: 32}
"""
    registry = get_registry()
    suite = suite_from_text(text, tmp_path, registry, "wanda.yaml")
    rows = [execute_run(run, registry) for run in suite.runs]
    for row in rows:
        assert row["status"] == "ok", row.get("error")
        assert row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3) and row["epochs_trained"] == 0
        assert row["pretrained_source"] == "pretrain"
    assert sorted(row["granularity"] for row in rows) == ["n:m", "unstructured", "unstructured"]


# -- the official code (fixtures of scripts/wanda_official_fixtures.py) ---------------------------------------------

LM_PARAMS = {"unstructured_0.5": {}, "unstructured_0.3": {"row_rounding": "floor"}, "nm_2_4": {"nm": "2:4"},
             "nm_4_8": {"nm": "4:8"}, "variant_0.5": {"variant": True}, "variant_0.7": {"variant": True}}


def _fixture_model(part, dtype):
    data = _official()[part]
    model = (StandInLM() if part == "lm" else StandInViT())
    model.load_state_dict(data["state_dict"])
    return model.to(dtype), data["inputs"].to(dtype), data


@pytest.mark.filterwarnings("ignore:pruner 'wanda' reached sparsity")  # the official floor count (0.3 case)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(LM_PARAMS))
def test_masks_match_the_official_prune_wanda(case, dtype):
    """lib/prune.py prune_wanda (block by block, each decoder layer fed the pruned previous one): mask for mask, in
    float32 (the official arithmetic) and with the model and inputs in float64."""
    model, x, data = _fixture_model("lm", dtype)
    official = data["cases"][case]
    masks = _prune(model, official["sparsity"], x, prunable=data["names"], **LM_PARAMS[case]).masks
    for n in data["names"]:
        assert torch.equal(masks[n], official["masks"][n]), n


def test_the_official_fixture_tells_the_walks_apart():
    """The fixture would catch a walk on the dense network or layer by layer, and magnitude pruning."""
    official = _official()["lm"]["cases"]["unstructured_0.5"]["masks"]
    for params in ({"calibration": "dense"}, {"calibration": "sequential_layers"}):
        model, x, data = _fixture_model("lm", torch.float64)
        masks = _prune(model, 0.5, x, prunable=data["names"], **params).masks
        assert any(not torch.equal(masks[n], official[n]) for n in data["names"]), params
    model, _, data = _fixture_model("lm", torch.float64)
    params = dict(model.named_parameters())
    magnitude = {n: wanda.row_keep(params[n].detach().abs(), 0.5) for n in data["names"]}
    assert sum(int((magnitude[n] != official[n]).sum()) for n in data["names"]) > 50


def test_spread_rounding_prunes_the_official_floor_and_then_the_remainder():
    """In the first block (same inputs): the official floor's pruned weights, then at most one more per row up to
    the target count. (Later blocks see a network pruned a little more, so their scores differ.)"""
    model, x, data = _fixture_model("lm", torch.float64)
    official = data["cases"]["unstructured_0.3"]["masks"]
    with pytest.warns(SparsityOffTargetWarning):
        _prune(copy.deepcopy(model), 0.3, x, prunable=data["names"], row_rounding="floor")
    masks = _prune(model, 0.3, x, prunable=data["names"]).masks
    for n in [n for n in data["names"] if n.startswith("model.layers.0.")]:
        assert not (masks[n] & ~official[n]).any()  # every weight the official code pruned is pruned
        extra = int((official[n] & ~masks[n]).sum())
        size = masks[n].numel()
        assert extra == size - round(0.7 * size) - int((~official[n]).sum())
        assert ((official[n] & ~masks[n]).sum(1) <= 1).all()  # at most one more per row


@pytest.mark.filterwarnings("ignore:pruner 'wanda' reached sparsity")  # the official floor count (0.7 case)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["row_0.5", "row_0.7"])
def test_masks_match_the_official_image_classifier_code_with_dense_calibration(case, dtype):
    """image_classifiers/prune_utils.py prune_vit (row granularity): statistics of the dense network."""
    model, x, data = _fixture_model("vit", dtype)
    official = data["cases"][case]
    masks = _prune(model, official["sparsity"], x, prunable=data["names"], calibration="dense",
                   row_rounding="floor").masks
    for n in data["names"]:
        assert torch.equal(masks[n], official["masks"][n]), n
