//! Integration tests: the real `vigil` binary, real processes, real signals.

mod harness;

mod checkin;
mod cli;
mod collectors;
mod faults;
mod forensics;
mod inspect;
mod metrics;
mod ops;
mod package;
mod page;
mod peers;
mod reload;
mod status;
mod supervision;
mod tls;
mod upload;
