"""The catalogue of event types: every `type` ds01 writes to the event log, each defined once with its meaning.
docs-admin/events.md lists the same catalogue for admins (a test keeps the two in step)."""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    ALLOCATION_RESERVE = "allocation.reserve"
    ALLOCATION_BIND = "allocation.bind"
    ALLOCATION_RELEASE = "allocation.release"
    ALLOCATION_EXPIRE = "allocation.expire"
    ALLOCATOR_STATE_CORRUPT = "allocator.state_corrupt"
    ALLOCATOR_STATE_REBUILT = "allocator.state_rebuilt"
    ALLOCATOR_REBUILD_CONFLICT = "allocator.rebuild_conflict"
    RECONCILE_STARTUP = "reconcile.startup"
    RECONCILE_UNALLOCATED_GPU_CONTAINER = "reconcile.unallocated_gpu_container"
    GPU_XID = "gpu.xid"
    PROXY_START = "proxy.start"
    PROXY_STOP = "proxy.stop"
    PROXY_ALLOW = "proxy.allow"
    PROXY_DENY = "proxy.deny"
    PROXY_INTERNAL_ERROR = "proxy.internal_error"
    PROXY_EVENT_STREAM_LOST = "proxy.event_stream_lost"
    PROXY_PIN_RELEASED = "proxy.pin_released"
    PROXY_UNGRANTED_START = "proxy.ungranted_start"
    CONTAINER_OOM = "container.oom"
    SECURITY_ROOT_CONTAINER = "security.root_container"
    CONFIG_RELOAD = "config.reload"
    CONFIG_RELOAD_FAILED = "config.reload_failed"
    IDENTITY_LDAP_FALLBACK = "identity.ldap_fallback"
    CLEANUP_WARN = "cleanup.warn"
    CLEANUP_STOP = "cleanup.stop"
    CLEANUP_REMOVE = "cleanup.remove"
    CLEANUP_RELEASE = "cleanup.release"
    CLEANUP_IDLE_START = "cleanup.idle_start"
    CLEANUP_IDLE_END = "cleanup.idle_end"
    BARE_METAL_GRANT = "bare_metal.grant"
    BARE_METAL_REVOKE = "bare_metal.revoke"
    BARE_METAL_EXPIRE = "bare_metal.expire"
    BARE_METAL_EXPIRE_FAILED = "bare_metal.expire_failed"
    BARE_METAL_GROUP_CREATE = "bare_metal.group_create"
    EXPORTER_XID_WATCH_FAILED = "exporter.xid_watch_failed"
