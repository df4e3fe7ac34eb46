/*
 * Loading, validating and hot-reloading the topology file named by
 * FAKE_NVML_TOPOLOGY.
 *
 * Every API call stats the file; when its identity (inode, size, times) or
 * the variable changes, the file is parsed again.  A file that cannot be used
 * leaves no topology in force, so calls fail with NVML_ERROR_UNKNOWN, and the
 * reason is kept for fakeNvmlLastError().
 *
 * Keys and defaults (JSON null counts as absent):
 *   top level: driver_version "550.54.15", cuda_driver_version 12040,
 *              gpus (required list, at most FAKE_MAX_GPUS entries)
 *   gpus[i]:   uuid (required), name "NVIDIA A100-SXM4-80GB",
 *              serial 13 digits derived from i, pci_bus_id 00000000:<i+1>:00.0,
 *              memory_total_mib 81920, utilization_gpu 0, utilization_memory 0
 *              (0..100), temperature_c 35, power_w 60, power_limit_w 400,
 *              lost false, mig_mode false, persistence_mode true,
 *              compute_mode 0, compute_capability "8.0",
 *              pci_device_id 0x20B210DE, minor_number i,
 *              processes [], xid_events [], mig_devices []
 *   processes: pid (required, > 0), used_memory_mib 0
 *   xid_events: xid (required), gi_id / ci_id 0xFFFFFFFF
 *   mig_devices (at most 7, at most 7 slices in all; ignored unless mig_mode):
 *              uuid (required), profile "1g.10gb", gi_id <position + 1>,
 *              ci_id 0, slices <leading digit of profile>, memory_total_mib
 *              from the A100 profile table (required for other profiles),
 *              processes []
 * A MIG-mode GPU lists its processes under its MIG devices only.  UUIDs and
 * PCI bus ids must be unique, and so must (gi_id, ci_id) within a GPU.
 */
#define _GNU_SOURCE
#include "fake_nvml.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOPOLOGY_ENV "FAKE_NVML_TOPOLOGY"
#define MIB (1024.0 * 1024.0)

const fake_topology *fake_topo;
unsigned int fake_init_count;

static pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;
static char g_error[PATH_MAX + 512];
/* File being parsed; prefixes validation messages. */
static const char *g_loading_path;

/* Identity of the file last parsed (successfully or not). */
static struct {
    bool valid;
    char path[PATH_MAX];
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim;
    struct timespec ctim;
} g_seen;

void fake_lock(void) { pthread_mutex_lock(&g_mutex); }

void fake_unlock(void) { pthread_mutex_unlock(&g_mutex); }

/*
 * Keep the mutex consistent across fork(): a child forked while another
 * thread was inside the library would otherwise inherit a locked mutex.
 */
static void __attribute__((constructor)) install_fork_handlers(void)
{
    pthread_atfork(fake_lock, fake_unlock, fake_unlock);
}

static void set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
}

/* Record why a field is invalid ("<file>: <field> <reason>"); returns false. */
static bool bad(const char *field, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool bad(const char *field, const char *fmt, ...)
{
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    set_error("%s: %s %s", g_loading_path, field, reason);
    return false;
}

static void free_processes(fake_process_list *list)
{
    free(list->items);
    list->items = NULL;
    list->count = 0;
}

static void free_topology(fake_topology *topo)
{
    if (topo == NULL)
        return;
    for (size_t i = 0; i < topo->gpu_count; i++) {
        fake_gpu *gpu = &topo->gpus[i];
        free_processes(&gpu->processes);
        free(gpu->xid_events);
        for (size_t m = 0; m < FAKE_MAX_MIG; m++)
            free_processes(&gpu->migs[m].processes);
    }
    free(topo->gpus);
    free(topo);
}

/* ---- Typed field readers ------------------------------------------------
 * Each reads obj[key], names the field "<prefix>.<key>" in messages, and
 * treats an absent key or JSON null as "use the default" (or "is missing"
 * when there is none).
 */

static void field_name(char *out, size_t size, const char *prefix, const char *key)
{
    if (*prefix)
        snprintf(out, size, "%s.%s", prefix, key);
    else
        snprintf(out, size, "%s", key);
}

static const cJSON *get_item(const cJSON *obj, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNull(item) ? NULL : item;
}

static bool get_string(const cJSON *obj, const char *prefix, const char *key,
                       const char *fallback, char *out, size_t size)
{
    char field[128];
    const cJSON *item = get_item(obj, key);
    field_name(field, sizeof field, prefix, key);
    if (item == NULL) {
        if (fallback == NULL)
            return bad(field, "is missing");
        snprintf(out, size, "%s", fallback);
        return true;
    }
    if (!cJSON_IsString(item))
        return bad(field, "must be a string");
    size_t len = strlen(item->valuestring);
    if (len == 0)
        return bad(field, "must not be empty");
    if (len >= size)
        return bad(field, "is longer than %zu characters", size - 1);
    memcpy(out, item->valuestring, len + 1);
    return true;
}

static bool get_uint(const cJSON *obj, const char *prefix, const char *key, bool required,
                     unsigned long long fallback, unsigned long long max,
                     unsigned long long *out)
{
    char field[128];
    const cJSON *item = get_item(obj, key);
    field_name(field, sizeof field, prefix, key);
    if (item == NULL) {
        if (required)
            return bad(field, "is missing");
        *out = fallback;
        return true;
    }
    if (!cJSON_IsNumber(item))
        return bad(field, "must be a non-negative integer");
    double value = item->valuedouble;
    if (value < 0 || value != floor(value))
        return bad(field, "must be a non-negative integer (got %g)", value);
    if (value > (double)max)
        return bad(field, "must be at most %llu (got %.0f)", max, value);
    *out = (unsigned long long)value;
    return true;
}

/* get_uint for values that fit an unsigned int. */
static bool get_u32(const cJSON *obj, const char *prefix, const char *key, bool required,
                    unsigned int fallback, unsigned int max, unsigned int *out)
{
    unsigned long long value;
    if (!get_uint(obj, prefix, key, required, fallback, max, &value))
        return false;
    *out = (unsigned int)value;
    return true;
}

static bool get_number(const cJSON *obj, const char *prefix, const char *key, double fallback,
                       double max, double *out)
{
    char field[128];
    const cJSON *item = get_item(obj, key);
    field_name(field, sizeof field, prefix, key);
    if (item == NULL) {
        *out = fallback;
        return true;
    }
    if (!cJSON_IsNumber(item) || item->valuedouble < 0)
        return bad(field, "must be a non-negative number");
    if (item->valuedouble > max)
        return bad(field, "must be at most %g (got %g)", max, item->valuedouble);
    *out = item->valuedouble;
    return true;
}

static bool get_bool(const cJSON *obj, const char *prefix, const char *key, bool fallback,
                     bool *out)
{
    char field[128];
    const cJSON *item = get_item(obj, key);
    field_name(field, sizeof field, prefix, key);
    if (item == NULL) {
        *out = fallback;
        return true;
    }
    if (!cJSON_IsBool(item))
        return bad(field, "must be true or false");
    *out = cJSON_IsTrue(item);
    return true;
}

/* An optional list: *out is NULL when absent, *count its length. */
static bool get_list(const cJSON *obj, const char *prefix, const char *key, const cJSON **out,
                     size_t *count)
{
    char field[128];
    const cJSON *item = get_item(obj, key);
    field_name(field, sizeof field, prefix, key);
    *out = item;
    *count = 0;
    if (item == NULL)
        return true;
    if (!cJSON_IsArray(item))
        return bad(field, "must be a list");
    *count = (size_t)cJSON_GetArraySize(item);
    return true;
}

/* ---- Parts of the topology --------------------------------------------- */

bool fake_parse_bus_id(const char *text, unsigned int *domain, unsigned int *bus,
                       unsigned int *device, unsigned int *function)
{
    unsigned long long d = 0;
    unsigned int b, dev, fn;
    int used = -1;
    if (sscanf(text, "%llx:%x:%x.%x%n", &d, &b, &dev, &fn, &used) != 4 || text[used] != '\0') {
        used = -1;
        d = 0;
        if (sscanf(text, "%x:%x.%x%n", &b, &dev, &fn, &used) != 3 || text[used] != '\0')
            return false;
    }
    if (d > 0xFFFFFFFFULL || b > 0xFF || dev > 0x1F || fn > 7)
        return false;
    *domain = (unsigned int)d;
    *bus = b;
    *device = dev;
    *function = fn;
    return true;
}

static bool parse_processes(const cJSON *owner, const char *prefix, fake_process_list *out)
{
    const cJSON *list, *entry;
    size_t count, i = 0;
    if (!get_list(owner, prefix, "processes", &list, &count))
        return false;
    if (count == 0)
        return true;
    out->items = calloc(count, sizeof *out->items);
    if (out->items == NULL)
        return bad(prefix, "processes: out of memory");
    cJSON_ArrayForEach(entry, list)
    {
        char field[96], pid_field[128];
        unsigned long long pid;
        double mib;
        snprintf(field, sizeof field, "%s.processes[%zu]", prefix, i);
        if (!cJSON_IsObject(entry))
            return bad(field, "must be an object");
        if (!get_uint(entry, field, "pid", true, 0, INT_MAX, &pid))
            return false;
        field_name(pid_field, sizeof pid_field, field, "pid");
        if (pid == 0)
            return bad(pid_field, "must be a positive integer");
        if (!get_number(entry, field, "used_memory_mib", 0, 1e9, &mib))
            return false;
        out->items[i].pid = (unsigned int)pid;
        out->items[i].used_bytes = (unsigned long long)llround(mib * MIB);
        out->count = ++i;
    }
    return true;
}

static bool parse_xid_events(const cJSON *owner, const char *prefix, fake_gpu *gpu)
{
    const cJSON *list, *entry;
    size_t count, i = 0;
    if (!get_list(owner, prefix, "xid_events", &list, &count))
        return false;
    if (count == 0)
        return true;
    gpu->xid_events = calloc(count, sizeof *gpu->xid_events);
    if (gpu->xid_events == NULL)
        return bad(prefix, "xid_events: out of memory");
    cJSON_ArrayForEach(entry, list)
    {
        char field[96];
        fake_xid_event *event = &gpu->xid_events[i];
        snprintf(field, sizeof field, "%s.xid_events[%zu]", prefix, i);
        if (!cJSON_IsObject(entry))
            return bad(field, "must be an object");
        if (!get_uint(entry, field, "xid", true, 0, UINT32_MAX, &event->xid) ||
            !get_u32(entry, field, "gi_id", false, FAKE_NO_INSTANCE, UINT32_MAX, &event->gi_id) ||
            !get_u32(entry, field, "ci_id", false, FAKE_NO_INSTANCE, UINT32_MAX, &event->ci_id))
            return false;
        gpu->xid_count = ++i;
    }
    return true;
}

/* Memory sizes (MiB) of the A100 MIG profiles, as nvidia-smi reports them. */
static const struct {
    const char *profile;
    unsigned long long mib;
} mig_profile_memory[] = {
    {"1g.5gb", 4864},   {"2g.10gb", 9856},  {"3g.20gb", 19968}, {"4g.20gb", 19968},
    {"7g.40gb", 40192}, {"1g.10gb", 9728},  {"1g.20gb", 19968}, {"2g.20gb", 19968},
    {"3g.40gb", 40192}, {"4g.40gb", 40192}, {"7g.80gb", 80896},
};

static bool parse_mig(const cJSON *json, const char *prefix, size_t index, fake_mig *mig)
{
    unsigned long long default_memory = 0;
    unsigned int default_slices = 1;
    char field[128];
    if (!cJSON_IsObject(json))
        return bad(prefix, "must be an object");
    if (!get_string(json, prefix, "uuid", NULL, mig->uuid, sizeof mig->uuid) ||
        !get_string(json, prefix, "profile", "1g.10gb", mig->profile, sizeof mig->profile))
        return false;
    for (size_t i = 0; i < sizeof mig_profile_memory / sizeof mig_profile_memory[0]; i++)
        if (strcmp(mig->profile, mig_profile_memory[i].profile) == 0)
            default_memory = mig_profile_memory[i].mib;
    if (sscanf(mig->profile, "%ug.", &default_slices) != 1 || default_slices == 0)
        default_slices = 1;
    if (!get_u32(json, prefix, "gi_id", false, (unsigned int)index + 1, UINT32_MAX - 1,
                 &mig->gi_id) ||
        !get_u32(json, prefix, "ci_id", false, 0, UINT32_MAX - 1, &mig->ci_id) ||
        !get_u32(json, prefix, "slices", false, default_slices, FAKE_MIG_SLICES, &mig->slices))
        return false;
    if (default_memory == 0 && get_item(json, "memory_total_mib") == NULL) {
        field_name(field, sizeof field, prefix, "memory_total_mib");
        return bad(field, "is missing (profile \"%s\" has no known size)", mig->profile);
    }
    if (!get_uint(json, prefix, "memory_total_mib", false, default_memory, 1ULL << 30,
                  &mig->memory_total_mib))
        return false;
    return parse_processes(json, prefix, &mig->processes);
}

static bool parse_gpu(const cJSON *json, size_t index, fake_gpu *gpu)
{
    char prefix[48], fallback[40], bus_id[64], capability[16], field[128];
    double power_w, limit_w;
    int used = -1;
    snprintf(prefix, sizeof prefix, "gpus[%zu]", index);
    if (!cJSON_IsObject(json))
        return bad(prefix, "must be an object");

    if (!get_string(json, prefix, "uuid", NULL, gpu->uuid, sizeof gpu->uuid) ||
        !get_string(json, prefix, "name", "NVIDIA A100-SXM4-80GB", gpu->name, sizeof gpu->name))
        return false;
    snprintf(fallback, sizeof fallback, "%013llu", 1324021000000ULL + index);
    if (!get_string(json, prefix, "serial", fallback, gpu->serial, sizeof gpu->serial))
        return false;
    snprintf(fallback, sizeof fallback, "00000000:%02zX:00.0", index + 1);
    if (!get_string(json, prefix, "pci_bus_id", fallback, bus_id, sizeof bus_id))
        return false;
    if (!fake_parse_bus_id(bus_id, &gpu->pci_domain, &gpu->pci_bus, &gpu->pci_device,
                           &gpu->pci_function)) {
        field_name(field, sizeof field, prefix, "pci_bus_id");
        return bad(field, "\"%s\" is not a PCI bus id like 00000000:07:00.0", bus_id);
    }
    if (!get_string(json, prefix, "compute_capability", "8.0", capability, sizeof capability))
        return false;
    if (sscanf(capability, "%d.%d%n", &gpu->cc_major, &gpu->cc_minor, &used) != 2 ||
        capability[used] != '\0' || gpu->cc_major < 0 || gpu->cc_minor < 0) {
        field_name(field, sizeof field, prefix, "compute_capability");
        return bad(field, "must look like \"8.0\" (got \"%s\")", capability);
    }

    if (!get_uint(json, prefix, "memory_total_mib", false, 81920, 1ULL << 30,
                  &gpu->memory_total_mib) ||
        !get_u32(json, prefix, "utilization_gpu", false, 0, 100, &gpu->utilization_gpu) ||
        !get_u32(json, prefix, "utilization_memory", false, 0, 100, &gpu->utilization_memory) ||
        !get_u32(json, prefix, "temperature_c", false, 35, 200, &gpu->temperature_c) ||
        !get_number(json, prefix, "power_w", 60, 1e6, &power_w) ||
        !get_number(json, prefix, "power_limit_w", 400, 1e6, &limit_w) ||
        !get_u32(json, prefix, "pci_device_id", false, 0x20B210DE, UINT32_MAX,
                 &gpu->pci_device_id) ||
        !get_u32(json, prefix, "minor_number", false, (unsigned int)index, UINT32_MAX,
                 &gpu->minor_number) ||
        !get_u32(json, prefix, "compute_mode", false, 0, 3, &gpu->compute_mode) ||
        !get_bool(json, prefix, "persistence_mode", true, &gpu->persistence_mode) ||
        !get_bool(json, prefix, "lost", false, &gpu->lost) ||
        !get_bool(json, prefix, "mig_mode", false, &gpu->mig_mode))
        return false;
    gpu->power_mw = (unsigned int)lround(power_w * 1000.0);
    gpu->power_limit_mw = (unsigned int)lround(limit_w * 1000.0);

    if (!parse_processes(json, prefix, &gpu->processes) || !parse_xid_events(json, prefix, gpu))
        return false;
    if (gpu->mig_mode && gpu->processes.count > 0) {
        field_name(field, sizeof field, prefix, "processes");
        return bad(field, "must be empty when mig_mode is true (list them under mig_devices)");
    }

    /* mig_devices is validated even when mig_mode is false, but then ignored. */
    const cJSON *migs, *entry;
    size_t count, i = 0, slices = 0;
    if (!get_list(json, prefix, "mig_devices", &migs, &count))
        return false;
    if (count > FAKE_MAX_MIG) {
        field_name(field, sizeof field, prefix, "mig_devices");
        return bad(field, "has %zu entries; a GPU has at most %d", count, FAKE_MAX_MIG);
    }
    cJSON_ArrayForEach(entry, migs)
    {
        char mig_prefix[80];
        snprintf(mig_prefix, sizeof mig_prefix, "%s.mig_devices[%zu]", prefix, i);
        if (!parse_mig(entry, mig_prefix, i, &gpu->migs[i]))
            return false;
        for (size_t j = 0; j < i; j++)
            if (gpu->migs[j].gi_id == gpu->migs[i].gi_id &&
                gpu->migs[j].ci_id == gpu->migs[i].ci_id)
                return bad(mig_prefix, "has the same gi_id/ci_id as mig_devices[%zu]", j);
        slices += gpu->migs[i].slices;
        i++;
    }
    if (slices > FAKE_MIG_SLICES) {
        field_name(field, sizeof field, prefix, "mig_devices");
        return bad(field, "use %zu slices; a GPU has %d", slices, FAKE_MIG_SLICES);
    }
    gpu->mig_count = gpu->mig_mode ? count : 0;
    return true;
}

/* Name of the uuid field of device slot m of GPU g (slot 0: the GPU). */
static const char *uuid_field(char *out, size_t size, size_t g, size_t m)
{
    if (m == 0)
        snprintf(out, size, "gpus[%zu].uuid", g);
    else
        snprintf(out, size, "gpus[%zu].mig_devices[%zu].uuid", g, m - 1);
    return out;
}

static const char *uuid_of(const fake_gpu *gpu, size_t m)
{
    return m == 0 ? gpu->uuid : gpu->migs[m - 1].uuid;
}

/* UUIDs (GPU and MIG) and PCI addresses must identify one device each. */
static bool check_unique(const fake_topology *topo)
{
    char field[96], other[96];
    for (size_t a = 0; a < topo->gpu_count; a++) {
        const fake_gpu *ga = &topo->gpus[a];
        for (size_t b = 0; b < a; b++) {
            const fake_gpu *gb = &topo->gpus[b];
            if (ga->pci_domain == gb->pci_domain && ga->pci_bus == gb->pci_bus &&
                ga->pci_device == gb->pci_device && ga->pci_function == gb->pci_function) {
                snprintf(field, sizeof field, "gpus[%zu].pci_bus_id", a);
                return bad(field, "is the same as gpus[%zu].pci_bus_id", b);
            }
        }
        /* Compare each device slot with every slot listed before it. */
        for (size_t ma = 0; ma <= ga->mig_count; ma++) {
            for (size_t b = 0; b <= a; b++) {
                const fake_gpu *gb = &topo->gpus[b];
                size_t limit = b == a ? ma : gb->mig_count + 1;
                for (size_t mb = 0; mb < limit; mb++)
                    if (strcmp(uuid_of(ga, ma), uuid_of(gb, mb)) == 0)
                        return bad(uuid_field(field, sizeof field, a, ma), "is the same as %s",
                                   uuid_field(other, sizeof other, b, mb));
            }
        }
    }
    return true;
}

static fake_topology *parse_topology(const cJSON *root)
{
    fake_topology *topo = calloc(1, sizeof *topo);
    const cJSON *gpus, *entry;
    size_t count, i = 0;
    unsigned long long cuda;
    if (topo == NULL) {
        set_error("%s: out of memory", g_loading_path);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        set_error("%s: the top level must be a JSON object", g_loading_path);
        goto fail;
    }
    if (!get_string(root, "", "driver_version", "550.54.15", topo->driver_version,
                    sizeof topo->driver_version) ||
        !get_uint(root, "", "cuda_driver_version", false, 12040, INT_MAX, &cuda))
        goto fail;
    topo->cuda_driver_version = (int)cuda;
    gpus = get_item(root, "gpus");
    if (gpus == NULL) {
        bad("gpus", "is missing");
        goto fail;
    }
    if (!get_list(root, "", "gpus", &gpus, &count))
        goto fail;
    if (count > FAKE_MAX_GPUS) {
        bad("gpus", "has %zu entries; at most %d are supported", count, FAKE_MAX_GPUS);
        goto fail;
    }
    topo->gpus = calloc(count ? count : 1, sizeof *topo->gpus);
    if (topo->gpus == NULL) {
        set_error("%s: out of memory", g_loading_path);
        goto fail;
    }
    cJSON_ArrayForEach(entry, gpus)
    {
        topo->gpu_count = i + 1; /* so free_topology() sees partial entries */
        if (!parse_gpu(entry, i, &topo->gpus[i]))
            goto fail;
        i++;
    }
    if (!check_unique(topo))
        goto fail;
    return topo;
fail:
    free_topology(topo);
    return NULL;
}

/* Read a whole file into a NUL-terminated buffer; *length excludes the NUL. */
static char *read_file(int fd, size_t *length)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (len + 1 == cap) {
            char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL)
                break;
            buf = bigger;
            cap *= 2;
        }
        ssize_t got = read(fd, buf + len, cap - 1 - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            break;
        if (got == 0) {
            buf[len] = '\0';
            *length = len;
            return buf;
        }
        len += (size_t)got;
    }
    free(buf);
    return NULL;
}

/* Parse the file at path; st receives the identity of what was read. */
static fake_topology *load(const char *path, struct stat *st)
{
    fake_topology *topo = NULL;
    size_t length = 0;
    char *text;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, st) != 0) {
        set_error("%s: cannot read the file (%s)", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    text = read_file(fd, &length);
    close(fd);
    if (text == NULL) {
        set_error("%s: cannot read the file (%s)", path, strerror(errno));
        return NULL;
    }
    if (length == 0) {
        set_error("%s: the file is empty", path);
    } else {
        const char *end = NULL;
        /* length + 1 includes the NUL so trailing garbage is rejected. */
        cJSON *root = cJSON_ParseWithLengthOpts(text, length + 1, &end, 1);
        if (root == NULL) {
            int line = 1;
            if (end == NULL || end < text || end > text + length)
                end = text + length;
            for (const char *c = text; c < end; c++)
                line += *c == '\n';
            set_error("%s: not valid JSON near line %d", path, line);
        } else {
            g_loading_path = path;
            topo = parse_topology(root);
            g_loading_path = NULL;
            cJSON_Delete(root);
        }
    }
    free(text);
    return topo;
}

static bool same_file(const char *path, const struct stat *st)
{
    return g_seen.valid && strcmp(g_seen.path, path) == 0 && g_seen.dev == st->st_dev &&
           g_seen.ino == st->st_ino && g_seen.size == st->st_size &&
           g_seen.mtim.tv_sec == st->st_mtim.tv_sec &&
           g_seen.mtim.tv_nsec == st->st_mtim.tv_nsec &&
           g_seen.ctim.tv_sec == st->st_ctim.tv_sec && g_seen.ctim.tv_nsec == st->st_ctim.tv_nsec;
}

static void install(fake_topology *topo)
{
    free_topology((fake_topology *)fake_topo);
    fake_topo = topo;
}

void fake_forget_topology(void)
{
    install(NULL);
    g_seen.valid = false;
    g_error[0] = '\0';
}

bool fake_refresh(void)
{
    const char *path = getenv(TOPOLOGY_ENV);
    struct stat st;
    if (path == NULL || *path == '\0') {
        fake_forget_topology();
        set_error("%s is not set", TOPOLOGY_ENV);
        return false;
    }
    if (strlen(path) >= sizeof g_seen.path) {
        fake_forget_topology();
        set_error("%s is longer than %d characters", TOPOLOGY_ENV, PATH_MAX - 1);
        return false;
    }
    if (stat(path, &st) != 0) {
        fake_forget_topology();
        set_error("%s: cannot read the file (%s)", path, strerror(errno));
        return false;
    }
    if (same_file(path, &st))
        return fake_topo != NULL;

    fake_topology *topo = load(path, &st);
    install(topo);
    /* Remember bad files too, so they are not re-parsed on every call. */
    g_seen.valid = true;
    snprintf(g_seen.path, sizeof g_seen.path, "%s", path);
    g_seen.dev = st.st_dev;
    g_seen.ino = st.st_ino;
    g_seen.size = st.st_size;
    g_seen.mtim = st.st_mtim;
    g_seen.ctim = st.st_ctim;
    if (topo == NULL)
        return false;
    g_error[0] = '\0';
    fake_events_collect();
    return true;
}

NVML_API const char *fakeNvmlLastError(void)
{
    static _Thread_local char copy[sizeof g_error];
    fake_lock();
    fake_refresh();
    snprintf(copy, sizeof copy, "%s", g_error);
    fake_unlock();
    return copy;
}
