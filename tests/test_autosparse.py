"""AutoSparse: the linear-count IRP schedule, the teacher's labels and features, the predictor's masks, and the
teacher/predictor stage artifacts (reuse, concurrent production, damaged payloads)."""
import copy
import json
import multiprocessing as mp

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import bench_harness
from bench_harness.config.suite import parse_suite, validate_suite
from bench_harness.contract import masking
from bench_harness.contract.artifacts import ArtifactWarning
from bench_harness.contract.plugins import get_registry
from bench_harness.contract.pruning import make_context
from bench_harness.running.runner import execute_run
from bench_harness_plugins.autosparse import pruner as aus
from bench_harness_plugins.autosparse.predictor import build_predictor, predict
from bench_harness_plugins.imp.pruner import linear_count_keep, linear_count_levels, rewind_pruning

DATA = "{name: synthetic, params: {num_classes: 4, image_size: 8, train_size: 128, test_size: 64}}"
FAST = "{levels: 3, predictor: small_mlp, predictor_epochs: 2, predictor_batch_size: 512}"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is much faster than two on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeTrainer:
    """The training service's interface with a deterministic 'training' that respects the masks."""

    epochs = 2

    def __init__(self):
        self.masks_seen = []

    def fit(self, model, masks=None, epochs=None, start_epoch=0, **kw):
        self.masks_seen.append({n: m.clone() for n, m in (masks or {}).items()})
        with torch.no_grad():
            for i, (n, p) in enumerate(model.named_parameters()):
                p.add_(torch.sin(torch.arange(p.numel(), dtype=p.dtype) * (i + 1.7)).view_as(p))
                if masks and n in masks:
                    p.mul_(masks[n])


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 4))


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


# -- the schedule --------------------------------------------------------------------------------------------

def test_linear_count_keep_fractions_follow_the_formula():
    c, E = 0.01, 20
    keep = linear_count_keep(c, E)
    assert keep == pytest.approx([1 - (1 - c) / (E - (1 - c) * i) for i in range(E)])
    # each level removes the same number of weights: density after level i is 1 - (i+1)(1-c)/E
    assert linear_count_levels(c, E) == pytest.approx([1 - (i + 1) * (1 - c) / E for i in range(E)])
    assert linear_count_levels(c, E)[-1] == pytest.approx(c)


@pytest.mark.parametrize("prune_first", [False, True])
def test_imp_linear_count_per_level_densities(prune_first):
    model = _mlp()
    prunable = masking.prunable_parameters(model)
    total = sum(p.numel() for p in prunable.values())  # 2080
    trainer = FakeTrainer()
    c, E = 0.05, 6
    done = rewind_pruning(model, trainer, prunable, c, schedule="linear_count", levels=E, prune_first=prune_first)
    kept, expected = total, []
    for i, keep in enumerate(linear_count_keep(c, E)):
        kept = round(c * total) if i == E - 1 else kept - int((1 - keep) * kept)  # the official count
        expected.append(kept / total)
    assert done.level_densities == pytest.approx(expected, abs=1e-12)
    assert done.level_densities == pytest.approx(linear_count_levels(c, E), abs=E / total)
    assert len(trainer.masks_seen) == (E - 1 if prune_first else E)
    # the pruner: info["level_densities"] holds the achieved densities
    cls = get_registry().get("pruner", "imp")
    model = _mlp()
    ctx = make_context(model, seed=0, trainer=FakeTrainer())
    result = cls(cls.make_params({"schedule": "linear_count", "levels": E})).prune(model, 1 - c, ctx)
    assert result.info["level_densities"] == pytest.approx(expected, abs=1e-12)
    assert masking.global_density(result.masks) == pytest.approx(c, abs=0.5 / total)


def test_imp_geometric_schedule_is_unchanged_by_default():
    cls = get_registry().get("pruner", "imp")
    model = _mlp()
    result = cls(cls.Params()).prune(model, 1 - 0.64, make_context(model, seed=0, trainer=FakeTrainer()))
    assert result.info["levels"] == 2 and result.info["level_densities"] == pytest.approx([0.8, 0.64])
    model = _mlp()
    result = cls(cls.make_params({"levels": 4})).prune(model, 1 - 0.0625, make_context(model, trainer=FakeTrainer()))
    assert result.info["level_densities"] == pytest.approx([0.5, 0.25, 0.125, 0.0625])


# -- the teacher: labels and features ------------------------------------------------------------------------

class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_teacher_labels_are_the_survival_counts_and_features_are_theta0_g0(monkeypatch):
    torch.manual_seed(3)
    model = BNNet()
    with torch.no_grad():  # BN statistics that differ from a batch's: eval mode must use them
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = _batches(3)
    level_masks = []
    original = masking.topk_masks

    def spy(*a, **k):
        out = original(*a, **k)
        level_masks.append({n: m.clone() for n, m in out.items()})
        return out

    monkeypatch.setattr(masking, "topk_masks", spy)
    trainer = FakeTrainer()
    ctx = make_context(model, seed=0, trainer=trainer, batches=lambda: iter(batches))
    ctx.train_loader = batches
    params = aus.AutoSparseParams(levels=4, final_density=0.1, grad_batch_size=8)
    teacher = aus.produce_teacher(aus._api_teacher_config(params, ctx), ctx)
    monkeypatch.setattr(masking, "topk_masks", original)

    assert len(level_masks) == 4
    for n in ("conv.weight", "fc.weight"):
        counts = sum(m[n].to(torch.int16) for m in level_masks)
        assert torch.equal(teacher["survived"][n], counts)
        # nested masks: a weight with count k was kept by exactly the first k levels
        for k, m in enumerate(level_masks):
            assert torch.equal(m[n], counts > k)
        assert torch.equal(teacher["theta0"][n], init[n])
    # the levels after the first trained from the rewound initial weights (pruned ones zero)
    assert len(trainer.masks_seen) == 3
    # g0: summed CE gradient over every batch, BN in eval mode
    ref = copy.deepcopy(model).eval()  # the teacher trained a copy: the model is still at its initialization
    grads = [torch.autograd.grad(F.cross_entropy(ref(x), y), [ref.conv.weight, ref.fc.weight]) for x, y in batches]
    assert torch.allclose(teacher["grad0"]["conv.weight"], sum(g[0] for g in grads), atol=1e-6)
    assert torch.allclose(teacher["grad0"]["fc.weight"], sum(g[1] for g in grads), atol=1e-6)
    # labels: min-max scaled counts, in model order
    features, labels = aus.teacher_dataset(teacher)
    counts = torch.cat([teacher["survived"][n].reshape(-1) for n in ("conv.weight", "fc.weight")]).double()
    assert torch.allclose(labels.double(), (counts - counts.min() + 1e-7) / (counts.max() - counts.min() + 1e-7))
    assert labels.min() < 1e-6 and labels.max() == pytest.approx(1.0)
    assert torch.equal(features[:, 0], torch.cat([init["conv.weight"].reshape(-1), init["fc.weight"].reshape(-1)]))


# -- the predictor and the masks -----------------------------------------------------------------------------

class FirstFeature(nn.Module):
    """A fixed 'predictor': the score is θ₀ itself."""

    def forward(self, x):
        return x[:, :1]


def test_mask_from_a_fixed_predictor_equals_the_hand_computed_top_k():
    torch.manual_seed(0)
    predictor = build_predictor("small_mlp")
    with torch.no_grad():
        for m in predictor.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    theta = {"a": torch.randn(7, 5), "b": torch.randn(13)}
    grad = {"a": torch.randn(7, 5), "b": torch.randn(13)}
    masks, scores = aus.autosparse_masks(predictor, theta, grad, 0.3, chunk=4)
    predictor.eval()
    with torch.no_grad():  # by hand: all weights at once, sort, keep round(0.3 * 48) = 14
        x = torch.cat([torch.stack([theta[n].reshape(-1), grad[n].reshape(-1)], 1) for n in ("a", "b")])
        s = predictor(x).reshape(-1)
    keep = torch.zeros(48, dtype=torch.bool)
    keep[torch.argsort(s, descending=True)[:14]] = True
    assert torch.equal(torch.cat([masks["a"].reshape(-1), masks["b"].reshape(-1)]), keep)
    assert torch.allclose(torch.cat([scores["a"].reshape(-1), scores["b"].reshape(-1)]), s, atol=1e-6)
    # chunking does not change the prediction
    assert torch.allclose(predict(predictor, theta["a"], grad["a"], chunk=1000), scores["a"], atol=1e-6)


def test_exact_zero_scores_rank_last():
    theta = {"w": torch.tensor([-3.0, -2.0, 0.0, 1.0, -1.0, 0.0])}
    grad = {"w": torch.zeros(6)}
    masks, _ = aus.autosparse_masks(FirstFeature(), theta, grad, 4 / 6)
    # four kept: 1, -1, -2, -3 (negative scores beat exact zeros)
    assert masks["w"].tolist() == [True, True, False, True, True, False]


def test_the_teacher_is_named_by_model_dataset_and_config():
    suite = parse_suite(yaml.safe_load(f"""
name: transfer
grid:
  models: [mlp, lenet5]
  datasets: [{DATA}]
  sparsities: [0.9]
  seeds: [0, 1]
  pruners: [{{name: autosparse, params: {{teacher_model: resnet18_cifar, teacher_dataset: cifar10}}}}]
recipe: {{epochs: 1}}
"""), "transfer.yaml")
    suite = validate_suite(suite, get_registry())
    cls = get_registry().get("pruner", "autosparse")
    keys = set()
    for run in suite.runs:
        teacher, predictor = cls.stages(run.pruner_params, run.info())
        assert teacher.config["model"] == "resnet18_cifar" and teacher.config["dataset"] == "cifar10"
        assert teacher.config["seed"] == 0
        assert (teacher.name, predictor.name) == (aus.TEACHER, aus.PREDICTOR)
        keys.add((bench_harness.ArtifactStore.key(teacher.name, teacher.config),
                  bench_harness.ArtifactStore.key(predictor.name, predictor.config)))
    assert len(keys) == 1  # every model and seed shares one teacher and one predictor
    own = cls.stages(cls.make_params({}), suite.runs[0].info())[0].config
    assert own["model"] == "mlp" and own["dataset"] == "synthetic"


# -- stage artifacts in suite runs ---------------------------------------------------------------------------

def _suite(name, root, sparsities="[0.9, 0.95]", params=FAST):
    suite = parse_suite(yaml.safe_load(f"""
name: {name}
grid: {{models: [{{name: mlp, params: {{hidden: [16]}}}}], datasets: [{DATA}], sparsities: {sparsities},
       pruners: [{{name: autosparse, params: {params}}}]}}
recipe: {{epochs: 1, batch_size: 32, lr: 0.05}}
"""), f"{name}.yaml")
    return validate_suite(suite, get_registry()).with_settings(results_root=str(root))


def _records(row):
    assert row["status"] == "ok", row.get("error")
    return json.loads(row["artifacts"])


def test_a_second_run_reuses_the_artifacts(tmp_path):
    first = _suite("as_a", tmp_path)
    second = _suite("as_b", tmp_path, sparsities="[0.8]")
    rows = [execute_run(r) for r in first.runs + second.runs]
    records = [_records(r) for r in rows]
    for name in (aus.TEACHER, aus.PREDICTOR):
        assert [r[name]["produced"] for r in records] == [True, False, False]
        assert len({r[name]["sha256"] for r in records}) == 1
    infos = [json.loads(r["pruner_info"]) for r in rows]
    assert infos[0]["teacher_epochs"] == 2  # 3 levels, the first prunes |θ₀| untrained: 2 trainings of 1 epoch
    assert all(abs(r["achieved_sparsity"] - r["target_sparsity"]) < 2e-3 for r in rows)
    # the self-teacher's θ₀ is the run's own initialization
    folder = next((tmp_path / "artifacts" / aus.TEACHER).glob("*/artifact.pt"))
    teacher = torch.load(folder, weights_only=True)
    from bench_harness.running.runner import _data_and_model

    _, _, init, _ = _data_and_model(first.runs[0], get_registry(), torch.device("cpu"))
    for n, p in masking.prunable_parameters(init).items():
        assert torch.equal(teacher["theta0"][n], p.detach())


def _run_in_process(run, out):
    row = execute_run(run)
    with open(out, "a") as fh:
        fh.write(json.dumps({"status": row["status"], "error": row.get("error"), "artifacts": row["artifacts"]})
                 + "\n")


@pytest.mark.slow  # two fresh interpreters importing torch: about 100 s on a loaded 2-core machine
def test_two_concurrent_processes_produce_one_artifact(tmp_path):
    suite = _suite("as_concurrent", tmp_path)
    ctx = mp.get_context("spawn")
    out = tmp_path / "rows.jsonl"
    procs = [ctx.Process(target=_run_in_process, args=(run, out)) for run in suite.runs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0, 0]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records = [_records(r) for r in rows]
    for name in (aus.TEACHER, aus.PREDICTOR):
        assert sorted(r[name]["produced"] for r in records) == [False, True]
        assert len({r[name]["sha256"] for r in records}) == 1
    assert len(list((tmp_path / "artifacts" / aus.TEACHER).glob("*/manifest.json"))) == 1


def test_a_truncated_artifact_is_rebuilt(tmp_path):
    suite = _suite("as_damaged", tmp_path, sparsities="[0.9]")
    first = execute_run(suite.runs[0])
    _records(first)
    payload = next((tmp_path / "artifacts" / aus.PREDICTOR).glob("*/artifact.pt"))
    payload.write_bytes(payload.read_bytes()[:-100])  # truncated
    with pytest.warns(ArtifactWarning, match="damaged"):
        again = execute_run(suite.runs[0])
    records = _records(again)
    assert records[aus.PREDICTOR]["produced"] and not records[aus.TEACHER]["produced"]
    # produced again, deterministically: the same masks
    assert again["layer_density"] == first["layer_density"]
    torch.load(payload, weights_only=True)
