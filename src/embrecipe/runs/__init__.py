"""What one run leaves behind.

- :mod:`~embrecipe.runs.records`: :class:`RunRecord` / :class:`RunConfig` and the run key (the one record parser);
- :mod:`~embrecipe.runs.store`: the SQLite run store (claims, heartbeats, schema migration).

The trainer returns records and the sweep, laws and planner read them, so this stage sits below all three.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embrecipe._lazy import lazy_exports

if TYPE_CHECKING:
    from embrecipe.runs.records import (
        LOSS_KEYS,
        NON_IDENTITY_KEYS,
        READABLE_SCHEMAS,
        RECORD_SCHEMA,
        RunConfig,
        RunRecord,
        as_record,
        float_or_none,
        run_identity,
        run_key,
        variant_of,
    )
    from embrecipe.runs.store import (
        DEFAULT_HEARTBEAT_S,
        STALE_AFTER_BEATS,
        STATUSES,
        RunStore,
        is_store_path,
    )

_EXPORTS = {
    **dict.fromkeys(['LOSS_KEYS', 'NON_IDENTITY_KEYS', 'READABLE_SCHEMAS', 'RECORD_SCHEMA', 'RunConfig', 'RunRecord', 'as_record', 'float_or_none', 'run_identity', 'run_key', 'variant_of'], 'records'),
    **dict.fromkeys(['DEFAULT_HEARTBEAT_S', 'RunStore', 'STALE_AFTER_BEATS', 'STATUSES', 'is_store_path'], 'store'),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    'DEFAULT_HEARTBEAT_S',
    'LOSS_KEYS',
    'NON_IDENTITY_KEYS',
    'READABLE_SCHEMAS',
    'RECORD_SCHEMA',
    'STALE_AFTER_BEATS',
    'STATUSES',
    'RunConfig',
    'RunRecord',
    'RunStore',
    'as_record',
    'float_or_none',
    'is_store_path',
    'run_identity',
    'run_key',
    'variant_of',
]
