/*
 * Per-device properties and telemetry of the fake NVML library: PCI
 * identity, memory, utilisation, temperature, power, clocks, modes and
 * counters.  Values come from the topology where it has them; the rest are
 * constants plausible for an A100, or NVML_ERROR_NOT_SUPPORTED where an SXM
 * A100 on Linux would not support the query either.
 *
 * Of these, MIG handles answer only the memory, BAR1, field-value and
 * process-utilisation queries; the rest give NVML_ERROR_NOT_SUPPORTED on them.
 */
#define _GNU_SOURCE
#include "fake_nvml.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

/* ---- NVML structures (layouts as in nvml.h) ---------------------------- */

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_STRUCT_VERSION(type, ver) ((unsigned int)(sizeof(type) | ((ver) << 24U)))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(nvmlMemory_v2_t, 2)

typedef struct {
    unsigned long long bar1Total;
    unsigned long long bar1Free;
    unsigned long long bar1Used;
} nvmlBAR1Memory_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

/* Layout returned by nvmlDeviceGetPciInfo and nvmlDeviceGetPciInfo_v2. */
typedef struct {
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    unsigned int reserved[4];
} nvmlPciInfo_v2_t;

/* Layout returned by nvmlDeviceGetPciInfo_v3. */
typedef struct {
    char busIdLegacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
} nvmlPciInfo_t;

typedef struct {
    unsigned int version;
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    unsigned int baseClass;
    unsigned int subClass;
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
} nvmlPciInfoExt_t;

#define nvmlPciInfoExt_v1 NVML_STRUCT_VERSION(nvmlPciInfoExt_t, 1)

typedef struct {
    unsigned int version;
    unsigned int sensorType;
    int temperature;
} nvmlTemperature_t;

#define nvmlTemperature_v1 NVML_STRUCT_VERSION(nvmlTemperature_t, 1)

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    unsigned int valueType;
    nvmlReturn_t nvmlReturn;
    unsigned long long value; /* a union of 8-byte members in nvml.h */
} nvmlFieldValue_t;

enum { NVML_TEMPERATURE_GPU = 0, NVML_TEMPERATURE_GPU_MAX = 1 };
enum { NVML_CLOCK_GRAPHICS, NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_CLOCK_VIDEO, NVML_CLOCK_COUNT };

/* The A100 subsystem id; the device id comes from the topology. */
#define A100_PCI_SUBSYSTEM_ID 0x147F10DEu
/* PCI class "display controller / 3D controller", as data-centre GPUs report. */
#define PCI_BASE_CLASS_DISPLAY 0x3u
#define PCI_SUB_CLASS_3D 0x2u
/* A100 clocks in MHz: boost (max) and idle graphics/SM, memory, video. */
static const unsigned int max_clock_mhz[NVML_CLOCK_COUNT] = {1410, 1410, 1593, 1290};
static const unsigned int idle_clock_mhz[NVML_CLOCK_COUNT] = {210, 210, 1593, 795};

#define MIB_BYTES (1024ULL * 1024ULL)

/* ---- PCI ---------------------------------------------------------------- */

static void format_bus_ids(const fake_gpu *gpu, char legacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE],
                           char full[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE])
{
    /* The legacy field only has room for a 16-bit domain. */
    snprintf(legacy, NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE, "%04X:%02X:%02X.%X",
             gpu->pci_domain & 0xFFFFu, gpu->pci_bus, gpu->pci_device, gpu->pci_function);
    snprintf(full, NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE, "%08X:%02X:%02X.%X", gpu->pci_domain,
             gpu->pci_bus, gpu->pci_device, gpu->pci_function);
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && pci == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        memset(pci, 0, sizeof *pci);
        format_bus_ids(t.gpu, pci->busIdLegacy, pci->busId);
        pci->domain = t.gpu->pci_domain;
        pci->bus = t.gpu->pci_bus;
        pci->device = t.gpu->pci_device;
        pci->pciDeviceId = t.gpu->pci_device_id;
        pci->pciSubSystemId = A100_PCI_SUBSYSTEM_ID;
    }
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_v2_t *pci)
{
    char full[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && pci == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        memset(pci, 0, sizeof *pci);
        format_bus_ids(t.gpu, pci->busId, full);
        pci->domain = t.gpu->pci_domain;
        pci->bus = t.gpu->pci_bus;
        pci->device = t.gpu->pci_device;
        pci->pciDeviceId = t.gpu->pci_device_id;
        pci->pciSubSystemId = A100_PCI_SUBSYSTEM_ID;
    }
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_v2_t *pci)
{
    return nvmlDeviceGetPciInfo_v2(device, pci);
}

NVML_API nvmlReturn_t nvmlDeviceGetPciInfoExt(nvmlDevice_t device, nvmlPciInfoExt_t *pci)
{
    char legacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && pci == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && pci->version != nvmlPciInfoExt_v1)
        rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (rc == NVML_SUCCESS) {
        format_bus_ids(t.gpu, legacy, pci->busId);
        pci->domain = t.gpu->pci_domain;
        pci->bus = t.gpu->pci_bus;
        pci->device = t.gpu->pci_device;
        pci->pciDeviceId = t.gpu->pci_device_id;
        pci->pciSubSystemId = A100_PCI_SUBSYSTEM_ID;
        pci->baseClass = PCI_BASE_CLASS_DISPLAY;
        pci->subClass = PCI_SUB_CLASS_3D;
    }
    return fake_end(rc);
}

/* Simulated GPUs move no PCIe traffic worth reporting. */
NVML_API nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, unsigned int counter,
                                                  unsigned int *value)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    (void)counter;
    (void)value;
    return fake_end(rc == NVML_SUCCESS ? NVML_ERROR_NOT_SUPPORTED : rc);
}

/* ---- Memory ------------------------------------------------------------- */

static void sum_processes(const fake_process_list *list, unsigned long long *bytes)
{
    for (size_t i = 0; i < list->count; i++)
        *bytes += list->items[i].used_bytes;
}

/* Total and used memory of a GPU (summed over its MIG devices) or MIG device. */
static void memory_of(const fake_target *t, unsigned long long *total, unsigned long long *used)
{
    *used = 0;
    if (t->mig != NULL) {
        *total = t->mig->memory_total_mib * MIB_BYTES;
        sum_processes(&t->mig->processes, used);
        return;
    }
    *total = t->gpu->memory_total_mib * MIB_BYTES;
    if (t->gpu->mig_mode)
        for (size_t m = 0; m < t->gpu->mig_count; m++)
            sum_processes(&t->gpu->migs[m].processes, used);
    else
        sum_processes(&t->gpu->processes, used);
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS && memory == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        memory_of(&t, &memory->total, &memory->used);
        memory->free = memory->used < memory->total ? memory->total - memory->used : 0;
    }
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS && memory == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && memory->version != nvmlMemory_v2)
        rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (rc == NVML_SUCCESS) {
        memory_of(&t, &memory->total, &memory->used);
        memory->reserved = 0;
        memory->free = memory->used < memory->total ? memory->total - memory->used : 0;
    }
    return fake_end(rc);
}

/*
 * BAR1 spans the next power of two at or above the frame buffer size (of the
 * MIG device, for a MIG handle); the driver itself maps one MiB of it.
 */
NVML_API nvmlReturn_t nvmlDeviceGetBAR1MemoryInfo(nvmlDevice_t device, nvmlBAR1Memory_t *bar1)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS && bar1 == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        unsigned long long fb_mib = t.mig != NULL ? t.mig->memory_total_mib
                                                  : t.gpu->memory_total_mib;
        unsigned long long mib = 1;
        while (mib < fb_mib)
            mib *= 2;
        bar1->bar1Total = mib * MIB_BYTES;
        bar1->bar1Used = MIB_BYTES;
        bar1->bar1Free = bar1->bar1Total - bar1->bar1Used;
    }
    return fake_end(rc);
}

/* ---- Utilisation, thermals, power, clocks ------------------------------- */

NVML_API nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device,
                                                    nvmlUtilization_t *utilization)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && utilization == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        utilization->gpu = t.gpu->utilization_gpu;
        utilization->memory = t.gpu->utilization_memory;
    }
    return fake_end(rc);
}

/* Shared by the encoder and decoder queries: idle, 167 ms sampling period. */
static nvmlReturn_t codec_utilization(nvmlDevice_t device, unsigned int *utilization,
                                      unsigned int *samplingPeriodUs)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && (utilization == NULL || samplingPeriodUs == NULL))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        *utilization = 0;
        *samplingPeriodUs = 167000;
    }
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t device,
                                                      unsigned int *utilization,
                                                      unsigned int *samplingPeriodUs)
{
    return codec_utilization(device, utilization, samplingPeriodUs);
}

NVML_API nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t device,
                                                      unsigned int *utilization,
                                                      unsigned int *samplingPeriodUs)
{
    return codec_utilization(device, utilization, samplingPeriodUs);
}

/* Per-process samples are not simulated: report "no samples since then". */
NVML_API nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, void *utilization,
                                                      unsigned int *processSamplesCount,
                                                      unsigned long long lastSeenTimeStamp)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    (void)utilization;
    (void)lastSeenTimeStamp;
    if (rc == NVML_SUCCESS)
        rc = processSamplesCount == NULL ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_NOT_FOUND;
    return fake_end(rc);
}

/* Only the GPU core sensor exists; the GPU_MAX reading is not simulated. */
static nvmlReturn_t read_sensor(const fake_gpu *gpu, unsigned int sensor, int *value)
{
    if (sensor == NVML_TEMPERATURE_GPU_MAX)
        return NVML_ERROR_NOT_SUPPORTED;
    if (sensor != NVML_TEMPERATURE_GPU)
        return NVML_ERROR_INVALID_ARGUMENT;
    *value = (int)gpu->temperature_c;
    return NVML_SUCCESS;
}

NVML_API nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, unsigned int sensorType,
                                               unsigned int *temp)
{
    fake_target t;
    int value;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && temp == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        rc = read_sensor(t.gpu, sensorType, &value);
    if (rc == NVML_SUCCESS)
        *temp = (unsigned int)value;
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_t *temp)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && temp == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (rc == NVML_SUCCESS && temp->version != nvmlTemperature_v1)
        rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (rc == NVML_SUCCESS)
        rc = read_sensor(t.gpu, temp->sensorType, &temp->temperature);
    return fake_end(rc);
}

/* SXM modules are cooled by the chassis and have no fan of their own. */
NVML_API nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *speed)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    (void)speed;
    return fake_end(rc == NVML_SUCCESS ? NVML_ERROR_NOT_SUPPORTED : rc);
}

typedef enum { POWER_USAGE, POWER_LIMIT } power_kind;

static nvmlReturn_t power(nvmlDevice_t device, power_kind kind, unsigned int *milliwatts)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && milliwatts == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *milliwatts = kind == POWER_USAGE ? t.gpu->power_mw : t.gpu->power_limit_mw;
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power_mw)
{
    return power(device, POWER_USAGE, power_mw);
}

NVML_API nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit)
{
    return power(device, POWER_LIMIT, limit);
}

NVML_API nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit)
{
    return power(device, POWER_LIMIT, limit);
}

NVML_API nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device,
                                                               unsigned int *limit)
{
    return power(device, POWER_LIMIT, limit);
}

/* A busy GPU runs at boost clocks, an idle one at idle clocks. */
static nvmlReturn_t clock_mhz(nvmlDevice_t device, unsigned int type, bool max, unsigned int *mhz)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && (mhz == NULL || type >= NVML_CLOCK_COUNT))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *mhz = (max || t.gpu->utilization_gpu > 0) ? max_clock_mhz[type] : idle_clock_mhz[type];
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, unsigned int type,
                                             unsigned int *clockMHz)
{
    return clock_mhz(device, type, false, clockMHz);
}

NVML_API nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t device, unsigned int type,
                                                unsigned int *clockMHz)
{
    return clock_mhz(device, type, true, clockMHz);
}

/* Data-centre GPUs under load sit in P0. */
NVML_API nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t device, unsigned int *pState)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && pState == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *pState = 0;
    return fake_end(rc);
}

/* ---- Modes and counters ------------------------------------------------- */

typedef enum { MODE_PERSISTENCE, MODE_COMPUTE, MODE_DISPLAY } mode_kind;

static nvmlReturn_t mode(nvmlDevice_t device, mode_kind kind, unsigned int *value)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && value == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return fake_end(rc);
    switch (kind) {
    case MODE_PERSISTENCE: *value = t.gpu->persistence_mode ? 1 : 0; break;
    case MODE_COMPUTE: *value = t.gpu->compute_mode; break;
    case MODE_DISPLAY: *value = 0; break; /* headless */
    }
    return fake_end(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, unsigned int *state)
{
    return mode(device, MODE_PERSISTENCE, state);
}

NVML_API nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t device, unsigned int *computeMode)
{
    return mode(device, MODE_COMPUTE, computeMode);
}

NVML_API nvmlReturn_t nvmlDeviceGetDisplayMode(nvmlDevice_t device, unsigned int *display)
{
    return mode(device, MODE_DISPLAY, display);
}

NVML_API nvmlReturn_t nvmlDeviceGetDisplayActive(nvmlDevice_t device, unsigned int *isActive)
{
    return mode(device, MODE_DISPLAY, isActive);
}

/* Driver models (WDDM/TCC) exist only on Windows. */
NVML_API nvmlReturn_t nvmlDeviceGetDriverModel_v2(nvmlDevice_t device, unsigned int *current,
                                                  unsigned int *pending)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    (void)current;
    (void)pending;
    return fake_end(rc == NVML_SUCCESS ? NVML_ERROR_NOT_SUPPORTED : rc);
}

NVML_API nvmlReturn_t nvmlDeviceGetDriverModel(nvmlDevice_t device, unsigned int *current,
                                               unsigned int *pending)
{
    return nvmlDeviceGetDriverModel_v2(device, current, pending);
}

/* Simulated memory never has ECC errors. */
NVML_API nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, unsigned int errorType,
                                                  unsigned int counterType,
                                                  unsigned long long *eccCounts)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    (void)errorType;
    (void)counterType;
    if (rc == NVML_SUCCESS && eccCounts == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *eccCounts = 0;
    return fake_end(rc);
}

/*
 * No field (NVLink counters and the like) is simulated: the call succeeds and
 * marks each requested value NOT_SUPPORTED, as the real library does for
 * fields a device lacks.
 */
NVML_API nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount,
                                               nvmlFieldValue_t *values)
{
    fake_target t;
    struct timespec now;
    nvmlReturn_t rc = fake_begin_device(device, true, &t);
    if (rc == NVML_SUCCESS && (valuesCount < 0 || (valuesCount > 0 && values == NULL)))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return fake_end(rc);
    clock_gettime(CLOCK_REALTIME, &now);
    for (int i = 0; i < valuesCount; i++) {
        values[i].timestamp = (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000;
        values[i].latencyUsec = 0;
        values[i].nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
    }
    return fake_end(NVML_SUCCESS);
}

