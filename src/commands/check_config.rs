//! `vigil check-config`: load and validate the configuration as `vigil run` would, including
//! the check-in public key it reads at start; every error with `file:line:column`, exit 78.
//! A valid configuration exits 0, with a warning for each damaged file in a sink's spool (in
//! the configured data dir), which the agent would skip, cut or set aside at start.

use std::path::PathBuf;
use std::process::ExitCode;

/// Damage in each sink's spool under the configured data dir, as warnings: the
/// configuration is valid (exit 0), but the agent will skip, cut or set aside what is listed.
fn spool_warnings(cfg: &vigil_actors::config::Config) {
    let data_dir = crate::config::data_dir(None, cfg);
    for u in &cfg.upload {
        let dir = data_dir.join("spool").join(&u.name);
        match vigil_actors::upload::spool::inspect(&dir) {
            Ok(found) => {
                for f in found {
                    eprintln!("warning: sink `{}`: spool {}: {f}", u.name, dir.display());
                }
            }
            Err(e) => eprintln!("warning: sink `{}`: spool cannot be read: {e}", u.name),
        }
    }
}

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
            spool_warnings(&cfg);
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
