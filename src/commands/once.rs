//! `vigil once`: every enabled collector, in this process, twice about a second apart (so
//! rates have a window), then the samples of the second pass: a table, or with `--json` an
//! array of `{name, tags, value}`. Exit 1 when a collector failed (its error on stderr).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use vigil_actors::collector::{Env, Sample};

use crate::config;

pub fn main(config_path: Option<PathBuf>, json: bool) -> ExitCode {
    let (_, cfg) = match config::load_or_exit(config_path.as_deref()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    crate::logging::init_stderr("warn");
    vigil_actors::collector::crash_capture::install_panic_hook();
    let system = actix_rt::System::new();
    let results = system.block_on(cfg.collectors.collect_once(&Env::default(), Duration::from_secs(1)));
    let mut failed = false;
    let mut samples: Vec<(&str, Sample)> = Vec::new();
    for (collector, r) in results {
        match r {
            Ok(v) => samples.extend(v.into_iter().map(|s| (collector, s))),
            Err(e) => {
                failed = true;
                eprintln!("vigil once: collector {collector} failed: {e}");
            }
        }
    }
    for (_, s) in samples.iter_mut() {
        for (k, v) in &cfg.agent.tags {
            s.tags.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let mut out = std::io::stdout().lock();
    let written = if json {
        let arr: Vec<serde_json::Value> = samples
            .iter()
            .map(|(_, s)| serde_json::json!({ "name": s.name, "tags": s.tags, "value": s.value }))
            .collect();
        serde_json::to_writer_pretty(&mut out, &arr).map_err(std::io::Error::from).and_then(|_| writeln!(out))
    } else {
        print_table(&mut out, &samples)
    };
    if let Err(e) = written {
        eprintln!("vigil once: cannot write output: {e}");
        return ExitCode::from(1);
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_table(out: &mut impl Write, samples: &[(&str, Sample)]) -> std::io::Result<()> {
    let rows: Vec<[String; 4]> = samples
        .iter()
        .map(|(c, s)| {
            let tags: Vec<String> = s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [c.to_string(), s.name.clone(), tags.join(","), format_value(s.value)]
        })
        .collect();
    let header = ["COLLECTOR", "METRIC", "TAGS", "VALUE"].map(String::from);
    let mut width = [0usize; 4];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(rows.iter()) {
        writeln!(
            out,
            "{:<a$}  {:<b$}  {:<c$}  {:>d$}",
            r[0],
            r[1],
            r[2],
            r[3],
            a = width[0],
            b = width[1],
            c = width[2],
            d = width[3]
        )?;
    }
    Ok(())
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
