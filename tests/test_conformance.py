"""The conformance kit's stand-ins, its report of checks not run, its progress and its time limit."""
from dataclasses import dataclass

import pytest
import torch

from bench_harness.conformance import check_pruner_in_child, kit_params, run_kit
from bench_harness.conformance.checks import CaseDone, Check, NotRun, check_names
from bench_harness.conformance.kit import Report
from bench_harness.conformance.output import report_lines
from bench_harness.contract import masking
from bench_harness.contract.plugins import Registry, get_registry
from bench_harness.contract.pruner import Pruner, Regime, param
from tests import contract_plugins

ONE_CASE = dict(models=("mlp",), sparsities=(0.5,))


def _reasons(report):
    return {n.name: n.reason for n in report.not_run}


def test_every_check_of_a_case_runs_or_says_why_not():
    report = run_kit(get_registry().get("pruner", "magnitude"), **ONE_CASE)
    assert not report.failed
    ran = {c.name for c in report.checks}
    assert ran | set(_reasons(report)) == set(check_names(get_registry().get("pruner", "magnitude")))
    assert not ran & set(_reasons(report))
    assert _reasons(report) == {
        "stage artifacts produced once, then reused": "the pruner uses no stage artifacts",
        "resumes after an interruption with the same masks": "the pruner trains fewer than 2 epochs through "
                                                               "ctx.trainer"}


def test_a_dense_reference_is_not_checked_for_sparsity():
    report = run_kit(get_registry().get("pruner", "dense"), **ONE_CASE)
    assert not report.failed
    reasons = _reasons(report)
    assert reasons["reaches the target sparsity (exact)"] == "the pruner ignores the sparsity (a dense reference)"
    assert reasons["keeps some weights (not every layer collapsed)"].startswith("the pruner ignores the sparsity")


def test_a_failing_pruner_leaves_its_other_checks_not_run():
    class Broken(Pruner):
        name = "broken"

        def prune(self, model, sparsity, ctx):
            raise RuntimeError("no masks today")

    report = run_kit(Broken, **ONE_CASE)
    assert [(c.name, c.passed, c.detail) for c in report.checks] == [
        ("runs without error", False, "RuntimeError: no masks today")]
    assert set(_reasons(report).values()) == {"the pruner failed (runs without error)"}
    assert len(report.not_run) == len(check_names(Broken)) - 1


class _SeesPretraining(Pruner):
    """A post-training pruner that records what it was given."""

    name = "sees_pretraining"
    regime = Regime.POST_TRAINING
    seen: list = []

    def prune(self, model, sparsity, ctx):
        first = next(iter(ctx.prunable.values()))
        _SeesPretraining.seen.append((ctx.pretrained, first.detach().clone()))
        return masking.topk_masks({n: p.detach().abs() for n, p in ctx.prunable.items()}, 1.0 - sparsity)


def test_a_pruner_of_trained_models_gets_the_pretraining_stand_in():
    from bench_harness.conformance.models import MODELS

    _SeesPretraining.seen.clear()
    report = run_kit(_SeesPretraining, **ONE_CASE)
    assert not report.failed
    assert any(line.startswith("pretraining:") for line in report.standins)
    (pretrained, weights), (again, weights_again) = _SeesPretraining.seen
    torch.manual_seed(0)
    initial = next(iter(MODELS["mlp"]().parameters())).detach()
    assert pretrained and again and torch.equal(weights, weights_again) and not torch.equal(weights, initial)
    magnitude = run_kit(get_registry().get("pruner", "magnitude"), **ONE_CASE)
    assert not any(line.startswith("pretraining:") for line in magnitude.standins)


def test_stage_artifacts_are_produced_once_per_config_over_all_cases(monkeypatch):
    produced = []
    original = contract_plugins._produce_teacher

    def counting(ctx):
        produced.append(tuple(p.shape for p in ctx.prunable.values()))
        return original(ctx)

    monkeypatch.setattr(contract_plugins, "_produce_teacher", counting)
    cls = Registry(extra_plugins=[("contract", contract_plugins)]).get("pruner", "teacher_scores")
    report = run_kit(cls, models=("mlp", "conv_bn"), sparsities=(0.5, 0.9))
    assert not report.failed, report.failed
    assert len(produced) == 2  # one teacher per model (its config names the shapes), shared by both sparsities
    assert [c.passed for c in report.checks if c.name == "stage artifacts produced once, then reused"] == [True] * 4
    assert set(_reasons(report)) == {"resumes after an interruption with the same masks"}
    assert "besides producing its stage artifacts" in _reasons(report)["resumes after an interruption with the "
                                                                       "same masks"]


@dataclass
class _Rounds:
    rounds: int = param(100, "rounds")
    scale: float = param(1.0, "scale")


class _Expensive(Pruner):
    name = "expensive"
    Params = _Rounds
    check_params = {"rounds": 3}
    seen: list = []

    def prune(self, model, sparsity, ctx):
        _Expensive.seen.append(self.params)
        return masking.topk_masks({n: p.detach().abs() for n, p in ctx.prunable.items()}, 1.0 - sparsity)


def test_the_kit_runs_a_pruner_with_its_check_params_under_the_given_ones():
    assert kit_params(_Expensive) == _Rounds(rounds=3)
    assert kit_params(_Expensive, {"scale": 2.0}) == _Rounds(rounds=3, scale=2.0)
    assert kit_params(_Expensive, {"rounds": 7}) == _Rounds(rounds=7)
    with pytest.raises(ValueError, match="no parameter 'round'"):
        kit_params(_Expensive, {"round": 7})
    _Expensive.seen.clear()
    report = run_kit(_Expensive, given={"scale": 2.0}, **ONE_CASE)
    assert _Expensive.seen == [_Rounds(rounds=3, scale=2.0)] * 2
    assert "hyperparameters: rounds=3 (check_params), scale=2.0, the others default" in report.standins
    _Expensive.seen.clear()
    run_kit(_Expensive, _Rounds(rounds=50), **ONE_CASE)  # explicit parameters are used as they are
    assert _Expensive.seen == [_Rounds(rounds=50)] * 2


@pytest.mark.integration
def test_in_a_child_process_every_record_arrives_as_it_is_made():
    events = []
    report = check_pruner_in_child("magnitude", listener=events.append)
    assert not report.failed and not report.stopped
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "Step" and kinds[-1] == "CaseDone" and kinds.count("CaseDone") == 6
    assert [e for e in events if isinstance(e, Check)] == report.checks
    assert [e for e in events if isinstance(e, NotRun)] == report.not_run
    assert len(report.checks) + len(report.not_run) == 6 * len(check_names(get_registry().get("pruner", "magnitude")))


def test_the_time_limit_ends_the_kit_and_reports_what_it_did_not_reach():
    events = []
    report = check_pruner_in_child("magnitude", timeout_s=0.2, listener=events.append)  # before the first case
    assert report.stopped == "the kit's time limit of 0.2 s ran out"
    assert report.checks == [] and len(report.not_run) == 6 * 11
    assert {n.reason for n in report.not_run} == {report.stopped}
    assert events == report.not_run
    lines = report_lines(report)
    assert lines[-3:] == ["NOT RUN  66 checks of 6 cases that the kit did not finish",
                          "STOPPED  the kit's time limit of 0.2 s ran out",
                          f"magnitude: 0/0 checks passed, 66 not run, in {report.seconds:.1f} s"]


def test_the_report_lists_failures_then_checks_not_run_by_reason():
    report = Report("p", checks=[Check("mlp", 0.5, "a", True), Check("mlp", 0.5, "b", False, "why"),
                                 Check("mlp", 0.9, "a", True)],
                    not_run=[NotRun("mlp", 0.5, "c", "no stages"), NotRun("mlp", 0.9, "c", "no stages")],
                    cases=[CaseDone("mlp", 0.5, 1.0), CaseDone("mlp", 0.9, 1.0)], seconds=2.0)
    assert report_lines(report) == ["FAIL  mlp       sparsity=0.5   b: why",
                                    "NOT RUN  c (2 of 2 cases): no stages",
                                    "p: 2/3 checks passed, 2 not run, in 2.0 s"]
    assert report_lines(report, verbose=True)[:2] == ["PASS  mlp       sparsity=0.5   a",
                                                      "FAIL  mlp       sparsity=0.5   b: why"]
