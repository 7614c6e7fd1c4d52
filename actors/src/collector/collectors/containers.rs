//! `containers`: CPU and memory of each container on the host (CONTRACT §4:
//! container_cpu_util, container_mem_bytes, tagged {container, pod, namespace}).
//!
//! # Finding containers
//!
//! Containers are cgroups. The collector walks the cgroup tree under `/sys/fs/cgroup` (at
//! most [`MAX_DEPTH`] levels, never following symlinks) and takes a directory for a
//! container when its name says so ([`container_id`]):
//!
//! | runtime | directory name |
//! |---|---|
//! | docker (systemd driver) | `docker-<64 hex>.scope` |
//! | docker (cgroupfs driver) | `<64 hex>` inside a directory named `docker` |
//! | containerd / CRI | `cri-containerd-<64 hex>.scope` |
//! | CRI-O | `crio-<64 hex>.scope` (not `crio-conmon-…`) |
//! | podman / libpod | `libpod-<64 hex>.scope` or `libpod-<64 hex>` (not `libpod-conmon-…`) |
//! | Kubernetes (cgroupfs driver) | `<64 hex>` inside a `pod<uid>` directory under `kubepods` |
//!
//! Below a directory whose path contains `kubepods`, a `pod<uid>` directory (cgroupfs
//! driver) or `kubepods-<qos>-pod<uid>.slice` (systemd driver, `_` standing for `-`) names
//! the pod of the containers under it. A container's directory is walked further too, so
//! containers nested in a container (kind, docker-in-docker) are found; each id is reported
//! once, at the first place the walk meets it.
//!
//! Only the first collection walks everything: the tree is remembered, and inotify tells
//! which directories appeared or went since ([`tree`]), so an unchanged host costs one
//! non-blocking read plus the two files of each container. Those files are held open and
//! re-read with `pread` (up to half the descriptor limit, which the collector raises toward
//! its hard limit, at most 16,384); a file whose cgroup went is closed at the next collection.
//!
//! # Tags
//!
//! `container` is the 12-character short id (what `docker ps` and `crictl ps` print).
//! `pod` is the pod UID from the cgroup path, `namespace` the content of
//! `/proc/<pid>/root/var/run/secrets/kubernetes.io/serviceaccount/namespace` for a process
//! of any container of that pod (remembered per pod while the pod lives; a pod whose token
//! cannot be read yet is looked at again after 30 s, not every collection). A tag that is not
//! known is **omitted**, not sent empty: outside Kubernetes there is no pod, and a pod
//! without a mounted service account token has no readable namespace.
//!
//! # What is measured
//!
//! - `container_cpu_util`: CPU time the container used between two collections divided by
//!   the wall time between them and by the host's CPU count: percent of the host's whole
//!   CPU capacity, 0-100 like every utilisation of CONTRACT §4 (one busy CPU on a 4-CPU
//!   host reads 25; `docker stats` would say 100). Read from `usage_usec` in cgroup v2
//!   `cpu.stat`, or `cpuacct.usage` (ns) in cgroup v1. The first collection (and the first
//!   one that sees a new container) only records the counter; a counter that went down
//!   (the cgroup was recreated under the same id) skips that container for one interval.
//! - `container_mem_bytes`: cgroup v2 `memory.current`, or v1 `memory.usage_in_bytes`
//!   (both include the page cache the container charged).
//!
//! # cgroup v1 and v2
//!
//! With `/sys/fs/cgroup/cgroup.controllers` present the host runs cgroup v2 (unified) and one
//! tree has both files. Otherwise (v1, or the hybrid layout where the v2 tree carries no
//! controllers) the `cpuacct` hierarchy gives the CPU counter and the `memory` hierarchy
//! the memory, each walked the same way and joined by container id.
//!
//! A host without cgroups or without containers yields no samples and no error, and logs at
//! most at debug level.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::collector::{CollectError, Collector, CollectorConfig, Env, Sample};
use crate::sample::{Metric, Unit};

pub mod tree;
use tree::Tree;

/// How many directory levels below a hierarchy's root the walk goes. Kubernetes under the
/// systemd driver puts containers at depth 4, rootless podman at 5, kind (Kubernetes inside
/// a docker container) at 7.
pub const MAX_DEPTH: usize = 10;

/// Pids of a container tried when looking for its pod's namespace.
const NAMESPACE_PIDS_TRIED: usize = 8;

/// `[collectors.containers]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainersConfig {
    /// Collect per-container CPU and memory.
    pub enabled: bool,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl CollectorConfig for ContainersConfig {
    fn enabled(&self) -> bool {
        self.enabled
    }
}

/// A container cgroup the walk found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The full 64-hex id.
    pub id: String,
    /// The pod UID, under Kubernetes.
    pub pod: Option<String>,
    pub dir: PathBuf,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The container id a cgroup directory called `name` stands for, if any. `parent` is the
/// name of the directory holding it; `in_pod` tells whether a Kubernetes pod directory is
/// among its ancestors.
pub fn container_id<'a>(name: &'a str, parent: &str, in_pod: bool) -> Option<&'a str> {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    for prefix in ["docker-", "cri-containerd-", "crio-", "libpod-"] {
        if let Some(id) = stem.strip_prefix(prefix).filter(|id| is_hex64(id)) {
            return Some(id);
        }
    }
    (is_hex64(name) && (parent == "docker" || in_pod)).then_some(name)
}

/// The pod UID a directory below `kubepods` names: `pod<uid>` (cgroupfs driver) or
/// `kubepods[-<qos>]-pod<uid with _ for ->.slice` (systemd driver).
pub fn pod_uid(name: &str) -> Option<String> {
    let uid = if let Some(slice) = name.strip_suffix(".slice") {
        slice.rsplit_once("-pod")?.1.replace('_', "-")
    } else {
        name.strip_prefix("pod")?.to_string()
    };
    let valid = !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid.then_some(uid)
}

/// Walks one cgroup hierarchy from `root`, depth-first in name order, and returns the
/// container cgroups in the order met. Unreadable directories are skipped. (A collection
/// keeps a [`Tree`] instead, which follows changes rather than walking again.)
pub fn find(root: &Path) -> Vec<Found> {
    Tree::unwatched(root.to_path_buf()).refresh()
}

// The cgroup files read below hold one number, or `key value` lines; the procfs crate has
// no parser for them (it covers /proc, not /sys/fs/cgroup), so they are parsed here.

fn parse_u64(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

/// `usage_usec` from a cgroup v2 `cpu.stat`, in nanoseconds.
fn parse_cpu_stat_ns(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    let usec: u64 = text.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
    usec.checked_mul(1000)
}

/// The containers' cgroup files, held open between collections while the descriptor budget
/// allows (a `pread` on a held file costs a fraction of an open, read and close), and read
/// into one reused buffer. Keyed by the path's bytes, built in a reused buffer: hashing and
/// comparing `Path`s component by component, and a `PathBuf` per read, were most of the
/// collector's own instructions with hundreds of containers.
pub struct Files {
    held: HashMap<OsString, (std::fs::File, u64)>,
    /// At most this many held at once; the rest are opened for each read.
    budget: usize,
    /// Collection number: files not read in the latest are closed.
    generation: u64,
    /// The path being read (`dir/name`).
    path: OsString,
    /// Zeroed once; `len` bytes of it hold the last content read.
    buf: Vec<u8>,
}

impl Files {
    pub fn new(budget: usize) -> Self {
        Self { held: HashMap::new(), budget, generation: 0, path: OsString::new(), buf: vec![0; 4096] }
    }

    /// How many files are held open.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The whole content of `dir/name` (empty when it cannot be read: gone, or no such file).
    fn read(&mut self, dir: &Path, name: &str) -> &[u8] {
        self.path.clear();
        self.path.push(dir.as_os_str());
        self.path.push("/");
        self.path.push(name);
        if let Some((file, used)) = self.held.get_mut(self.path.as_os_str()) {
            *used = self.generation;
            if let Ok(n) = read_whole(file, &mut self.buf) {
                return &self.buf[..n];
            }
            // The cgroup went (ENODEV) or was recreated: open it again below.
            self.held.remove(self.path.as_os_str());
        }
        let Ok(file) = std::fs::File::open(&self.path) else { return &[] };
        let Ok(n) = read_whole(&file, &mut self.buf) else { return &[] };
        if self.held.len() < self.budget {
            self.held.insert(self.path.clone(), (file, self.generation));
        }
        &self.buf[..n]
    }

    /// Closes the files of containers not seen in this collection and starts the next.
    fn end_collection(&mut self) {
        let current = self.generation;
        self.held.retain(|_, (_, used)| *used == current);
        self.generation += 1;
    }
}

/// Reads all of `file` from offset 0 into `buf` (grown when full); how many bytes. A cgroup
/// file (kernfs) hands over its whole content in one read when the buffer is larger, so a
/// read that leaves room is the end: one `pread` per file, no second, empty one.
fn read_whole(file: &std::fs::File, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut len = 0;
    loop {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(n) if len + n < buf.len() => return Ok(len + n),
            Ok(n) => {
                len += n;
                buf.resize(buf.len() * 2, 0);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How many cgroup files may be held open: half the soft `RLIMIT_NOFILE`, after raising it
/// toward the hard limit (to at most 16,384; as Go does for its programs), at most 4,096.
fn file_budget() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), max) = (lim.current, lim.maximum) {
        let want = max.unwrap_or(u64::MAX).min(16_384);
        if cur < want {
            lim.current = Some(want);
            if setrlimit(Resource::Nofile, lim).is_err() {
                lim.current = Some(cur);
            }
        }
    }
    let soft = lim.current.unwrap_or(4096 * 2);
    usize::try_from(soft / 2).unwrap_or(4096).min(4096)
}

/// CPU used between two readings of a cumulative counter, in percent of `cpus` CPUs
/// (0 is taken as 1); `None` when the counter went down (reset) or no time passed.
pub fn cpu_util(prev_ns: u64, now_ns: u64, elapsed: Duration, cpus: usize) -> Option<f64> {
    let used = now_ns.checked_sub(prev_ns)?;
    let wall = elapsed.as_nanos();
    (wall > 0).then(|| used as f64 / wall as f64 * 100.0 / cpus.max(1) as f64)
}

/// One container's readings in one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub id: String,
    pub pod: Option<String>,
    /// Cumulative CPU time, ns.
    pub cpu_ns: Option<u64>,
    pub mem_bytes: Option<u64>,
    /// The container's cgroup directory (the first one found), for its pids.
    pub dir: PathBuf,
}

/// Which cgroup layout the host has.
enum Layout {
    /// cgroup v2: one tree.
    Unified(PathBuf),
    /// cgroup v1 (or hybrid): the cpuacct and memory hierarchies, where mounted.
    Legacy { cpuacct: Option<PathBuf>, memory: Option<PathBuf> },
}

fn layout(env: &Env) -> Option<Layout> {
    let base = env.path("/sys/fs/cgroup");
    if base.join("cgroup.controllers").is_file() {
        return Some(Layout::Unified(base));
    }
    // `cpuacct` is often a symlink to `cpu,cpuacct`; following it at the top is intended.
    let cpuacct = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
        .iter()
        .map(|d| base.join(d))
        .find(|d| d.join("cpuacct.usage").is_file());
    let memory = Some(base.join("memory")).filter(|d| d.join("memory.usage_in_bytes").is_file());
    (cpuacct.is_some() || memory.is_some()).then_some(Layout::Legacy { cpuacct, memory })
}

/// The hierarchy `root`'s tree, kept in `trees` (made on first use).
fn tree_of<'a>(trees: &'a mut Vec<Tree>, root: &Path) -> &'a mut Tree {
    let at = match trees.iter().position(|t| t.root() == root) {
        Some(at) => at,
        None => {
            trees.push(Tree::new(root.to_path_buf()));
            trees.len() - 1
        }
    };
    &mut trees[at]
}

/// Every container's readings, first-found order, one entry per id.
fn read_all(env: &Env, trees: &mut Vec<Tree>, files: &mut Files) -> Vec<Reading> {
    let mut out: Vec<Reading> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut add = |f: Found, cpu_ns: Option<u64>, mem_bytes: Option<u64>| match index.get(&f.id) {
        Some(&i) => {
            let r = &mut out[i];
            r.cpu_ns = r.cpu_ns.or(cpu_ns);
            r.mem_bytes = r.mem_bytes.or(mem_bytes);
            r.pod = r.pod.take().or(f.pod);
        }
        None => {
            index.insert(f.id.clone(), out.len());
            out.push(Reading { id: f.id, pod: f.pod, cpu_ns, mem_bytes, dir: f.dir });
        }
    };
    let roots: Vec<PathBuf> = match layout(env) {
        None => {
            tracing::debug!("No cgroup hierarchy with cpu or memory accounting; no containers.");
            Vec::new()
        }
        Some(Layout::Unified(root)) => {
            for f in tree_of(trees, &root).refresh() {
                let cpu = parse_cpu_stat_ns(files.read(&f.dir, "cpu.stat"));
                let mem = parse_u64(files.read(&f.dir, "memory.current"));
                add(f, cpu, mem);
            }
            vec![root]
        }
        Some(Layout::Legacy { cpuacct, memory }) => {
            if let Some(root) = &cpuacct {
                for f in tree_of(trees, root).refresh() {
                    let cpu = parse_u64(files.read(&f.dir, "cpuacct.usage"));
                    add(f, cpu, None);
                }
            }
            if let Some(root) = &memory {
                for f in tree_of(trees, root).refresh() {
                    let mem = parse_u64(files.read(&f.dir, "memory.usage_in_bytes"));
                    add(f, None, mem);
                }
            }
            cpuacct.into_iter().chain(memory).collect()
        }
    };
    trees.retain(|t| roots.iter().any(|r| r == t.root()));
    files.end_collection();
    out
}

/// The namespace of the pod `dir` belongs to, from the service account token mounted into
/// one of its processes (pids of `dir` and of its direct children: under cgroup v2 the
/// processes may sit one level down).
fn read_namespace(env: &Env, dir: &Path) -> Option<String> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        dirs.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    let pids = dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|text| text.lines().filter_map(|l| l.trim().parse::<u32>().ok()).collect::<Vec<_>>());
    pids.take(NAMESPACE_PIDS_TRIED).find_map(|pid| {
        let file =
            env.path(&format!("/proc/{pid}/root/var/run/secrets/kubernetes.io/serviceaccount/namespace"));
        let ns = std::fs::read_to_string(file).ok()?.trim().to_string();
        (!ns.is_empty()).then_some(ns)
    })
}

/// How long a pod whose namespace could not be read waits before the next look (its
/// processes may not have started yet; looking reads `cgroup.procs` files and lists a
/// directory, too much to repeat for every pod every collection).
const NAMESPACE_RETRY: Duration = Duration::from_secs(30);

struct Namespace {
    name: Option<String>,
    retry_at: Instant,
}

pub struct Containers {
    env: Env,
    /// Per container id: its CPU counter (ns) and when it was read, from the last collection.
    prev: HashMap<String, (u64, Instant)>,
    /// Pod UID -> its namespace once found, or when to look again; forgotten when the pod's
    /// last container goes.
    namespaces: HashMap<String, Namespace>,
    /// Host CPUs, the denominator of container_cpu_util.
    cpus: usize,
    /// The cgroup hierarchies' trees, followed between collections.
    trees: Vec<Tree>,
    files: Files,
}

impl Containers {
    /// One collection as of `now` (tests pass their own clock).
    fn collect_at(&mut self, now: Instant, out: &mut Vec<Sample>) {
        let readings = read_all(&self.env, &mut self.trees, &mut self.files);

        let pods: HashSet<&str> = readings.iter().filter_map(|r| r.pod.as_deref()).collect();
        self.namespaces.retain(|pod, _| pods.contains(pod.as_str()));
        for r in &readings {
            if let Some(pod) = &r.pod {
                let due = self.namespaces.get(pod).is_none_or(|n| n.name.is_none() && now >= n.retry_at);
                if due {
                    let name = read_namespace(&self.env, &r.dir);
                    self.namespaces.insert(pod.clone(), Namespace { name, retry_at: now + NAMESPACE_RETRY });
                }
            }
        }

        let mut prev = std::mem::take(&mut self.prev);
        for r in &readings {
            let tagged = |name: &str, value: f64| {
                let mut s = Sample::new(name, value).tag("container", &r.id[..12]);
                if let Some(pod) = &r.pod {
                    s = s.tag("pod", pod);
                    if let Some(ns) = self.namespaces.get(pod).and_then(|n| n.name.as_ref()) {
                        s = s.tag("namespace", ns);
                    }
                }
                s
            };
            if let Some(now_ns) = r.cpu_ns {
                if let Some((prev_ns, then)) = prev.remove(&r.id) {
                    if let Some(u) = cpu_util(prev_ns, now_ns, now.saturating_duration_since(then), self.cpus)
                    {
                        out.push(tagged("container_cpu_util", u));
                    }
                }
                self.prev.insert(r.id.clone(), (now_ns, now));
            }
            if let Some(m) = r.mem_bytes {
                out.push(tagged("container_mem_bytes", m as f64));
            }
        }
    }
}

impl Collector for Containers {
    const NAME: &'static str = "containers";
    const METRICS: &'static [Metric] = &[
        Metric::gauge("container_cpu_util", Unit::Percent, "CPU used by the container over the last interval (1 = one CPU)."),
        Metric::gauge("container_mem_bytes", Unit::Bytes, "Memory used by the container."),
    ];
    type Config = ContainersConfig;

    fn new(_: &ContainersConfig, env: &Env) -> Self {
        Self {
            env: env.clone(),
            prev: HashMap::new(),
            namespaces: HashMap::new(),
            cpus: super::load::cpu_count(env),
            trees: Vec::new(),
            files: Files::new(if env.root == Path::new("/") { file_budget() } else { 64 }),
        }
    }

    async fn collect(&mut self, out: &mut Vec<Sample>) -> Result<(), CollectError> {
        self.collect_at(Instant::now(), out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::collect_guarded;
    use crate::collector::testutil::fixture;

    const DOCKER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const APP: &str = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000001";
    const PAUSE: &str = "bbbbbbbbbbbb0000000000000000000000000000000000000000000000000002";
    const PODMAN: &str = "cccccccccccc0000000000000000000000000000000000000000000000000003";
    const POD: &str = "1b2c3d4e-0000-4000-8000-123456789abc";

    /// (name, container short id) -> (value, pod, namespace)
    type Table = HashMap<(String, String), (f64, Option<String>, Option<String>)>;

    fn table(s: &[Sample]) -> Table {
        let t: Table = s
            .iter()
            .map(|x| {
                (
                    (x.name.clone(), x.tags["container"].clone()),
                    (x.value, x.tags.get("pod").cloned(), x.tags.get("namespace").cloned()),
                )
            })
            .collect();
        assert_eq!(t.len(), s.len(), "one sample per metric and container: {s:?}");
        t
    }

    fn get(t: &Table, name: &str, id: &str) -> Option<f64> {
        t.get(&(name.to_string(), id[..12].to_string())).map(|v| v.0)
    }

    #[test]
    fn names_that_are_containers() {
        let id = DOCKER;
        assert_eq!(container_id(&format!("docker-{id}.scope"), "system.slice", false), Some(id));
        assert_eq!(container_id(&format!("cri-containerd-{id}.scope"), "x", false), Some(id));
        assert_eq!(container_id(&format!("crio-{id}.scope"), "x", false), Some(id));
        assert_eq!(container_id(&format!("libpod-{id}.scope"), "user.slice", false), Some(id));
        assert_eq!(container_id(&format!("libpod-{id}"), "libpod_parent", false), Some(id));
        assert_eq!(container_id(id, "docker", false), Some(id));
        assert_eq!(container_id(id, "pod1234", true), Some(id));
        // Not containers:
        assert_eq!(container_id(id, "system.slice", false), None, "bare id outside docker/ or a pod");
        assert_eq!(container_id(&format!("crio-conmon-{id}.scope"), "x", false), None);
        assert_eq!(container_id(&format!("libpod-conmon-{id}.scope"), "x", false), None);
        assert_eq!(container_id("docker-0123.scope", "x", false), None, "short id");
        assert_eq!(container_id(&format!("docker-{}.scope", id.to_uppercase()), "x", false), None);
        assert_eq!(container_id("b8244681158ca38d4fb11e7d3ca17ea3", "process_api", false), None);
        assert_eq!(container_id("docker.service", "system.slice", false), None);

        assert_eq!(
            pod_uid("kubepods-burstable-pod1b2c3d4e_0000_4000_8000_123456789abc.slice").as_deref(),
            Some(POD)
        );
        assert_eq!(pod_uid("kubepods-pod1b2c3d4e_0000_4000_8000_123456789abc.slice").as_deref(), Some(POD));
        assert_eq!(pod_uid("pod1b2c3d4e-0000-4000-8000-123456789abc").as_deref(), Some(POD));
        assert_eq!(
            pod_uid("pod0123456789abcdef0123456789abcdef").as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(pod_uid("kubepods-burstable.slice"), None);
        assert_eq!(pod_uid("kubepods.slice"), None);
        assert_eq!(pod_uid("burstable"), None);
        assert_eq!(pod_uid("pod"), None);
        assert_eq!(pod_uid("podman.slice"), None);
    }

    #[test]
    fn rate_arithmetic() {
        let ten = Duration::from_secs(10);
        assert_eq!(cpu_util(5_000_000_000, 7_500_000_000, ten, 1), Some(25.0));
        assert_eq!(cpu_util(0, 20_000_000_000, ten, 4), Some(50.0), "two busy CPUs of four read 50");
        assert_eq!(cpu_util(0, 20_000_000_000, ten, 2), Some(100.0), "never above 100 on a real host");
        assert_eq!(cpu_util(7, 7, ten, 2), Some(0.0));
        assert_eq!(cpu_util(20_000_000_000, 15_000_000_000, ten, 1), None, "counter went down");
        assert_eq!(cpu_util(u64::MAX - 5, 3, ten, 1), None, "wrap is a reset too");
        assert_eq!(cpu_util(1, 2, Duration::ZERO, 1), None);
    }

    #[test]
    fn walk_is_bounded_and_ordered() {
        let found = find(&fixture("cgroup-1").path("/sys/fs/cgroup"));
        let ids: Vec<(&str, Option<&str>)> =
            found.iter().map(|f| (f.id.as_str(), f.pod.as_deref())).collect();
        assert_eq!(
            ids,
            vec![(APP, Some(POD)), (PAUSE, Some(POD)), (DOCKER, None)],
            "the one too deep is not found"
        );
    }

    /// Two readings 10 s apart (cgroup v2): docker used 2.5 s of CPU (25 %), the pause
    /// container 0.1 s (1 %), the app's counter went down (recreated: no CPU sample), and a
    /// podman container appeared (memory only until its second reading).
    #[actix_rt::test]
    async fn v2_fixture_values() {
        let mut c = Containers::new(&ContainersConfig::default(), &fixture("cgroup-1"));
        let t0 = Instant::now();
        let mut s = Vec::new();
        c.collect_at(t0, &mut s);
        let t = table(&s);
        assert_eq!(t.len(), 3, "first reading: memory only: {s:?}");
        assert_eq!(get(&t, "container_mem_bytes", DOCKER), Some(104857600.0));
        assert_eq!(get(&t, "container_mem_bytes", APP), Some(52428800.0));
        assert_eq!(get(&t, "container_mem_bytes", PAUSE), Some(1048576.0));

        c.env = fixture("cgroup-2");
        let mut s = Vec::new();
        c.collect_at(t0 + Duration::from_secs(10), &mut s);
        let t = table(&s);
        assert_eq!(get(&t, "container_cpu_util", DOCKER), Some(25.0));
        assert_eq!(get(&t, "container_cpu_util", PAUSE), Some(1.0));
        assert_eq!(get(&t, "container_cpu_util", APP), None, "reset");
        assert_eq!(get(&t, "container_cpu_util", PODMAN), None, "new");
        assert_eq!(get(&t, "container_mem_bytes", DOCKER), Some(110100480.0));
        assert_eq!(get(&t, "container_mem_bytes", APP), Some(60000000.0));
        assert_eq!(get(&t, "container_mem_bytes", PAUSE), Some(1048576.0));
        assert_eq!(get(&t, "container_mem_bytes", PODMAN), Some(4096.0));
        assert_eq!(t.len(), 6);

        let tags = |id: &str| {
            let (_, pod, ns) = &t[&("container_mem_bytes".to_string(), id[..12].to_string())];
            (pod.clone(), ns.clone())
        };
        let k8s = (Some(POD.to_string()), Some("payments".to_string()));
        assert_eq!(tags(APP), k8s);
        // cgroup-2 has no /proc: the namespace was remembered from the first reading. The
        // pause container has no token of its own; it gets its pod's namespace.
        assert_eq!(tags(PAUSE), k8s);
        assert_eq!(tags(DOCKER), (None, None), "no pod tags outside Kubernetes");
        assert_eq!(tags(PODMAN), (None, None));
        assert!(s.iter().all(|x| x.tags.len() == if x.tags.contains_key("pod") { 3 } else { 1 }));

        // A third reading with the app's counter moving again: it is measured from the
        // reset value, and the vanished state of the second reading was dropped.
        c.env = fixture("cgroup-1");
        let mut s = Vec::new();
        c.collect_at(t0 + Duration::from_secs(20), &mut s);
        let t = table(&s);
        // 15 s -> 20 s of CPU in 10 s.
        assert_eq!(get(&t, "container_cpu_util", APP), Some(50.0));
        assert_eq!(get(&t, "container_cpu_util", DOCKER), None, "went from 7.5 s back to 5 s");
        assert!(!c.prev.contains_key(PODMAN), "gone containers are forgotten");
    }

    /// cgroup v1: cpuacct.usage (ns) and memory.usage_in_bytes from separate hierarchies,
    /// 5 s apart; Kubernetes with the cgroupfs driver.
    #[actix_rt::test]
    async fn v1_fixture_values() {
        let mut c = Containers::new(&ContainersConfig::default(), &fixture("cgroup-v1-1"));
        let t0 = Instant::now();
        let mut s = Vec::new();
        c.collect_at(t0, &mut s);
        assert!(s.iter().all(|x| x.name == "container_mem_bytes"), "{s:?}");
        c.env = fixture("cgroup-v1-2");
        let mut s = Vec::new();
        c.collect_at(t0 + Duration::from_secs(5), &mut s);
        let t = table(&s);
        assert_eq!(get(&t, "container_cpu_util", DOCKER), Some(10.0));
        assert_eq!(get(&t, "container_cpu_util", APP), Some(40.0));
        assert_eq!(get(&t, "container_mem_bytes", DOCKER), Some(2097152.0));
        assert_eq!(get(&t, "container_mem_bytes", APP), Some(3145728.0));
        assert_eq!(t.len(), 4);
        let app = &t[&("container_cpu_util".to_string(), APP[..12].to_string())];
        assert_eq!((app.1.as_deref(), app.2.as_deref()), (Some(POD), Some("default")));
    }

    #[actix_rt::test]
    async fn no_cgroups_no_samples_no_error() {
        let mut c = Containers::new(&ContainersConfig::default(), &fixture("fs-1"));
        assert_eq!(collect_guarded(&mut c).await.unwrap(), vec![]);
        assert_eq!(collect_guarded(&mut c).await.unwrap(), vec![]);
    }

    /// A pod whose namespace cannot be read yet is looked at again after NAMESPACE_RETRY,
    /// not at every collection.
    #[test]
    fn unreadable_namespace_is_retried_later_not_every_collection() {
        let t = tempfile::tempdir().unwrap();
        let cg = t.path().join("sys/fs/cgroup");
        let dir = cg.join(format!("kubepods/pod1111-2222/{APP}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(cg.join("cgroup.controllers"), "cpu memory\n").unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "4242\n").unwrap();
        let env = Env { root: t.path().to_path_buf(), ..Env::default() };
        let mut c = Containers::new(&ContainersConfig::default(), &env);
        let ns_of = |s: &[Sample]| s.iter().find_map(|x| x.tags.get("namespace").cloned());
        let t0 = Instant::now();
        let mut s = Vec::new();
        c.collect_at(t0, &mut s);
        assert_eq!(ns_of(&s), None);
        let token = t.path().join("proc/4242/root/var/run/secrets/kubernetes.io/serviceaccount");
        std::fs::create_dir_all(&token).unwrap();
        std::fs::write(token.join("namespace"), "payments\n").unwrap();
        let mut s = Vec::new();
        c.collect_at(t0 + Duration::from_secs(10), &mut s);
        assert_eq!(ns_of(&s), None, "not looked at again yet");
        let mut s = Vec::new();
        c.collect_at(t0 + NAMESPACE_RETRY + Duration::from_secs(1), &mut s);
        assert_eq!(ns_of(&s).as_deref(), Some("payments"));
    }

    /// Real cgroups named like a docker container (cgroupfs driver), removed again on drop.
    struct RealContainer {
        dirs: Vec<PathBuf>,
        busy: Option<std::process::Child>,
    }

    /// Parent cgroups a [`RealContainer`] made: the last one dropped removes them.
    static MADE_PARENTS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

    impl RealContainer {
        /// `/sys/fs/cgroup/{cpuacct,memory}/docker/<id>` (cgroup v1) or
        /// `/sys/fs/cgroup/vigil-test/docker-<id>.scope` (v2), with a busy process in it.
        fn make(id: &str) -> Self {
            let base = Path::new("/sys/fs/cgroup");
            let mut c = RealContainer { dirs: Vec::new(), busy: None };
            let parents: Vec<PathBuf> = if base.join("cgroup.controllers").is_file() {
                let p = base.join("vigil-test");
                c.dirs.push(p.join(format!("docker-{id}.scope")));
                vec![p]
            } else {
                let v: Vec<PathBuf> = ["cpuacct", "memory"].iter().map(|h| base.join(h).join("docker")).collect();
                c.dirs.extend(v.iter().map(|p| p.join(id)));
                v
            };
            for p in parents {
                if !p.exists() {
                    std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e} (run as root)", p.display()));
                    MADE_PARENTS.lock().unwrap_or_else(|e| e.into_inner()).push(p.clone());
                }
                if base.join("cgroup.controllers").is_file() {
                    std::fs::write(base.join("cgroup.subtree_control"), "+cpu +memory").unwrap();
                    std::fs::write(p.join("cgroup.subtree_control"), "+cpu +memory").unwrap();
                }
            }
            for d in &c.dirs {
                std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            }
            // The shell joins the cgroups first, then a new one allocates 2 MB and spins there
            // (memory is charged where it is allocated, not moved with a process).
            let join: String = c.dirs.iter().map(|d| format!("echo $$ > {}/cgroup.procs && ", d.display())).collect();
            let script = format!(r#"{join} exec sh -c 'x=$(head -c 2000000 /dev/zero | tr "\0" a); while :; do :; done'"#);
            c.busy = Some(std::process::Command::new("sh").args(["-c", &script]).spawn().unwrap());
            // Wait until it has joined them all.
            for d in &c.dirs {
                for _ in 0..100 {
                    if !std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().trim().is_empty() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            c
        }
    }

    impl Drop for RealContainer {
        fn drop(&mut self) {
            if let Some(mut b) = self.busy.take() {
                let _ = b.kill();
                let _ = b.wait();
            }
            for d in &self.dirs {
                // A cgroup is removable once its last task is reaped; that may lag a little.
                for _ in 0..50 {
                    if std::fs::remove_dir(d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            // Fails while another container is still in it; the last one succeeds.
            MADE_PARENTS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| std::fs::remove_dir(p).is_err());
        }
    }

    /// Real container cgroups: found, measured through held files, followed as they come and
    /// go without walking the hierarchy again.
    #[actix_rt::test]
    async fn real_cgroups_are_followed_without_rewalking() {
        let one = format!("{:08x}", std::process::id()).repeat(8);
        let two = format!("{:08x}", std::process::id() + 1).repeat(8);
        let mut c = Containers::new(&ContainersConfig::default(), &Env::default());
        let a = RealContainer::make(&one);
        collect_guarded(&mut c).await.unwrap();
        let walked: usize = c.trees.iter().map(|t| t.listed).sum();
        assert!(walked > 0 && c.trees.iter().all(|t| t.watching()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = collect_guarded(&mut c).await.unwrap();
        let t = table(&s);
        let cpu = get(&t, "container_cpu_util", &one).expect("the busy container's CPU");
        assert!(cpu > 5.0, "one busy process: {cpu} % of the host");
        assert!(get(&t, "container_mem_bytes", &one).unwrap() > 0.0);
        assert_eq!(c.trees.iter().map(|t| t.listed).sum::<usize>(), 0, "nothing changed, nothing listed");
        assert_eq!(c.files.held(), 2, "its two files stay open");

        let b = RealContainer::make(&two);
        let s = collect_guarded(&mut c).await.unwrap();
        assert!(get(&table(&s), "container_mem_bytes", &two).is_some(), "a new container is seen at once");
        assert!(c.trees.iter().map(|t| t.listed).sum::<usize>() <= 2, "only its directories are listed");
        drop(a);
        let s = collect_guarded(&mut c).await.unwrap();
        let t = table(&s);
        assert!(get(&t, "container_mem_bytes", &one).is_none(), "a removed container goes: {s:?}");
        assert!(get(&t, "container_mem_bytes", &two).is_some());
        assert_eq!(c.files.held(), 2, "the removed container's files are closed");
        drop(b);
    }

    /// The real host: Ok (this machine may have no containers at all), and whatever is found
    /// is well-formed and plausible.
    #[actix_rt::test]
    async fn live_host() {
        let mut c = Containers::new(&ContainersConfig::default(), &Env::default());
        collect_guarded(&mut c).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = collect_guarded(&mut c).await.unwrap();
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        for x in &s {
            let id = &x.tags["container"];
            assert!(id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{x:?}");
            match x.name.as_str() {
                // Sampling jitter allows a little above the CPU count.
                "container_cpu_util" => assert!(x.value >= 0.0 && x.value <= cpus * 100.0 * 1.5, "{x:?}"),
                "container_mem_bytes" => assert!(x.value >= 0.0, "{x:?}"),
                other => panic!("unexpected metric {other}"),
            }
        }
    }
}
