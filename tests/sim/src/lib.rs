//! Simulated DGX node.
