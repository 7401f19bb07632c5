"""One budget-exact contrastive run.

- :mod:`~embrecipe.training.trainer`: :func:`train`, the run's phases;
- :mod:`~embrecipe.training.config`: :class:`TrainConfig` (one dataclass: types, defaults, help);
- :mod:`~embrecipe.training.budget`: the FLOP meter, the LR by spent FLOPs, divergence;
- :mod:`~embrecipe.training.batching` / :mod:`~embrecipe.training.packing`: batches, packed rows;
- :mod:`~embrecipe.training.loss`: symmetric InfoNCE (sentence-transformers' losses);
- :mod:`~embrecipe.training.checkpoint` / :mod:`~embrecipe.training.preflight`: resume, checks before step 1;
- :mod:`~embrecipe.training.runtime` / :mod:`~embrecipe.training.device` / :mod:`~embrecipe.training.memory`:
  precision, device, memory;
- :mod:`~embrecipe.training.export` / :mod:`~embrecipe.training.model_card` / :mod:`~embrecipe.training.hub`:
  the SentenceTransformer folder, its card, the Hub;
- :mod:`~embrecipe.training.tracking`: TensorBoard, W&B, MLflow, trackio.

Names load lazily, so importing this package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embrecipe._lazy import lazy_exports

if TYPE_CHECKING:
    from embrecipe.training.batching import (
        Batches,
        ShardInputs,
        add_prompt_lengths,
        count_truncated,
        packed_batch,
        pad_batch,
        prompted_columns,
        to_device,
        tokenize,
        tokenize_uncached,
        tokenizer_fingerprint,
    )
    from embrecipe.training.budget import (
        RUNAWAY_FACTOR,
        LoopState,
        budget_of_steps,
        check_no_repeat,
        divergence_reason,
        epochs_over_unique,
        lr_at_fraction,
        planned_steps,
        step_lr_fraction,
        steps_for_epochs,
    )
    from embrecipe.training.checkpoint import (
        checkpoint_file,
        checkpoint_step,
        load_checkpoint,
        recover_checkpoint,
        restore_checkpoint,
        run_fingerprint,
        save_checkpoint,
    )
    from embrecipe.training.config import (
        METHOD_LR_FACTOR,
        TrainConfig,
        card_lr,
        check_setting_types,
        config_from_dict,
        default_lr,
        resolve_lr,
        setting,
        setting_types,
    )
    from embrecipe.training.device import (
        NATIVE_BF16_CPU_FLAGS,
        bf16_supported,
        choose_precision,
        cpu_flags,
        precision_for,
    )
    from embrecipe.training.export import (
        export_model,
        export_or_explain,
    )
    from embrecipe.training.hub import (
        check_repo_id,
        push_run,
    )
    from embrecipe.training.loss import (
        DIRECTIONS,
        heldout_loss,
        symmetric_infonce,
    )
    from embrecipe.training.memory import (
        DEFAULT_KAPPA,
        DEFAULT_LORA_EXCESS,
        DEFAULT_OVERHEAD_BYTES,
        GIB,
        activation_values_per_token,
        auto_mini_batch,
        fit_activation_coefficient,
        gradcache_mini_batch,
        training_memory,
    )
    from embrecipe.training.model_card import (
        HEADLINE,
        apply_card_data,
        card_facts,
        portable_name,
    )
    from embrecipe.training.packing import (
        PACKED_POOLINGS,
        auto_row_length,
        pack_rows,
        packed_attention_mask,
        packed_embeddings,
        packed_layout,
        supports_packing,
    )
    from embrecipe.training.preflight import (
        check_disk_space,
        check_out_dir,
        disk_bytes_needed,
    )
    from embrecipe.training.runtime import (
        Dist,
        auto_gradcache,
        compile_mode,
        device_name,
        resolve_packing,
        seed_everything,
        training_device,
        use_fused_adamw,
        versions,
    )
    from embrecipe.training.tracking import (
        BACKENDS,
        REPORT_TO_CHOICES,
        MultiTracker,
        Tracker,
        TrackingError,
        flops_step,
        is_installed,
        open_tracker,
        resolve_report_to,
        step_metrics,
    )
    from embrecipe.training.trainer import (
        DUPLICATE_WARN_FRACTION,
        TrainingStopped,
        train,
        train_from_dict,
        train_until_stopped,
    )

_EXPORTS = {
    **dict.fromkeys(['Batches', 'ShardInputs', 'add_prompt_lengths', 'count_truncated', 'packed_batch', 'pad_batch', 'prompted_columns', 'to_device', 'tokenize', 'tokenize_uncached', 'tokenizer_fingerprint'], 'batching'),
    **dict.fromkeys(['LoopState', 'RUNAWAY_FACTOR', 'budget_of_steps', 'check_no_repeat', 'divergence_reason', 'epochs_over_unique', 'lr_at_fraction', 'planned_steps', 'step_lr_fraction', 'steps_for_epochs'], 'budget'),
    **dict.fromkeys(['checkpoint_file', 'checkpoint_step', 'load_checkpoint', 'recover_checkpoint', 'restore_checkpoint', 'run_fingerprint', 'save_checkpoint'], 'checkpoint'),
    **dict.fromkeys(['METHOD_LR_FACTOR', 'TrainConfig', 'card_lr', 'check_setting_types', 'config_from_dict', 'default_lr', 'resolve_lr', 'setting', 'setting_types'], 'config'),
    **dict.fromkeys(['NATIVE_BF16_CPU_FLAGS', 'bf16_supported', 'choose_precision', 'cpu_flags', 'precision_for'], 'device'),
    **dict.fromkeys(['export_model', 'export_or_explain'], 'export'),
    **dict.fromkeys(['check_repo_id', 'push_run'], 'hub'),
    **dict.fromkeys(['DIRECTIONS', 'heldout_loss', 'symmetric_infonce'], 'loss'),
    **dict.fromkeys(['DEFAULT_KAPPA', 'DEFAULT_LORA_EXCESS', 'DEFAULT_OVERHEAD_BYTES', 'GIB', 'activation_values_per_token', 'auto_mini_batch', 'fit_activation_coefficient', 'gradcache_mini_batch', 'training_memory'], 'memory'),
    **dict.fromkeys(['HEADLINE', 'apply_card_data', 'card_facts', 'portable_name'], 'model_card'),
    **dict.fromkeys(['PACKED_POOLINGS', 'auto_row_length', 'pack_rows', 'packed_attention_mask', 'packed_embeddings', 'packed_layout', 'supports_packing'], 'packing'),
    **dict.fromkeys(['check_disk_space', 'check_out_dir', 'disk_bytes_needed'], 'preflight'),
    **dict.fromkeys(['Dist', 'auto_gradcache', 'compile_mode', 'device_name', 'resolve_packing', 'seed_everything', 'training_device', 'use_fused_adamw', 'versions'], 'runtime'),
    **dict.fromkeys(['BACKENDS', 'MultiTracker', 'REPORT_TO_CHOICES', 'Tracker', 'TrackingError', 'flops_step', 'is_installed', 'open_tracker', 'resolve_report_to', 'step_metrics'], 'tracking'),
    **dict.fromkeys(['DUPLICATE_WARN_FRACTION', 'TrainingStopped', 'train', 'train_from_dict', 'train_until_stopped'], 'trainer'),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    'BACKENDS',
    'DEFAULT_KAPPA',
    'DEFAULT_LORA_EXCESS',
    'DEFAULT_OVERHEAD_BYTES',
    'DIRECTIONS',
    'DUPLICATE_WARN_FRACTION',
    'GIB',
    'HEADLINE',
    'METHOD_LR_FACTOR',
    'NATIVE_BF16_CPU_FLAGS',
    'PACKED_POOLINGS',
    'REPORT_TO_CHOICES',
    'RUNAWAY_FACTOR',
    'Batches',
    'Dist',
    'LoopState',
    'MultiTracker',
    'ShardInputs',
    'Tracker',
    'TrackingError',
    'TrainConfig',
    'TrainingStopped',
    'activation_values_per_token',
    'add_prompt_lengths',
    'apply_card_data',
    'auto_gradcache',
    'auto_mini_batch',
    'auto_row_length',
    'bf16_supported',
    'budget_of_steps',
    'card_facts',
    'card_lr',
    'check_disk_space',
    'check_no_repeat',
    'check_out_dir',
    'check_repo_id',
    'check_setting_types',
    'checkpoint_file',
    'checkpoint_step',
    'choose_precision',
    'compile_mode',
    'config_from_dict',
    'count_truncated',
    'cpu_flags',
    'default_lr',
    'device_name',
    'disk_bytes_needed',
    'divergence_reason',
    'epochs_over_unique',
    'export_model',
    'export_or_explain',
    'fit_activation_coefficient',
    'flops_step',
    'gradcache_mini_batch',
    'heldout_loss',
    'is_installed',
    'load_checkpoint',
    'lr_at_fraction',
    'open_tracker',
    'pack_rows',
    'packed_attention_mask',
    'packed_batch',
    'packed_embeddings',
    'packed_layout',
    'pad_batch',
    'planned_steps',
    'portable_name',
    'precision_for',
    'prompted_columns',
    'push_run',
    'recover_checkpoint',
    'resolve_lr',
    'resolve_packing',
    'resolve_report_to',
    'restore_checkpoint',
    'run_fingerprint',
    'save_checkpoint',
    'seed_everything',
    'setting',
    'setting_types',
    'step_lr_fraction',
    'step_metrics',
    'steps_for_epochs',
    'supports_packing',
    'symmetric_infonce',
    'to_device',
    'tokenize',
    'tokenize_uncached',
    'tokenizer_fingerprint',
    'train',
    'train_from_dict',
    'train_until_stopped',
    'training_device',
    'training_memory',
    'use_fused_adamw',
    'versions',
]
