/*
 * Internal declarations shared by the fake NVML library (fake_nvml.c,
 * device.c, topology.c, events.c).  Nothing here is installed: programs reach the fake
 * only through the exported NVML entry points, exactly as with the real
 * libnvidia-ml.so.1.
 *
 * The NVML types below are re-declared from their documented ABI (names,
 * sizes and field order match nvml.h / pynvml's ctypes structures) because
 * the real header is not available on machines without a driver.
 */
#ifndef FAKE_NVML_H
#define FAKE_NVML_H

#include <stdbool.h>
#include <stddef.h>

/* Only functions marked NVML_API are exported; build.sh hides the rest. */
#define NVML_API __attribute__((visibility("default")))

typedef enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22,
    NVML_ERROR_INSUFFICIENT_RESOURCES = 23,
    NVML_ERROR_FREQ_NOT_SUPPORTED = 24,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_DEPRECATED = 26,
    NVML_ERROR_NOT_READY = 27,
    NVML_ERROR_GPU_NOT_FOUND = 28,
    NVML_ERROR_INVALID_STATE = 29,
    NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30,
    NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

#define NVML_DEVICE_NAME_V2_BUFFER_SIZE 96
#define NVML_DEVICE_UUID_V2_BUFFER_SIZE 96
#define NVML_DEVICE_SERIAL_BUFFER_SIZE 30
#define NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE 80
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE 32
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE 16

/* Value NVML stores in gpuInstanceId/computeInstanceId outside MIG. */
#define FAKE_NO_INSTANCE 0xFFFFFFFFu

#define NVML_EVENT_TYPE_SINGLE_BIT_ECC 0x1ULL
#define NVML_EVENT_TYPE_DOUBLE_BIT_ECC 0x2ULL
#define NVML_EVENT_TYPE_PSTATE 0x4ULL
#define NVML_EVENT_TYPE_XID_CRITICAL_ERROR 0x8ULL
#define NVML_EVENT_TYPE_CLOCK 0x10ULL
/* Types a full GPU accepts for registration; only XIDs are ever raised. */
#define FAKE_SUPPORTED_EVENT_TYPES                                              \
    (NVML_EVENT_TYPE_SINGLE_BIT_ECC | NVML_EVENT_TYPE_DOUBLE_BIT_ECC |          \
     NVML_EVENT_TYPE_PSTATE | NVML_EVENT_TYPE_XID_CRITICAL_ERROR |              \
     NVML_EVENT_TYPE_CLOCK)

/*
 * Capacity of the stable handle storage.  Topologies may describe fewer
 * devices; the validator rejects more.
 */
#define FAKE_MAX_GPUS 64
#define FAKE_MAX_MIG 7
/* An A100 has seven GPC slices to divide between its GPU instances. */
#define FAKE_MIG_SLICES 7

/*
 * A device handle.  Handles point into fixed arrays (one slot per GPU
 * position and per MIG position), so a handle obtained before the topology
 * file is replaced keeps referring to "GPU number N" afterwards.
 */
typedef struct fake_device {
    int gpu; /* position in the topology's gpus list */
    int mig; /* position in that GPU's mig_devices, or -1 for the full GPU */
} fake_device;

typedef fake_device *nvmlDevice_t;
typedef struct fake_event_set *nvmlEventSet_t;

/* ---- Simulated topology (what the JSON file describes) ------------------ */

typedef struct {
    unsigned int pid;
    unsigned long long used_bytes;
} fake_process;

typedef struct {
    fake_process *items;
    size_t count;
} fake_process_list;

typedef struct {
    unsigned long long xid;
    unsigned int gi_id;
    unsigned int ci_id;
} fake_xid_event;

typedef struct {
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    char profile[32];
    unsigned int gi_id;
    unsigned int ci_id;
    unsigned int slices;
    unsigned long long memory_total_mib;
    fake_process_list processes;
} fake_mig;

typedef struct {
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    char serial[NVML_DEVICE_SERIAL_BUFFER_SIZE];
    unsigned int pci_domain, pci_bus, pci_device, pci_function;
    unsigned int pci_device_id;
    unsigned int minor_number;
    unsigned long long memory_total_mib;
    unsigned int utilization_gpu;
    unsigned int utilization_memory;
    unsigned int temperature_c;
    unsigned int power_mw;
    unsigned int power_limit_mw;
    unsigned int compute_mode;
    int cc_major, cc_minor;
    bool persistence_mode;
    bool lost;
    bool mig_mode;
    fake_process_list processes; /* empty when mig_mode is true */
    fake_xid_event *xid_events;
    size_t xid_count;
    fake_mig migs[FAKE_MAX_MIG]; /* only meaningful when mig_mode is true */
    size_t mig_count;
} fake_gpu;

typedef struct {
    char driver_version[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
    int cuda_driver_version;
    fake_gpu *gpus;
    size_t gpu_count;
} fake_topology;

/* ---- Shared state (topology.c); guarded by fake_lock ------------------- */

/*
 * The topology currently in force, or NULL when the file is missing or bad
 * (fakeNvmlLastError() then says why) or NVML is not initialised.
 */
extern const fake_topology *fake_topo;
/* Number of successful nvmlInit* calls not yet matched by nvmlShutdown. */
extern unsigned int fake_init_count;

void fake_lock(void);
void fake_unlock(void);

/*
 * Re-read the topology file if it changed since the last call (or the
 * environment variable now names another file).  Returns true when a valid
 * topology is in force.  Caller holds the lock.
 */
bool fake_refresh(void);
/* Drop the cached topology so the next refresh reads the file again. */
void fake_forget_topology(void);
/* Parse "dddddddd:bb:dd.f", "dddd:bb:dd.f" or "bb:dd.f" (hex digits). */
bool fake_parse_bus_id(const char *text, unsigned int *domain, unsigned int *bus,
                       unsigned int *device, unsigned int *function);

/* ---- Event sets (events.c) --------------------------------------------- */

/*
 * Queue XID events that appeared since the previous look.  topology.c calls
 * this after every successful reload.  Caller holds the lock.
 */
void fake_events_collect(void);

/* ---- Handle helpers (fake_nvml.c) -------------------------------------- */

/* What a device handle refers to in the topology in force. */
typedef struct {
    int gpu_index;
    const fake_gpu *gpu;
    const fake_mig *mig; /* NULL for a full-GPU handle */
} fake_target;

fake_device *fake_gpu_handle(int gpu);

/*
 * Begin an API call that needs an initialised library and a valid topology:
 * takes the lock and returns NVML_SUCCESS, or an error code.  The lock is held
 * either way; finish with fake_end().
 */
nvmlReturn_t fake_begin(void);
/*
 * fake_begin() plus resolving a device handle.  A lost GPU (or a MIG device
 * of one) gives NVML_ERROR_GPU_IS_LOST; a MIG handle gives
 * NVML_ERROR_NOT_SUPPORTED unless mig_ok.
 */
nvmlReturn_t fake_begin_device(nvmlDevice_t device, bool mig_ok, fake_target *target);
/* Release the lock taken by a fake_begin* function and pass rc through. */
nvmlReturn_t fake_end(nvmlReturn_t rc);

#endif
