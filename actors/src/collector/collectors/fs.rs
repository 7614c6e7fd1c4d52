//! `fs`: how full each real filesystem is (CONTRACT §4: fs_disk_util, fs_inodes_util, tagged
//! {mount, device, fstype}).
//!
//! The mounts come from `/proc/self/mountinfo` (procfs `MountInfos`), the sizes from
//! `statvfs(2)` on each mount point. Both paths are taken under [`Env::root`], and statvfs is
//! reached through a [`StatFn`] so tests hand in the numbers of each mount point.
//!
//! # What is measured
//!
//! - `fs_disk_util` is what `df` prints as `Use%`: `used / (used + avail) * 100` with
//!   `used = f_blocks - f_bfree` and `avail = f_bavail`. Blocks reserved for root count as
//!   neither, so the value reaches 100 when an unprivileged writer gets ENOSPC, which is the
//!   moment an alert is for (`(total - free) / total` would stop a few percent short on ext4).
//! - `fs_inodes_util` is `(f_files - f_ffree) / f_files * 100` (`df -i`). Filesystems that
//!   report no inode count (btrfs, vfat, many FUSE ones: `f_files == 0`) get no inode sample.
//!
//! # Which mounts are reported
//!
//! Every line of mountinfo is reported unless one of these rules, applied in this order,
//! excludes it ([`Verdict`] names each one):
//!
//! 1. its fstype is in `fstypes_exclude` (exact match; by default the pseudo and in-memory
//!    filesystems listed in [`DEFAULT_FSTYPES_EXCLUDE`], and overlay/squashfs, whose numbers
//!    describe a container layer or a read-only image rather than a disk);
//! 2. its mount point is under one of `mounts_exclude` (whole path components: `/boot`
//!    excludes `/boot` and `/boot/efi`, not `/bootstrap`);
//! 3. a later line mounts something else on the same mount point, hiding it (statvfs would
//!    describe the mount on top);
//! 4. another surviving mount has the same device number (major:minor): bind mounts and
//!    btrfs subvolumes share one superblock, hence identical statvfs numbers, so the device
//!    is reported once, at its shortest mount point (ties: the first in mountinfo). This
//!    runs after rules 1-3, so excluding one path of a device leaves its other paths;
//! 5. statvfs says it has 0 blocks (autofs placeholders, some FUSE filesystems), or statvfs
//!    fails (permission, a stale network mount): skipped for this collection, logged at debug.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

/// The filesystem types `fstypes_exclude` holds by default: kernel interfaces, memory-backed
/// filesystems and container/image layers, none of which is a disk that fills up.
pub const DEFAULT_FSTYPES_EXCLUDE: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "pstore",
    "bpf",
    "debugfs",
    "tracefs",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "rpc_pipefs",
    "nsfs",
    "overlay",
    "squashfs",
    "ramfs",
    "efivarfs",
    "selinuxfs",
];

/// `[collectors.fs]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsConfig {
    /// Collect filesystem usage.
    pub enabled: bool,
    /// Filesystem types (the mountinfo fstype field, exact match) never reported.
    pub fstypes_exclude: Vec<String>,
    /// Mount points never reported: each entry excludes that absolute path and everything
    /// below it (whole path components).
    pub mounts_exclude: Vec<String>,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fstypes_exclude: DEFAULT_FSTYPES_EXCLUDE.iter().map(|s| s.to_string()).collect(),
            mounts_exclude: Vec::new(),
        }
    }
}

impl CollectorConfig for FsConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn validate(&self) -> Vec<(String, String)> {
        self.mounts_exclude
            .iter()
            .filter(|m| !m.starts_with('/'))
            .map(|m| ("mounts_exclude".to_string(), format!("must be absolute paths, got {m:?}")))
            .collect()
    }
}

/// The statvfs fields the two utilisations need (counts of blocks and inodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStats {
    /// `f_blocks`: size of the filesystem in fragments.
    pub blocks: u64,
    /// `f_bfree`: free fragments, including those reserved for root.
    pub bfree: u64,
    /// `f_bavail`: fragments free to unprivileged users.
    pub bavail: u64,
    /// `f_files`: inodes in total (0 = the filesystem does not say).
    pub files: u64,
    /// `f_ffree`: free inodes.
    pub ffree: u64,
}

/// How the collector asks for a mount point's numbers: [`statvfs`] on a live host, a table
/// in tests.
pub type StatFn = Box<dyn Fn(&Path) -> io::Result<FsStats>>;

/// `statvfs(2)` on `path` (through rustix: no unsafe code here).
// The u64::from calls are no-ops on 64-bit Linux but widen on targets where the counts are u32.
#[allow(clippy::useless_conversion)]
pub fn statvfs(path: &Path) -> io::Result<FsStats> {
    let st = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(FsStats {
        blocks: u64::from(st.f_blocks),
        bfree: u64::from(st.f_bfree),
        bavail: u64::from(st.f_bavail),
        files: u64::from(st.f_files),
        ffree: u64::from(st.f_ffree),
    })
}

/// `df`'s Use%: used / (used + available to unprivileged users), in percent; `None` when
/// the filesystem has no blocks to speak of.
pub fn disk_util(s: &FsStats) -> Option<f64> {
    let used = s.blocks.saturating_sub(s.bfree);
    let denom = used.checked_add(s.bavail)?;
    (s.blocks > 0 && denom > 0).then(|| used as f64 / denom as f64 * 100.0)
}

/// Inodes in use, in percent; `None` when the filesystem reports no inode count.
pub fn inodes_util(s: &FsStats) -> Option<f64> {
    let used = s.files.saturating_sub(s.ffree);
    (s.files > 0).then(|| used as f64 / s.files as f64 * 100.0)
}

/// One mountinfo line, as the collector tags it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// The mount point, octal escapes (`\040` for a space) decoded.
    pub mount: String,
    /// The mount source (`/dev/sda1`), or the device number when there is none.
    pub device: String,
    pub fstype: String,
    /// `major:minor` of the filesystem's device.
    pub majmin: String,
}

/// Why a mount is reported or not (the module doc's rules, in order).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Report,
    /// Rule 1: its fstype is in `fstypes_exclude`.
    ExcludedFsType,
    /// Rule 2: under one of `mounts_exclude`.
    ExcludedMount,
    /// Rule 3: a later mount sits on the same mount point.
    Shadowed,
    /// Rule 4: the same device is reported at this (shorter) mount point.
    Duplicate {
        of: String,
    },
}

/// Decides, for every mountinfo line in order, whether it is reported (rules 1-4; rule 5
/// needs statvfs and is applied by the collector).
pub fn select(mounts: &[procfs::process::MountInfo], config: &FsConfig) -> Vec<(Mount, Verdict)> {
    let excluded_types: HashSet<&str> = config.fstypes_exclude.iter().map(String::as_str).collect();
    let mut out: Vec<(Mount, Verdict)> = mounts
        .iter()
        .map(|m| {
            let mount = unescape(&m.mount_point.to_string_lossy());
            let device = m.mount_source.clone().unwrap_or_else(|| m.majmin.clone());
            let m = Mount { mount, device, fstype: m.fs_type.clone(), majmin: m.majmin.clone() };
            let verdict = if excluded_types.contains(m.fstype.as_str()) {
                Verdict::ExcludedFsType
            } else if config.mounts_exclude.iter().any(|p| Path::new(&m.mount).starts_with(p)) {
                Verdict::ExcludedMount
            } else {
                Verdict::Report
            };
            (m, verdict)
        })
        .collect();

    // Rule 3: only the last line for a mount point is visible at that path.
    let mut last_at: HashMap<&str, usize> = HashMap::new();
    for (i, (m, _)) in out.iter().enumerate() {
        last_at.insert(m.mount.as_str(), i);
    }
    let shadowed: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(i, (m, _))| last_at[m.mount.as_str()] != *i)
        .map(|(i, _)| i)
        .collect();
    for i in shadowed {
        if out[i].1 == Verdict::Report {
            out[i].1 = Verdict::Shadowed;
        }
    }

    // Rule 4: one report per device, at its shortest surviving mount point.
    let mut keep: HashMap<String, usize> = HashMap::new();
    for (i, (m, v)) in out.iter().enumerate() {
        if *v != Verdict::Report {
            continue;
        }
        let best = keep.entry(m.majmin.clone()).or_insert(i);
        if m.mount.len() < out[*best].0.mount.len() {
            *best = i;
        }
    }
    for i in 0..out.len() {
        if out[i].1 == Verdict::Report {
            let best = keep[&out[i].0.majmin];
            if best != i {
                out[i].1 = Verdict::Duplicate { of: out[best].0.mount.clone() };
            }
        }
    }
    out
}

/// Decodes the kernel's octal escapes in mountinfo paths (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash); procfs keeps them as written.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends the samples of one reported mount.
pub fn samples(m: &Mount, s: &FsStats, out: &mut Vec<Sample>) {
    let tagged = |name: &str, value: f64| {
        Sample::new(name, value).tag("mount", &m.mount).tag("device", &m.device).tag("fstype", &m.fstype)
    };
    if let Some(u) = disk_util(s) {
        out.push(tagged("fs_disk_util", u));
    }
    if let Some(u) = inodes_util(s) {
        out.push(tagged("fs_inodes_util", u));
    }
}

pub struct Fs {
    env: Env,
    config: FsConfig,
    stat: StatFn,
}

impl Fs {
    /// A collector that asks `stat` instead of statvfs (tests).
    pub fn with_stat(config: &FsConfig, env: &Env, stat: StatFn) -> Self {
        Self { env: env.clone(), config: config.clone(), stat }
    }

    fn mounts(&self) -> Result<Vec<procfs::process::MountInfo>, CollectError> {
        use procfs::FromRead;
        Ok(procfs::process::MountInfos::from_file(self.env.path("/proc/self/mountinfo"))?.0)
    }
}

impl Collector for Fs {
    const NAME: &'static str = "fs";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("fs_disk_util", Unit::Percent, "Share of the filesystem's space in use."),
        Metric::gauge("fs_inodes_util", Unit::Percent, "Share of the filesystem's inodes in use."),
    ];
    type Config = FsConfig;

    fn new(config: &FsConfig, env: &Env) -> Self {
        Self::with_stat(config, env, Box::new(statvfs))
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        let mounts = self.mounts()?;
        for (m, verdict) in select(&mounts, &self.config) {
            if verdict != Verdict::Report {
                continue;
            }
            let path: PathBuf = self.env.path(&m.mount);
            match (self.stat)(&path) {
                // Rule 5: nothing to measure on a filesystem without blocks.
                Ok(s) if s.blocks == 0 => {}
                Ok(s) => samples(&m, &s, out),
                Err(e) => {
                    tracing::debug!(mount = %m.mount, error = %e, "statvfs failed; mount skipped.");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;

    fn fixture() -> Env {
        Env { root: concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/fs-1").into(), ..Env::default() }
    }

    fn st(blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64) -> FsStats {
        FsStats { blocks, bfree, bavail, files, ffree }
    }

    /// statvfs numbers per mount point of the fs-1 fixture; anything else fails as ENOENT,
    /// so a mount the rules should have excluded would show up as a missing stat, not a sample.
    fn fixture_stat(root: PathBuf) -> StatFn {
        Box::new(move |p: &Path| {
            let rel = p.strip_prefix(&root).expect("stat under the fixture root");
            let mount = format!("/{}", rel.display());
            let mount = mount.trim_end_matches('/');
            Ok(match if mount.is_empty() { "/" } else { mount } {
                "/" => st(1000, 250, 50, 1000, 750),
                "/home" => st(2000, 1000, 1000, 500, 100),
                "/boot/efi" => st(100, 50, 50, 0, 0),
                "/mnt/my disk" => st(400, 100, 100, 10, 10),
                "/srv/btrfs" => st(800, 600, 600, 0, 0),
                "/data" => st(100, 90, 90, 100, 99),
                "/run/user/1000/gvfs" => st(0, 0, 0, 0, 0),
                "/media/locked" => return Err(io::Error::from(io::ErrorKind::PermissionDenied)),
                other => return Err(io::Error::new(io::ErrorKind::NotFound, format!("no stat for {other}"))),
            })
        })
    }

    fn by_mount(s: &[Sample], name: &str) -> HashMap<String, f64> {
        s.iter().filter(|x| x.name == name).map(|x| (x.tags["mount"].clone(), x.value)).collect()
    }

    #[test]
    fn df_arithmetic() {
        // used 750 of which 50 more could be written by users: 750 / 800.
        assert_eq!(disk_util(&st(1000, 250, 50, 0, 0)), Some(93.75));
        // No root reservation: plain used / total.
        assert_eq!(disk_util(&st(2000, 1000, 1000, 0, 0)), Some(50.0));
        // Full for users although root still has its reserve.
        assert_eq!(disk_util(&st(1000, 50, 0, 0, 0)), Some(100.0));
        assert_eq!(disk_util(&st(0, 0, 0, 0, 0)), None);
        // Nonsense from a broken driver (more free than total) stays within 0..=100.
        assert_eq!(disk_util(&st(10, 20, 20, 0, 0)), Some(0.0));
        assert_eq!(inodes_util(&st(1, 1, 1, 1000, 750)), Some(25.0));
        assert_eq!(inodes_util(&st(1, 1, 1, 0, 0)), None);
        assert_eq!(inodes_util(&st(1, 1, 1, 10, 20)), Some(0.0));
    }

    #[test]
    fn octal_escapes_are_decoded() {
        assert_eq!(unescape(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape(r"/a\134b\011c"), "/a\\b\tc");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
        assert_eq!(unescape(r"/x\999"), r"/x\999");
    }

    #[actix_rt::test]
    async fn fixture_values() {
        let env = fixture();
        let mut c = Fs::with_stat(&FsConfig::default(), &env, fixture_stat(env.root.clone()));
        let s = collect_guarded(&mut c).await.unwrap();
        let disk = by_mount(&s, "fs_disk_util");
        let inodes = by_mount(&s, "fs_inodes_util");
        let expect_disk: HashMap<String, f64> = [
            ("/", 93.75),
            ("/home", 50.0),
            ("/boot/efi", 50.0),
            ("/mnt/my disk", 75.0),
            ("/srv/btrfs", 25.0),
            ("/data", 10.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(disk, expect_disk);
        let expect_inodes: HashMap<String, f64> =
            [("/", 25.0), ("/home", 80.0), ("/mnt/my disk", 0.0), ("/data", 1.0)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        assert_eq!(inodes, expect_inodes, "btrfs and vfat report no inodes");

        let root = s.iter().find(|x| x.name == "fs_disk_util" && x.tags["mount"] == "/").unwrap();
        assert_eq!(root.tags["device"], "/dev/sda1");
        assert_eq!(root.tags["fstype"], "ext4");
        assert_eq!(root.tags.len(), 3);
        let data = s.iter().find(|x| x.name == "fs_disk_util" && x.tags["mount"] == "/data").unwrap();
        assert_eq!(data.tags["device"], "/dev/sdb2", "the mount on top, not the hidden one");
    }

    #[test]
    fn every_rule_in_order() {
        use procfs::FromRead;
        let mi = procfs::process::MountInfos::from_file(fixture().path("/proc/self/mountinfo")).unwrap();
        let v: HashMap<String, Vec<Verdict>> =
            select(&mi.0, &FsConfig::default()).into_iter().fold(HashMap::new(), |mut acc, (m, v)| {
                acc.entry(m.mount).or_default().push(v);
                acc
            });
        for (mount, want) in [
            ("/proc", Verdict::ExcludedFsType),
            ("/sys", Verdict::ExcludedFsType),
            ("/run", Verdict::ExcludedFsType),
            ("/sys/fs/cgroup", Verdict::ExcludedFsType),
            ("/var/lib/docker/overlay2/abc/merged", Verdict::ExcludedFsType),
            ("/snap/core/1", Verdict::ExcludedFsType),
            ("/srv/alice", Verdict::Duplicate { of: "/home".into() }),
            ("/var/lib/kubelet/pods/x/volumes/root", Verdict::Duplicate { of: "/".into() }),
        ] {
            assert_eq!(v[mount], vec![want], "{mount}");
        }
        assert_eq!(v["/data"], vec![Verdict::Shadowed, Verdict::Report]);
        assert_eq!(v["/"], vec![Verdict::Report]);

        let cfg = FsConfig { mounts_exclude: vec!["/boot".into(), "/hom".into()], ..FsConfig::default() };
        let v: HashMap<String, Verdict> =
            select(&mi.0, &cfg).into_iter().map(|(m, v)| (m.mount, v)).collect();
        assert_eq!(v["/boot/efi"], Verdict::ExcludedMount);
        assert_eq!(v["/home"], Verdict::Report, "prefixes match whole components");

        // Excluding the shortest path of a device hands the report to its other path.
        let cfg = FsConfig { mounts_exclude: vec!["/home".into()], ..FsConfig::default() };
        let v: HashMap<String, Verdict> =
            select(&mi.0, &cfg).into_iter().map(|(m, v)| (m.mount, v)).collect();
        assert_eq!(v["/home"], Verdict::ExcludedMount);
        assert_eq!(v["/srv/alice"], Verdict::Report);

        // An emptied type list reports the pseudo filesystems too.
        let cfg = FsConfig { fstypes_exclude: vec![], ..FsConfig::default() };
        let v: HashMap<String, Verdict> =
            select(&mi.0, &cfg).into_iter().map(|(m, v)| (m.mount, v)).collect();
        assert_eq!(v["/proc"], Verdict::Report);
    }

    #[test]
    fn config_validation() {
        assert!(FsConfig::default().validate().is_empty());
        let bad = FsConfig { mounts_exclude: vec!["/ok".into(), "relative".into()], ..FsConfig::default() };
        assert_eq!(
            bad.validate(),
            vec![("mounts_exclude".to_string(), "must be absolute paths, got \"relative\"".to_string())]
        );
    }

    /// The real mount table: every sample is a mount the rules let through, with a value in
    /// 0..=100; and every mount the rules let through that really has blocks is sampled.
    /// On this machine `/` is ext4; where it is overlay (a container) the test still checks
    /// that its absence is the documented fstype rule.
    #[actix_rt::test]
    async fn live_host() {
        use procfs::FromRead;
        let config = FsConfig::default();
        let mut c = Fs::new(&config, &Env::default());
        let s = collect_guarded(&mut c).await.unwrap();
        let mi = procfs::process::MountInfos::from_file("/proc/self/mountinfo").unwrap();
        let plan = select(&mi.0, &config);
        let sampled: HashSet<&str> = s.iter().map(|x| x.tags["mount"].as_str()).collect();
        for x in &s {
            assert!((0.0..=100.0).contains(&x.value), "{x:?}");
            let (_, v) =
                plan.iter().find(|(m, _)| m.mount == x.tags["mount"]).expect("sampled mount is in mountinfo");
            assert_eq!(*v, Verdict::Report, "{x:?}");
            assert!(!DEFAULT_FSTYPES_EXCLUDE.contains(&x.tags["fstype"].as_str()), "{x:?}");
        }
        for (m, v) in &plan {
            let has_blocks = statvfs(Path::new(&m.mount)).map(|s| s.blocks > 0).unwrap_or(false);
            if *v == Verdict::Report && has_blocks {
                assert!(sampled.contains(m.mount.as_str()), "{m:?} should be sampled: {s:?}");
            }
        }
        let root = plan.iter().rev().find(|(m, _)| m.mount == "/").expect("/ is mounted").0.clone();
        if DEFAULT_FSTYPES_EXCLUDE.contains(&root.fstype.as_str()) {
            assert!(!sampled.contains("/"));
        } else {
            assert!(sampled.contains("/"), "root filesystem ({}) missing: {s:?}", root.fstype);
        }
    }
}
