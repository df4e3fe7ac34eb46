"""Why ds01 refused something: the one vocabulary of denial reasons. Each is a stable machine-readable code: it is
the `X-DS01-Reason` header of a refused request, the `reason` of a `proxy.deny` event, and `ds01 alloc`'s JSON."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # the request itself
    BAD_REQUEST = "bad_request"  # malformed: wrong types, duplicate parameters, bad names
    UNKNOWN_FIELD = "unknown_field"  # a body field the proxy has no rule for
    BODY_TOO_LARGE = "body_too_large"
    HEADER_TOO_LARGE = "header_too_large"
    HEADER_TIMEOUT = "header_timeout"
    BODY_TIMEOUT = "body_timeout"
    API_VERSION = "api_version"  # outside the API versions the proxy serves
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    ENDPOINT_DISABLED = "endpoint_disabled"  # an endpoint group this host turned off
    ADMIN_ONLY = "admin_only"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    UNKNOWN_USER = "unknown_user"  # the kernel's uid names no account
    # other users' things
    NOT_FOUND = "not_found"  # absent, or someone else's (the two look the same)
    NOT_OWNER = "not_owner"
    NAME_TAKEN = "name_taken"
    FOREIGN_NAME = "foreign_name"  # a name in another user's NAME._.UID space
    FOREIGN_UID = "foreign_uid"  # running as another uid
    FOREIGN_GROUP = "foreign_group"  # a group the caller is not in
    LABEL_RESERVED = "label_reserved"  # a ds01.* label only the proxy writes
    IMAGE_LABEL = "image_label"  # an image's own ds01.* label
    IMAGE_MISSING = "image_missing"
    IMAGE_NAMESPACE = "image_namespace"  # a tag outside the caller's USER/ namespace
    IMAGE_SHARED = "image_shared"  # a pulled image, everyone's: users may not remove it
    IMAGE_STORAGE = "image_storage"  # the user's images fill their image_storage quota
    REGISTRY_NOT_ALLOWED = "registry_not_allowed"
    CONTEXT_TOO_LARGE = "context_too_large"  # a build context past images.max_context_size
    BUILDKIT = "buildkit"  # ds01 builds use the classic builder
    BUILD_ARG = "build_arg"  # a predefined proxy variable as a build arg
    DOCKERFILE = "dockerfile"  # a Dockerfile, or a build context, the proxy cannot read with certainty
    # power on the host
    PRIVILEGED = "privileged"
    CAPABILITY = "capability"
    DEVICES = "devices"
    UNKNOWN_DEVICE = "unknown_device"
    HOST_NAMESPACE = "host_namespace"
    SECURITY_OPT = "security_opt"
    SYSCTLS = "sysctls"
    RUNTIME = "runtime"
    CGROUP_PARENT = "cgroup_parent"
    OOM_KILL_DISABLE = "oom_kill_disable"
    OOM_SCORE_ADJ = "oom_score_adj"
    REALTIME = "realtime"
    STORAGE_OPT = "storage_opt"
    ANNOTATIONS = "annotations"
    LINKS = "links"
    LOG_CONFIG = "log_config"
    RESTART_POLICY = "restart_policy"
    HOST_PORT = "host_port"
    NETWORK_DRIVER = "network_driver"
    NETWORK_IPAM = "network_ipam"
    # mounts
    MOUNT_OUTSIDE_HOME = "mount_outside_home"
    MOUNT_TYPE = "mount_type"
    MOUNT_PROPAGATION = "mount_propagation"
    MOUNT_NOT_HARDENED = "mount_not_hardened"  # a data directory without nosuid
    MOUNT_PATH_SYMLINK = "mount_path_symlink"
    NESTED_MOUNT = "nested_mount"
    SYSTEM_MOUNT_POINT = "system_mount_point"
    SOCKET_MOUNT = "socket_mount"
    VOLUME_DRIVER = "volume_driver"
    BIND_SOURCE_CHANGED = "bind_source_changed"
    # archives copied into containers
    BAD_ARCHIVE = "bad_archive"
    ARCHIVE_ENTRY = "archive_entry"
    ARCHIVE_WITH_HOST_MOUNTS = "archive_with_host_mounts"
    # limits
    LIMIT_CPUS = "limit_cpus"
    LIMIT_MEMORY = "limit_memory"
    LIMIT_SHM = "limit_shm"
    LIMIT_PIDS = "limit_pids"
    LIMIT_TMPFS = "limit_tmpfs"
    LIMIT_ULIMIT = "limit_ulimit"
    LIMIT_LIFTED = "limit_lifted"  # a value the engine reads as "no limit"
    MAX_CONTAINERS = "max_containers"
    MAX_EXECS = "max_execs"
    MAX_PUBLISHED_PORTS = "max_published_ports"
    MAX_NETWORKS = "max_networks"  # networks of one user, their own ds01-USER included
    MAX_QUEUED_JOBS = "max_queued_jobs"  # batch jobs of one user waiting in the queue
    JOB_TIME = "job_time"  # a batch job's --time past the user's max_runtime
    JOB_ENDED = "job_ended"  # a batch job that is over cannot be cancelled
    # GPUs
    QUOTA = "quota"
    CAPACITY = "capacity"  # not enough free GPUs right now
    PER_CONTAINER_MAX = "per_container_max"
    FULL_GPU_NOT_ALLOWED = "full_gpu_not_allowed"
    MIG_PROFILE_NOT_ALLOWED = "mig_profile_not_allowed"
    GPUS_RELEASED = "gpus_released"  # a stopped container's hold on its GPUs has lapsed
    WAIT_TIMEOUT = "wait_timeout"  # a request in the queue was not granted within its wait
    WAIT_CANCELLED = "wait_cancelled"  # its client withdrew it from the queue
    # the proxy's own trouble
    BUSY = "busy"  # the allocator lock stayed contended
    STORE_UNAVAILABLE = "store_unavailable"  # the fleet's etcd store does not answer: this node grants no GPUs
    ENGINE_ERROR = "engine_error"
    INTERNAL_ERROR = "internal_error"
    ERROR = "error"
