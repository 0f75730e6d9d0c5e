from dataclasses import dataclass, field

from bench_harness.config.suite import Component, PrunableSet, Recipe, RunSpec, Scoring
from bench_harness.identity import config_hash, non_default_fields


def _run(**kw):
    base = dict(suite="s", model=Component("resnet20"), dataset=Component("cifar10"), pruner=Component("magnitude"),
                sparsity=0.9, seed=0, recipe=Recipe(), scoring=Scoring(), prunable=PrunableSet())
    base.update(kw)
    return RunSpec(**base)


def test_frozen_run_ids():
    # These ids name result files on disk: changing them orphans every existing result. Do not update them
    # unless the identity scheme is deliberately versioned.
    assert _run().run_id == "01c708f1c2380123"
    assert _run(seed=1).run_id == "49f8173e05dd7f20"
    assert _run(recipe=Recipe(epochs=160, lr=0.1, schedule="step", milestones=(80, 120))).run_id == "ec61ad3f9c1ba523"
    assert _run(pruner=Component("magnitude", {"scope": "layerwise"}),
                pruner_defaults={"scope": "layerwise"}).run_id == "954c9c23a075ed8b"


def test_frozen_ids_of_runs_that_start_from_weights():
    # Since issue 26 the weights are part of every run that names them (at-init pruners included), a file's
    # SHA-256 and a non-default head too. Frozen like the others.
    assert _run(model=Component("resnet20", weights="torchvision:IMAGENET1K_V1")).run_id == "b353dad4df5c529d"
    assert _run(model=Component("resnet20", weights="file:w.pt"), weights_sha256="ab" * 32).run_id == "e5d6c8a10e63ef35"
    assert _run(model=Component("resnet20", weights="pretrain:mnist", head="reinit"),
                pretrain=Recipe(epochs=2)).run_id == "6b856b185f90d487"
    assert _run(pretrain=Recipe(epochs=2)).run_id == _run().run_id  # an at-init run without weights: no pretraining
    # a post-training run pretrained by the harness (its recipe, even at its defaults, is part of the id)
    assert _run(pruner=Component("pt"), pretrain=Recipe(), needs_pretrained=True).run_id == "11cf12ac119791fd"
    assert _run(pruner=Component("pt"), pretrain=Recipe(epochs=3, lr=0.2),
                needs_pretrained=True).run_id == "928995b912e4f811"


def test_defaults_do_not_enter_the_identity():
    assert _run(recipe=Recipe(epochs=10)).run_id == _run().run_id  # 10 is the default
    assert _run(ablation=None).run_id == _run().run_id
    assert "recipe" not in _run().identity()


def test_adding_a_defaulted_field_keeps_the_hash():
    @dataclass
    class V1:
        lr: float = 0.1

    @dataclass
    class V2:
        lr: float = 0.1
        warmup: int = 0
        tags: list = field(default_factory=list)

    assert config_hash({"r": non_default_fields(V1(lr=0.2))}) == config_hash({"r": non_default_fields(V2(lr=0.2))})


def test_float_noise_and_key_order_do_not_change_the_hash():
    assert config_hash({"a": 0.1 + 0.2, "b": 1}) == config_hash({"b": 1, "a": 0.3})
    assert config_hash({"a": 0.3}) != config_hash({"a": 0.31})


def test_non_default_fields_of_equal_but_differently_typed_configs_stay_apart():
    # 1 == 1.0 and they hash alike, but they canonicalise differently; the cache of frozen configs must not mix them
    import dataclasses

    from bench_harness.identity import non_default_fields

    @dataclasses.dataclass(frozen=True)
    class Config:
        lr: object = 0.1
        milestones: object = ()

    assert non_default_fields(Config(1.0)) == {"lr": 1.0}
    assert repr(non_default_fields(Config(1))) == "{'lr': 1}"
    holder = Config(milestones=[1, 2])  # unhashable inside: never cached
    assert non_default_fields(holder) == {"milestones": [1, 2]}
    holder.milestones.append(3)
    assert non_default_fields(holder) == {"milestones": [1, 2, 3]}
