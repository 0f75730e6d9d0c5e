"""The result schema: one row per run, versioned, its columns documented here and only here.

Schema version 3 columns (name: type — meaning). Version 2 (contract v2) added ``sparsity_kind``,
``sparsity_bin``, ``train_from_epoch``, ``pretrained_source``, ``pretrained_sha256``, ``artifacts``,
``model_bits``, ``compression_ratio``, ``num_classes``, ``packed_runs``, ``warnings`` and the SLURM job columns;
version-1 shards read as version 2 with those columns null (and ``sparsity_bin`` = target).
Version 3 added ``granularity`` (the masks' sparsity pattern, stated by the pruner for the run's parameters) and
``data_on_device``, ``precision``, ``channels_last`` and ``compiled`` (how the run trained, see docs/gpu.md); older
shards read with them null.
Bump ``SCHEMA_VERSION`` and say what changed here whenever a column is added, renamed or changes meaning.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3

# (name, arrow type, meaning). The module docstring is completed from this table.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    # identifiers
    ("schema_version", pa.int32(), "version of this schema"),
    ("run_id", pa.string(), "stable hash of the run's canonical configuration"),
    ("suite", pa.string(), "suite name"),
    ("pruner", pa.string(), "pruner name"),
    ("pruner_version", pa.string(), "the pruner class's declared version"),
    ("pruner_distribution", pa.string(), "distribution (package) that registered the pruner, with its version"),
    ("pruner_params", pa.string(), "pruner hyperparameters that differ from their defaults, JSON"),
    ("ablation", pa.string(), "sanity ablation applied after pruning (null: none)"),
    ("regime", pa.string(), "at_init | post_training | mask_learning | iterative | none"),
    ("model", pa.string(), "model name"),
    ("model_params", pa.string(), "model parameters, JSON"),
    ("dataset", pa.string(), "data set name"),
    ("num_classes", pa.int64(), "number of classes of the data set (chance accuracy = 1 / num_classes)"),
    ("seed", pa.int64(), "seed of the run"),
    ("target_sparsity", pa.float64(), "requested fraction of prunable weights removed"),
    ("sparsity_kind", pa.string(), "exact | target | learned: how the pruner's sparsity relates to the target"),
    ("granularity", pa.string(), "unstructured | n:m: the sparsity pattern of the run's masks, as the pruner states "
                                 "it for the run's parameters (e.g. n:m for SNOWS with nm: '2:4'; null: failed "
                                 "before pruning)"),
    ("sparsity_bin", pa.float64(), "the sparsity runs are grouped and compared by: the target, or for learned "
                                   "sparsity the achieved sparsity binned (see masking.sparsity_bin)"),
    ("config", pa.string(), "the canonical configuration hashed into run_id, JSON"),
    # outcome
    ("status", pa.string(), "ok | failed"),
    ("error", pa.string(), "error message of a failed run"),
    ("traceback", pa.string(), "traceback of a failed run"),
    # accuracy
    ("top1", pa.float64(), "test top-1 accuracy after training (fraction)"),
    ("top5", pa.float64(), "test top-5 accuracy after training (fraction)"),
    ("loss", pa.float64(), "test cross-entropy after training"),
    ("top1_before_training", pa.float64(), "test top-1 right after pruning, before training"),
    ("top5_before_training", pa.float64(), "test top-5 right after pruning, before training"),
    ("loss_before_training", pa.float64(), "test loss right after pruning, before training"),
    ("top1_pretrained", pa.float64(), "test top-1 of the pretrained dense model (post-training regime)"),
    ("epochs_trained", pa.int64(), "epochs of training after pruning"),
    ("train_from_epoch", pa.int64(), "schedule epoch training after pruning started from (k when rewinding)"),
    ("pretrained_source", pa.string(), "where the pretrained weights came from: pretrain (the harness's own), "
                                       "file:..., torchvision:..., timm:... (null: not pretrained)"),
    ("pretrained_sha256", pa.string(), "SHA-256 of the pretrained weights: of the file, or for the harness's own "
                                       "pretraining of the state dict's names and tensors (identical weights, "
                                       "identical digest; before issue 26: of the artifact file)"),
    ("artifacts", pa.string(), "stage artifacts the run used, JSON {name: {key, sha256, size, produced}}"),
    ("warnings", pa.string(), "warnings emitted during the run, JSON list of 'Category: message'"),
    ("resumed_from_epoch", pa.int64(), "the run was interrupted (preemption, time limit) and resumed from this "
                                       "epoch's checkpoint (null: ran in one go)"),
    # sparsity
    ("achieved_sparsity", pa.float64(), "fraction of prunable weights removed"),
    ("achieved_sparsity_all", pa.float64(), "fraction of all parameters that are zero"),
    ("layer_density", pa.string(), "per prunable layer: fraction kept, JSON {name: density}"),
    ("layer_collapse", pa.bool_(), "some prunable layer has no weight left"),
    ("collapsed_layers", pa.string(), "names of collapsed layers, JSON list"),
    # cost
    ("params_total", pa.int64(), "number of parameters"),
    ("params_nonzero", pa.int64(), "number of non-zero parameters"),
    ("params_prunable", pa.int64(), "number of prunable weights (the set the sparsity refers to)"),
    ("model_bits", pa.int64(), "storage of the pruned model in bits: the pruner's own format when it states one "
                               "(e.g. a strong lottery ticket: 1 bit per free weight + seeds), else 32 bits per "
                               "non-zero parameter + a 1-bit mask over the prunable weights (dense: 32 per parameter)"),
    ("compression_ratio", pa.float64(), "32 x params_total / model_bits: the dense 32-bit model's size over this one"),
    ("flops_dense", pa.float64(), "FLOPs of one forward pass of one example, dense (torch flop counter)"),
    ("flops_effective", pa.float64(), "FLOPs of one example with pruned weights skipped"),
    ("prune_seconds", pa.float64(), "wall seconds of pruning (including any training it does)"),
    ("train_seconds", pa.float64(), "wall seconds of training after pruning (packed: its share)"),
    ("packed_runs", pa.int64(), "number of runs trained together as one batched computation (null: alone)"),
    ("data_on_device", pa.bool_(), "the training and test sets were held on the device and augmented there in "
                                   "batches (recipe.data_on_device; false: a DataLoader)"),
    ("precision", pa.string(), "precision training used: fp32 | fp16 (autocast + loss scaling) | bf16 (autocast)"),
    ("channels_last", pa.bool_(), "model and batches in channels-last memory layout during training"),
    ("compiled", pa.bool_(), "the training forward/backward ran through torch.compile"),
    ("pretrain_seconds", pa.float64(), "wall seconds of pretraining (0 when cached or not needed)"),
    ("peak_memory_bytes", pa.int64(), "peak GPU memory (CUDA) or peak process RSS (CPU)"),
    ("pruner_info", pa.string(), "free-form information returned by the pruner, JSON"),
    # provenance
    ("harness_version", pa.string(), "bench-harness version"),
    ("git_commit", pa.string(), "git commit of the harness checkout (null when not a checkout)"),
    ("torch_version", pa.string(), "torch version"),
    ("cuda_version", pa.string(), "CUDA version torch was built with (null: CPU build)"),
    ("device", pa.string(), "device name the run used"),
    ("host", pa.string(), "host name"),
    ("slurm_job_id", pa.string(), "SLURM job (array job id _ task id) the run executed in (null: not on SLURM)"),
    ("slurm_array_task_id", pa.int64(), "SLURM array task id"),
    ("slurm_attempt", pa.int64(), "attempt of that job: 1 + SLURM_RESTART_COUNT (requeues after preemption or "
                                  "time limit)"),
    ("started_at", pa.timestamp("us", tz="UTC"), "start time"),
    ("finished_at", pa.timestamp("us", tz="UTC"), "end time"),
]

SCHEMA = pa.schema([(name, kind) for name, kind, _ in COLUMNS], metadata={"schema_version": str(SCHEMA_VERSION)})
__doc__ += "\n".join(f"- ``{n}``: {t} — {m}" for n, t, m in COLUMNS)
