//! `vigil keygen` and `vigil sign-module`: the operator's side of module signing
//! (docs/checkins.md). Keys and signatures are Ed25519 (ring), in hex.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use vigil_actors::supervisor::module;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Writes PREFIX.key (private, mode 0600) and PREFIX.pub (for checkin.public_key_file).
    /// Existing files are never overwritten.
    #[arg(long, value_name = "PREFIX", default_value = "vigil-module")]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct SignArgs {
    /// The module: a collector executable.
    file: PathBuf,
    /// The private key file made by `vigil keygen`.
    #[arg(long)]
    key: PathBuf,
    /// The version the module is published as (also its directory name on the agents).
    #[arg(long)]
    version: String,
    /// Where agents download it: absolute, or a path on the check-in server
    /// [default: /v1/modules/VERSION].
    #[arg(long)]
    url: Option<String>,
    /// Write the manifest to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn exit(r: anyhow::Result<()>, what: &str) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil {what}: {e:#}");
            ExitCode::from(1)
        }
    }
}

pub fn keygen(args: KeygenArgs) -> ExitCode {
    exit(write_keys(&args.out), "keygen")
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn write_keys(prefix: &Path) -> anyhow::Result<()> {
    let (private, public) = module::generate_key().map_err(anyhow::Error::msg)?;
    let (key, publ) = (with_suffix(prefix, ".key"), with_suffix(prefix, ".pub"));
    for (path, text, mode) in [(&key, &private, 0o600), (&publ, &public, 0o644)] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "private key: {} (keep it secret)\npublic key:  {} (checkin.public_key_file)",
        key.display(),
        publ.display()
    );
    Ok(())
}

pub fn sign_module(args: SignArgs) -> ExitCode {
    exit(sign(args), "sign-module")
}

fn sign(args: SignArgs) -> anyhow::Result<()> {
    let key =
        std::fs::read_to_string(&args.key).with_context(|| format!("cannot read {}", args.key.display()))?;
    let file = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    anyhow::ensure!(
        file.len() as u64 <= module::MAX_MODULE_BYTES,
        "{} is larger than agents accept ({} bytes)",
        args.file.display(),
        module::MAX_MODULE_BYTES
    );
    let url = args.url.unwrap_or_else(|| format!("/v1/modules/{}", args.version));
    let manifest = module::sign(&key, &args.version, &file, url).map_err(anyhow::Error::msg)?;
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    match args.out {
        Some(p) => std::fs::write(&p, json).with_context(|| format!("cannot write {}", p.display()))?,
        None => print!("{json}"),
    }
    Ok(())
}
