"""GPUs and MIG slices: what there is (`supply`), which are quarantined after XIDs (`quarantine`), where a
request fits (`placement`), and the lock-protected grants (`allocator`)."""
