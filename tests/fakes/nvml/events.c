/*
 * Event sets.  The only events ever raised are XID critical errors, taken
 * from each GPU's "xid_events" list in the topology file.
 *
 * A set remembers, per registered GPU, how many entries of that list it has
 * already seen.  Registration marks everything present as seen (those errors
 * happened before anybody was listening); each reload of the file queues the
 * entries appended since.  The list is treated as append-only: if it
 * shrinks, the count is lowered so that entries appended later are noticed.
 */
#define _GNU_SOURCE
#include "fake_nvml.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

/* The original nvmlEventSetWait predates the instance id fields. */
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
} nvmlEventData_v1_t;

typedef struct {
    int gpu;
    fake_xid_event event;
} queued_event;

struct fake_event_set {
    struct fake_event_set *next;
    unsigned long long types[FAKE_MAX_GPUS]; /* registered event types */
    size_t seen[FAKE_MAX_GPUS];              /* xid_events entries already handled */
    queued_event *queue;                     /* pending events are [head, tail) */
    size_t head, tail, capacity;
};

/* All live sets, so handles can be validated and reloads can feed them. */
static struct fake_event_set *g_sets;

#define POLL_INTERVAL_MS 20

static bool is_set(const struct fake_event_set *set)
{
    for (const struct fake_event_set *s = g_sets; s != NULL; s = s->next)
        if (s == set)
            return true;
    return false;
}

/* Returns false (dropping the event) only when memory is exhausted. */
static bool push(struct fake_event_set *set, int gpu, const fake_xid_event *event)
{
    if (set->tail == set->capacity && set->head > 0) {
        memmove(set->queue, set->queue + set->head, (set->tail - set->head) * sizeof *set->queue);
        set->tail -= set->head;
        set->head = 0;
    }
    if (set->tail == set->capacity) {
        size_t capacity = set->capacity ? set->capacity * 2 : 16;
        queued_event *bigger = realloc(set->queue, capacity * sizeof *bigger);
        if (bigger == NULL)
            return false;
        set->queue = bigger;
        set->capacity = capacity;
    }
    set->queue[set->tail++] = (queued_event){gpu, *event};
    return true;
}

void fake_events_collect(void)
{
    for (struct fake_event_set *set = g_sets; set != NULL; set = set->next) {
        for (size_t g = 0; g < fake_topo->gpu_count; g++) {
            const fake_gpu *gpu = &fake_topo->gpus[g];
            if (!(set->types[g] & NVML_EVENT_TYPE_XID_CRITICAL_ERROR))
                continue;
            if (gpu->xid_count < set->seen[g])
                set->seen[g] = gpu->xid_count;
            while (set->seen[g] < gpu->xid_count &&
                   push(set, (int)g, &gpu->xid_events[set->seen[g]]))
                set->seen[g]++;
        }
    }
}

NVML_API nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS && set == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return fake_end(rc);
    struct fake_event_set *created = calloc(1, sizeof *created);
    if (created == NULL)
        return fake_end(NVML_ERROR_MEMORY);
    created->next = g_sets;
    g_sets = created;
    *set = created;
    return fake_end(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    nvmlReturn_t rc = fake_begin();
    if (rc == NVML_SUCCESS && !is_set(set))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return fake_end(rc);
    for (struct fake_event_set **link = &g_sets; *link != NULL; link = &(*link)->next) {
        if (*link == set) {
            *link = set->next;
            break;
        }
    }
    free(set->queue);
    free(set);
    return fake_end(NVML_SUCCESS);
}

NVML_API nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device,
                                                       unsigned long long *eventTypes)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && eventTypes == NULL)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *eventTypes = FAKE_SUPPORTED_EVENT_TYPES;
    return fake_end(rc);
}

NVML_API nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes,
                                               nvmlEventSet_t set)
{
    fake_target t;
    nvmlReturn_t rc = fake_begin_device(device, false, &t);
    if (rc == NVML_SUCCESS && !is_set(set))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (rc == NVML_SUCCESS && (eventTypes & ~FAKE_SUPPORTED_EVENT_TYPES))
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc != NVML_SUCCESS)
        return fake_end(rc);
    if ((eventTypes & NVML_EVENT_TYPE_XID_CRITICAL_ERROR) &&
        !(set->types[t.gpu_index] & NVML_EVENT_TYPE_XID_CRITICAL_ERROR))
        set->seen[t.gpu_index] = t.gpu->xid_count;
    set->types[t.gpu_index] |= eventTypes;
    return fake_end(NVML_SUCCESS);
}

static long long elapsed_ms(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - since->tv_sec) * 1000LL + (now.tv_nsec - since->tv_nsec) / 1000000LL;
}

/*
 * Wait for the next event, re-reading the topology every POLL_INTERVAL_MS
 * with the lock released in between so other threads keep working.
 */
static nvmlReturn_t wait_event(nvmlEventSet_t set, bool have_data, unsigned int timeoutms,
                               queued_event *out)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        nvmlReturn_t rc = fake_begin();
        if (rc == NVML_SUCCESS && (!have_data || !is_set(set)))
            rc = NVML_ERROR_INVALID_ARGUMENT;
        if (rc != NVML_SUCCESS)
            return fake_end(rc);
        if (set->head < set->tail) {
            *out = set->queue[set->head++];
            if (set->head == set->tail)
                set->head = set->tail = 0;
            return fake_end(NVML_SUCCESS);
        }
        long long left = (long long)timeoutms - elapsed_ms(&start);
        fake_end(NVML_SUCCESS);
        if (left <= 0)
            return NVML_ERROR_TIMEOUT;
        long long nap = left < POLL_INTERVAL_MS ? left : POLL_INTERVAL_MS;
        struct timespec pause = {0, nap * 1000000L};
        nanosleep(&pause, NULL);
    }
}

NVML_API nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                          unsigned int timeoutms)
{
    queued_event e;
    nvmlReturn_t rc = wait_event(set, data != NULL, timeoutms, &e);
    if (rc == NVML_SUCCESS) {
        data->device = fake_gpu_handle(e.gpu);
        data->eventType = NVML_EVENT_TYPE_XID_CRITICAL_ERROR;
        data->eventData = e.event.xid;
        data->gpuInstanceId = e.event.gi_id;
        data->computeInstanceId = e.event.ci_id;
    }
    return rc;
}

NVML_API nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_v1_t *data,
                                       unsigned int timeoutms)
{
    queued_event e;
    nvmlReturn_t rc = wait_event(set, data != NULL, timeoutms, &e);
    if (rc == NVML_SUCCESS) {
        data->device = fake_gpu_handle(e.gpu);
        data->eventType = NVML_EVENT_TYPE_XID_CRITICAL_ERROR;
        data->eventData = e.event.xid;
    }
    return rc;
}
