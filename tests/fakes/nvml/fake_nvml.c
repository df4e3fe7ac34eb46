/*
 * A stand-in for NVIDIA's libnvidia-ml.so.1 that simulates the GPUs described
 * by a JSON topology file (see topology.c), so unmodified NVML clients such as
 * pynvml and nvitop can run on machines without a GPU.
 *
 * This file holds handles, initialisation, system queries, enumeration,
 * identity, MIG and process lists; device.c holds the other per-device
 * properties and telemetry, events.c the event sets.  Every entry point takes
 * the one library mutex, re-checks the topology file, answers from the
 * topology in force and releases the mutex.
 *
 * Conventions copied from the real library: output pointers that are NULL
 * give NVML_ERROR_INVALID_ARGUMENT; string buffers that are too short give
 * NVML_ERROR_INSUFFICIENT_SIZE; variable-length lists report the needed count
 * together with NVML_ERROR_INSUFFICIENT_SIZE.
 */
#define _GNU_SOURCE
#include "fake_nvml.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- NVML structures (layouts as in nvml.h) ---------------------------- */

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

/* Shared by the _v2 and _v3 entry points. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

/* ---- Handles ------------------------------------------------------------ */

static fake_device g_gpu_handles[FAKE_MAX_GPUS];
static fake_device g_mig_handles[FAKE_MAX_GPUS][FAKE_MAX_MIG];

static void __attribute__((constructor)) init_handles(void)
{
    for (int g = 0; g < FAKE_MAX_GPUS; g++) {
        g_gpu_handles[g] = (fake_device){g, -1};
        for (int m = 0; m < FAKE_MAX_MIG; m++)
            g_mig_handles[g][m] = (fake_device){g, m};
    }
}

fake_device *fake_gpu_handle(int gpu) { return &g_gpu_handles[gpu]; }

/* True when p is one of the slots above (anything else is a bad handle). */
static bool is_handle(const fake_device *p)
{
    uintptr_t addr = (uintptr_t)p;
    uintptr_t gpus = (uintptr_t)g_gpu_handles, migs = (uintptr_t)g_mig_handles;
    if (addr >= gpus && addr < gpus + sizeof g_gpu_handles)
        return (addr - gpus) % sizeof *p == 0;
    if (addr >= migs && addr < migs + sizeof g_mig_handles)
        return (addr - migs) % sizeof *p == 0;
    return false;
}

nvmlReturn_t fake_begin(void)
{
    fake_lock();
    if (fake_init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    return fake_refresh() ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

nvmlReturn_t fake_end(nvmlReturn_t rc)
{
    fake_unlock();
    return rc;
}

nvmlReturn_t fake_begin_device(nvmlDevice_t device, bool mig_ok, fake_target *target)
{
    nvmlReturn_t rc = fake_begin();
    if (rc != NVML_SUCCESS)
        return rc;
    if (!is_handle(device))
        return NVML_ERROR_INVALID_ARGUMENT;
    /* A GPU that disappeared from the file behaves like one off the bus. */
    if ((size_t)device->gpu >= fake_topo->gpu_count)
        return NVML_ERROR_GPU_IS_LOST;
    target->gpu_index = device->gpu;
    target->gpu = &fake_topo->gpus[device->gpu];
    target->mig = NULL;
    if (target->gpu->lost)
        return NVML_ERROR_GPU_IS_LOST;
    if (device->mig >= 0) {
        /* The MIG device was destroyed (or MIG mode turned off). */
        if ((size_t)device->mig >= target->gpu->mig_count)
            return NVML_ERROR_INVALID_ARGUMENT;
        target->mig = &target->gpu->migs[device->mig];
        if (!mig_ok)
            return NVML_ERROR_NOT_SUPPORTED;
    }
    return NVML_SUCCESS;
}

/* ---- Strings ------------------------------------------------------------ */

/* Copy a NUL-terminated answer into a caller buffer of the given length. */
static nvmlReturn_t copy_string(char *out, unsigned int length, const char *value)
{
    size_t need = strlen(value) + 1;
    if (out == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (length < need)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, need);
    return NVML_SUCCESS;
}

/* ---- Initialisation and errors ------------------------------------------ */

static nvmlReturn_t init(void)
{
    fake_lock();
    nvmlReturn_t rc = fake_refresh() ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
    if (rc == NVML_SUCCESS)
        fake_init_count++;
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlInit(void) { return init(); }

NVML_API nvmlReturn_t nvmlInit_v2(void) { return init(); }

NVML_API nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags; /* NO_GPUS / NO_ATTACH change nothing for simulated GPUs */
    return init();
}

NVML_API nvmlReturn_t nvmlShutdown(void)
{
    fake_lock();
    if (fake_init_count == 0)
        return fake_end(NVML_ERROR_UNINITIALIZED);
    if (--fake_init_count == 0)
        fake_forget_topology();
    return fake_end(NVML_SUCCESS);
}

NVML_API const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt request issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_VGPU_ECC_NOT_SUPPORTED: return "ECC is enabled on the vGPU";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Insufficient resources for the request";
    case NVML_ERROR_FREQ_NOT_SUPPORTED: return "Frequency not supported";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "Deprecated";
    case NVML_ERROR_NOT_READY: return "Not ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    case NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: return "Reset type not supported";
    case NVML_ERROR_UNKNOWN: return "Unknown Error";
    }
    return "Unknown Error";
}

/* ---- System queries ----------------------------------------------------- */

NVML_API nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS)
        rc = copy_string(version, length, fake_topo->driver_version);
    return fake_end(rc);
}

/* NVML's version is "<CUDA major>.<driver version>", e.g. "12.550.54.15". */
NVML_API nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    char text[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE + 16];
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS) {
        snprintf(text, sizeof text, "%d.%s", fake_topo->cuda_driver_version / 1000,
                 fake_topo->driver_version);
        rc = copy_string(version, length, text);
    }
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS && cudaDriverVersion == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *cudaDriverVersion = fake_topo->cuda_driver_version;
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

/* Read up to size-1 bytes of a /proc file; returns the length or -1. */
static ssize_t read_proc(unsigned int pid, const char *file, char *buf, size_t size)
{
    char path[64];
    ssize_t got;
    snprintf(path, sizeof path, "/proc/%u/%s", pid, file);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    got = read(fd, buf, size - 1);
    close(fd);
    if (got < 0)
        return -1;
    buf[got] = '\0';
    return got;
}

/*
 * Like the real library: the command's first word (its path as started),
 * falling back to the kernel's short name for processes without a command
 * line; truncated to the buffer.
 */
NVML_API nvmlReturn_t nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int length)
{
    char buf[4096];
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS && (name == NULL || length == 0))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        ssize_t got = read_proc(pid, "cmdline", buf, sizeof buf);
        if (got <= 0 || buf[0] == '\0') {
            got = read_proc(pid, "comm", buf, sizeof buf);
            if (got >= 0)
                buf[strcspn(buf, "\n")] = '\0';
        }
        if (got < 0)
            rc = NVML_ERROR_NOT_FOUND;
        else
            snprintf(name, length, "%s", buf);
    }
    return fake_end(rc);
}

/* ---- Enumeration -------------------------------------------------------- */

NVML_API nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS && deviceCount == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *deviceCount = (unsigned int)fake_topo->gpu_count;
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount)
{
    return nvmlDeviceGetCount_v2(deviceCount);
}

/* Handles of lost GPUs are handed out too; queries on them then fail. */
NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS && (device == NULL || index >= fake_topo->gpu_count))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *device = &g_gpu_handles[index];
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

/* Accepts GPU and MIG UUIDs, like the real library. */
NVML_API nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS && (uuid == NULL || device == NULL))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return fake_end(rc);
    for (size_t g = 0; g < fake_topo->gpu_count; g++) {
        const fake_gpu *gpu = &fake_topo->gpus[g];
        if (strcmp(gpu->uuid, uuid) == 0) {
            *device = &g_gpu_handles[g];
            return fake_end(NVML_SUCCESS);
        }
        for (size_t m = 0; m < gpu->mig_count; m++) {
            if (strcmp(gpu->migs[m].uuid, uuid) == 0) {
                *device = &g_mig_handles[g][m];
                return fake_end(NVML_SUCCESS);
            }
        }
    }
    return fake_end(NVML_ERROR_NOT_FOUND);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleBySerial(const char *serial, nvmlDevice_t *device)
{
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS && (serial == NULL || device == NULL))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return fake_end(rc);
    for (size_t g = 0; g < fake_topo->gpu_count; g++) {
        if (strcmp(fake_topo->gpus[g].serial, serial) == 0) {
            *device = &g_gpu_handles[g];
            return fake_end(NVML_SUCCESS);
        }
    }
    return fake_end(NVML_ERROR_NOT_FOUND);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
    unsigned int domain, bus, dev, function;
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS &&
        (pciBusId == NULL || device == NULL ||
         !fake_parse_bus_id(pciBusId, &domain, &bus, &dev, &function)))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return fake_end(rc);
    for (size_t g = 0; g < fake_topo->gpu_count; g++) {
        const fake_gpu *gpu = &fake_topo->gpus[g];
        if (gpu->pci_domain == domain && gpu->pci_bus == bus && gpu->pci_device == dev &&
            gpu->pci_function == function) {
            *device = &g_gpu_handles[g];
            return fake_end(NVML_SUCCESS);
        }
    }
    return fake_end(NVML_ERROR_NOT_FOUND);
}

NVML_API nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByPciBusId_v2(pciBusId, device);
}

/* ---- Identity ----------------------------------------------------------- */

NVML_API nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    char mig_name[NVML_DEVICE_NAME_V2_BUFFER_SIZE + 48];
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS && t.mig != NULL) {
        snprintf(mig_name, sizeof mig_name, "%s MIG %s", t.gpu->name, t.mig->profile);
        rc = copy_string(name, length, mig_name);
    } else if (rc == NVML_SUCCESS) {
        rc = copy_string(name, length, t.gpu->name);
    }
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS)
        rc = copy_string(uuid, length, t.mig != NULL ? t.mig->uuid : t.gpu->uuid);
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS)
        rc = copy_string(serial, length, t.gpu->serial);
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && index == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *index = (unsigned int)t.gpu_index;
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && minorNumber == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *minorNumber = t.gpu->minor_number;
    return fake_end(rc);
}

/* MIG devices report their parent's compute capability. */
NVML_API nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major,
                                                         int *minor)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS && (major == NULL || minor == NULL))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        *major = t.gpu->cc_major;
        *minor = t.gpu->cc_minor;
    }
    return fake_end(rc);
}

/* ---- MIG ---------------------------------------------------------------- */

NVML_API nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                           unsigned int *pendingMode)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && (currentMode == NULL || pendingMode == NULL))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *currentMode = *pendingMode = t.gpu->mig_mode ? 1 : 0;
    return fake_end(rc);
}

/* Zero when MIG mode is off, as documented for the real call. */
NVML_API nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && count == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *count = t.gpu->mig_mode ? FAKE_MAX_MIG : 0;
    return fake_end(rc);
}

/* Indexes past the maximum are invalid; free slots below it are not found. */
NVML_API nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                          nvmlDevice_t *migDevice)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS &&
        (t.mig != NULL || migDevice == NULL || !t.gpu->mig_mode || index >= FAKE_MAX_MIG))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (rc == NVML_SUCCESS && index >= t.gpu->mig_count)
        rc = NVML_ERROR_NOT_FOUND;
    if (rc == NVML_SUCCESS)
        *migDevice = &g_mig_handles[t.gpu_index][index];
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice,
                                                                   nvmlDevice_t *device)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(migDevice, true, &t);
    if (rc == NVML_SUCCESS && (t.mig == NULL || device == NULL))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *device = &g_gpu_handles[t.gpu_index];
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS && isMigDevice == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *isMigDevice = t.mig != NULL;
    return fake_end(rc);
}

typedef enum { GPU_INSTANCE, COMPUTE_INSTANCE } instance_kind;

static nvmlReturn_t instance_id(nvmlDevice_t device, instance_kind kind, unsigned int *id)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS && (t.mig == NULL || id == NULL))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *id = kind == GPU_INSTANCE ? t.mig->gi_id : t.mig->ci_id;
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return instance_id(device, GPU_INSTANCE, id);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return instance_id(device, COMPUTE_INSTANCE, id);
}

/* ---- Running processes -------------------------------------------------- */

typedef enum { LAYOUT_V1, LAYOUT_V2 } process_layout;

/* Append a list to the output array (when given), tagging instance ids. */
static void emit(const fake_process_list *list, unsigned int gi, unsigned int ci, void *out,
                 process_layout layout, size_t *n)
{
    for (size_t i = 0; i < list->count; i++) {
        const fake_process *p = &list->items[i];
        if (out != NULL && layout == LAYOUT_V1) {
            nvmlProcessInfo_v1_t *info = (nvmlProcessInfo_v1_t *)out + *n;
            info->pid = p->pid;
            info->usedGpuMemory = p->used_bytes;
        } else if (out != NULL) {
            nvmlProcessInfo_t *info = (nvmlProcessInfo_t *)out + *n;
            info->pid = p->pid;
            info->usedGpuMemory = p->used_bytes;
            info->gpuInstanceId = gi;
            info->computeInstanceId = ci;
        }
        (*n)++;
    }
}

/*
 * Count (out == NULL) or write the compute processes visible through a
 * handle: a MIG device's own, all MIG devices' for the parent of a MIG-mode
 * GPU, else the GPU's (with instance ids 0xFFFFFFFF).
 */
static size_t collect(const fake_target *t, void *out, process_layout layout)
{
    size_t n = 0;
    if (t->mig != NULL) {
        emit(&t->mig->processes, t->mig->gi_id, t->mig->ci_id, out, layout, &n);
    } else if (t->gpu->mig_mode) {
        for (size_t m = 0; m < t->gpu->mig_count; m++) {
            const fake_mig *mig = &t->gpu->migs[m];
            emit(&mig->processes, mig->gi_id, mig->ci_id, out, layout, &n);
        }
    } else {
        emit(&t->gpu->processes, FAKE_NO_INSTANCE, FAKE_NO_INSTANCE, out, layout, &n);
    }
    return n;
}

/* Graphics and MPS lists are always empty: the fake only runs compute work. */
static nvmlReturn_t processes(nvmlDevice_t device, unsigned int *infoCount, void *infos,
                              process_layout layout, bool compute)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS && infoCount == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return fake_end(rc);
    size_t needed = compute ? collect(&t, NULL, layout) : 0;
    if (*infoCount < needed) {
        *infoCount = (unsigned int)needed;
        return fake_end(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if (needed > 0 && infos == NULL)
        return fake_end(NVML_ERROR_INVALID_ARGUMENT);
    if (needed > 0)
        collect(&t, infos, layout);
    *infoCount = (unsigned int)needed;
    return fake_end(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device,
                                                           unsigned int *infoCount,
                                                           nvmlProcessInfo_v1_t *infos)
{
    return processes(device, infoCount, infos, LAYOUT_V1, true);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                              unsigned int *infoCount,
                                                              nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, LAYOUT_V2, true);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                              unsigned int *infoCount,
                                                              nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, LAYOUT_V2, true);
}

NVML_API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_v1_t *infos)
{
    return processes(device, infoCount, infos, LAYOUT_V1, false);
}

NVML_API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device,
                                                               unsigned int *infoCount,
                                                               nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, LAYOUT_V2, false);
}

NVML_API nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device,
                                                               unsigned int *infoCount,
                                                               nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, LAYOUT_V2, false);
}

NVML_API nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses(nvmlDevice_t device,
                                                              unsigned int *infoCount,
                                                              nvmlProcessInfo_v1_t *infos)
{
    return processes(device, infoCount, infos, LAYOUT_V1, false);
}

NVML_API nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v2(nvmlDevice_t device,
                                                                 unsigned int *infoCount,
                                                                 nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, LAYOUT_V2, false);
}

NVML_API nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t device,
                                                                 unsigned int *infoCount,
                                                                 nvmlProcessInfo_t *infos)
{
    return processes(device, infoCount, infos, LAYOUT_V2, false);
}
