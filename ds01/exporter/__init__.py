"""The Prometheus exporter: GPU processes attributed to users and containers. `service.run` starts it."""
