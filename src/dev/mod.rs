//! Developer tools: dev certificates, the two-workload demo and the echo app.

pub mod certs;
pub mod cli;
pub mod demo;
pub mod echo;
