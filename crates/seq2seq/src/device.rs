//! (placeholder: see the API contract in lib.rs)
