"""Every `ds01.*` label name and the reserved prefix, defined in this one place."""

from __future__ import annotations

LABEL_PREFIX = "ds01."
USER = "ds01.user"  # sanitized owner name
UID = "ds01.uid"
CREATED_AT = "ds01.created_at"
TYPE = "ds01.type"  # container, docker, compose or devcontainer
ALLOCATION = "ds01.allocation"  # the allocation id the container's GPUs were granted under
GPU_EQUIVALENTS = "ds01.gpu_equivalents"  # exact, e.g. "3/7"
PROTECTED = "ds01.protected"
LEGACY_USER = "aime.mlc.USER"  # containers made by the system ds01 replaces
REQUEST_MIG = "ds01.request.mig"  # a client asks for a MIG profile through this label
REQUEST_WAIT = "ds01.request.wait"  # a client asks its GPU request to wait in the queue this long (30m, 2h)
BIND_KEY = "ds01.bind_key"  # names the container's directory of pinned bind sources
BIND_SOURCES = "ds01.bind_sources"  # JSON list: the real host path each pinned source stood at when checked
INSTANCE = "ds01.instance"  # the state directory of the ds01 that made it: who tracks its grants
JOB = "ds01.job"  # a batch job's name (container run), on its container
JOB_TIME = "ds01.job.time"  # its time limit in seconds
JOB_WORKSPACE = "ds01.job.workspace"  # the host directory its log goes into
# The only ds01.* labels a caller may send, consumed by the proxy.
REQUEST_LABELS = frozenset({REQUEST_MIG, REQUEST_WAIT})
# Every ds01.* label ds01 reads. Each create writes all of them, empty where unset, so that no label of the
# image's own shows through; readers take an empty value for an absent one.
KNOWN_LABELS = (USER, UID, CREATED_AT, TYPE, ALLOCATION, GPU_EQUIVALENTS, PROTECTED, BIND_KEY, BIND_SOURCES,
                REQUEST_MIG, REQUEST_WAIT, INSTANCE, JOB, JOB_TIME, JOB_WORKSPACE)
