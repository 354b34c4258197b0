//! Prometheus metrics, kept in atomics so that the proxy hot path never takes a lock.
