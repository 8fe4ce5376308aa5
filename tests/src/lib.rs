//! Shared helpers for the cross-service tests in `tests/tests/`.
