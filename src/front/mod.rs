//! The HTTP front: routing by model, the proxy hot path, OCI's `/predict`, errors, auth,
//! health and metrics. It never touches a process; it reads [`crate::state`] only.

pub mod route;
