//! One module per `vigil` command. `run` is the supervisor process (with `daemon` for
//! `--daemon`), `collector` the child process; the rest are operator tools that talk to a
//! running agent (`status`), read its data dir (`crashes`), or stand in for a server
//! (`receive` with its `checkin_server`); `keys` makes and uses module-signing keys.

pub mod check_config;
pub mod checkin_server;
pub mod collector;
pub mod crashes;
pub mod daemon;
pub mod keys;
pub mod once;
pub mod receive;
pub mod reload;
pub mod run;
pub mod stack_dump;
pub mod status;
pub mod symbolize;
