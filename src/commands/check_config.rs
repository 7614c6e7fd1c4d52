//! `vigil check-config`: load and validate the configuration as `vigil run` would, including
//! the check-in public key it reads at start; every error with `file:line:column`, exit 78.

use std::path::PathBuf;
use std::process::ExitCode;

pub fn main(path: Option<PathBuf>) -> ExitCode {
    match crate::config::load_or_exit(path.as_deref()) {
        Ok((source, cfg)) => {
            // `vigil run` reads the key at start; a key it cannot use is a config error here.
            if !cfg.checkin.url.is_empty() {
                let key = std::path::Path::new(&cfg.checkin.public_key_file);
                if let Err(e) = vigil_actors::supervisor::module::PublicKey::read(key) {
                    eprintln!("{source}: `checkin.public_key_file`: {e}");
                    return ExitCode::from(crate::EXIT_CONFIG);
                }
            }
            println!("{source}: ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
