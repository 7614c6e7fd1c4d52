//! Integration tests: the real `vigil` binary, real processes, real signals.

mod harness;

mod cli;
mod status;
mod supervision;
