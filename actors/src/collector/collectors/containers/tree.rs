//! The container cgroups of one hierarchy, remembered between collections and re-walked only
//! where the tree changed.
//!
//! The first collection walks the whole hierarchy and puts an
//! inotify watch on every directory it lists. The kernel reports `mkdir`, `rmdir` and renames
//! in a watched directory as events on it, so later collections read the pending events
//! (one non-blocking `read`, nothing when nothing changed) and walk only the directories that
//! appeared; a directory that went is forgotten with everything under it. A collection on an
//! unchanged host lists no directory at all, so its cost grows with containers (two files
//! each), not with cgroup directories.
//!
//! Where inotify cannot be used (no instance, or `fs.inotify.max_user_watches` reached) the
//! tree is walked in full every collection, as before; that is logged once at warn. An
//! event queue overflow walks the tree again in full, once.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::{container_id, pod_uid, Found, MAX_DEPTH};


/// A directory below the root.
#[derive(Debug, Clone)]
struct Node {
    depth: usize,
    /// `kubepods` is in its path.
    kube: bool,
    /// The pod its path names, if any.
    pod: Option<String>,
    /// The container id its name gives, if any.
    id: Option<String>,
    /// Its inotify watch, when it was listed and watched.
    wd: Option<i32>,
}

pub struct Tree {
    root: PathBuf,
    inotify: Option<OwnedFd>,
    /// Watch descriptor → the directory it watches (the root is `root` itself).
    watched: HashMap<i32, PathBuf>,
    /// Every directory met below the root, in walk order (component-wise path order is the
    /// depth-first, name-ordered order of the full walk).
    dirs: BTreeMap<PathBuf, Node>,
    /// The whole tree has been walked at least once.
    built: bool,
    buf: Vec<MaybeUninit<u8>>,
    /// Directories listed by the last [`Tree::refresh`] (for tests and the bench).
    pub listed: usize,
}

const WATCH: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ONLYDIR);

impl Tree {
    pub fn new(root: PathBuf) -> Self {
        let inotify = match inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!("containers: no inotify instance ({e}); the cgroup tree is walked every collection.");
                None
            }
        };
        Self { inotify, ..Self::unwatched(root) }
    }

    /// A tree walked in full by every refresh.
    pub fn unwatched(root: PathBuf) -> Self {
        Self {
            root,
            inotify: None,
            watched: HashMap::new(),
            dirs: BTreeMap::new(),
            built: false,
            buf: vec![MaybeUninit::uninit(); 16 * 1024],
            listed: 0,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether changes are followed by inotify (else every refresh walks everything).
    pub fn watching(&self) -> bool {
        self.inotify.is_some()
    }

    /// Brings the tree up to date and returns the container cgroups in walk order.
    pub fn refresh(&mut self) -> Vec<Found> {
        self.listed = 0;
        if !self.built || self.inotify.is_none() || !self.apply_events() {
            self.rebuild();
        }
        self.dirs
            .iter()
            .filter_map(|(dir, n)| {
                Some(Found { id: n.id.clone()?, pod: n.pod.clone(), dir: dir.clone() })
            })
            .collect()
    }

    fn rebuild(&mut self) {
        if let Some(fd) = &self.inotify {
            for wd in self.watched.keys() {
                let _ = inotify::remove_watch(fd, *wd);
            }
        }
        self.watched.clear();
        self.dirs.clear();
        let root = self.root.clone();
        self.list(&root, "", 0, false, None);
        self.built = true;
    }

    /// Watches and lists `dir` (at `depth`, named `name`), adding its subdirectories and
    /// walking each one that is not too deep.
    fn list(&mut self, dir: &Path, name: &str, depth: usize, kube: bool, pod: Option<&str>) {
        // The watch first: a directory made between the listing and the watch is not missed.
        let wd = self.watch(dir);
        if let (Some(wd), Some(node)) = (wd, self.dirs.get_mut(dir)) {
            node.wd = Some(wd);
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        self.listed += 1;
        let children: Vec<(String, PathBuf)> = entries
            .flatten()
            // DirEntry::file_type does not follow symlinks: a link never leads the walk elsewhere.
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .collect();
        for (child, path) in children {
            self.add(path, &child, name, depth + 1, kube, pod);
        }
    }

    /// Adds the directory `path` named `child`, whose parent is named `parent` and has the
    /// given `kube`/`pod` context, and walks it when not too deep.
    fn add(&mut self, path: PathBuf, child: &str, parent: &str, depth: usize, kube: bool, pod: Option<&str>) {
        let kube = kube || child.contains("kubepods");
        let own_pod = if kube && pod.is_none() { pod_uid(child) } else { None };
        let pod = own_pod.or_else(|| pod.map(str::to_string));
        let id = container_id(child, parent, pod.is_some()).map(str::to_string);
        self.dirs.insert(path.clone(), Node { depth, kube, pod: pod.clone(), id, wd: None });
        if depth < MAX_DEPTH {
            self.list(&path, child, depth, kube, pod.as_deref());
        }
    }

    fn watch(&mut self, dir: &Path) -> Option<i32> {
        let fd = self.inotify.as_ref()?;
        match inotify::add_watch(fd, dir, WATCH) {
            Ok(wd) => {
                self.watched.insert(wd, dir.to_path_buf());
                Some(wd)
            }
            // Gone already: its parent's event says so.
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => None,
            Err(e) => {
                tracing::warn!(
                    "containers: cannot watch {} ({e}; see fs.inotify.max_user_watches); the cgroup tree is walked every collection from now on.",
                    dir.display()
                );
                self.inotify = None;
                self.watched.clear();
                None
            }
        }
    }

    /// Applies the pending events; `false` when the tree must be walked again in full.
    fn apply_events(&mut self) -> bool {
        let Some(fd) = self.inotify.take() else { return false };
        let mut changes: Vec<(PathBuf, ReadFlags, Vec<u8>)> = Vec::new();
        let mut full = false;
        {
            let mut reader = inotify::Reader::new(&fd, &mut self.buf);
            loop {
                match reader.next() {
                    Ok(ev) => {
                        let flags = ev.events();
                        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                            full = true;
                        } else if flags.contains(ReadFlags::IGNORED) {
                            self.watched.remove(&ev.wd());
                        } else if let (Some(dir), Some(name)) = (self.watched.get(&ev.wd()), ev.file_name()) {
                            changes.push((dir.clone(), flags, name.to_bytes().to_vec()));
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        tracing::warn!("containers: reading inotify events failed ({e}); walking the cgroup tree again.");
                        full = true;
                        break;
                    }
                }
            }
        }
        self.inotify = Some(fd);
        if full {
            return false;
        }
        for (dir, flags, name) in changes {
            let path = dir.join(OsStr::from_bytes(&name));
            if !flags.contains(ReadFlags::ISDIR) {
                continue;
            }
            // A rename away, a removal, or a stale entry before a re-creation: forget it all.
            self.forget(&path);
            if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                let Ok(child) = String::from_utf8(name) else { continue };
                let (parent, parent_name) = if dir == self.root {
                    (Some((0, false, None)), "")
                } else {
                    let parent = self.dirs.get(&dir).map(|n| (n.depth, n.kube, n.pod.clone()));
                    (parent, dir.file_name().and_then(OsStr::to_str).unwrap_or(""))
                };
                // Events of a directory already forgotten are dropped; so are ones below the depth bound.
                if let Some((depth, kube, pod)) = parent.filter(|p| p.0 < MAX_DEPTH) {
                    if path.is_dir() && !path.is_symlink() {
                        self.add(path, &child, parent_name, depth + 1, kube, pod.as_deref());
                    }
                }
            }
        }
        true
    }

    /// Removes `path` and everything below it, and their watches.
    fn forget(&mut self, path: &Path) {
        let gone: Vec<PathBuf> =
            self.dirs.range(path.to_path_buf()..).map(|(p, _)| p).take_while(|p| p.starts_with(path)).cloned().collect();
        for p in gone {
            if let Some(Node { wd: Some(wd), .. }) = self.dirs.remove(&p) {
                if let Some(fd) = &self.inotify {
                    let _ = inotify::remove_watch(fd, wd);
                }
                self.watched.remove(&wd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn ids(found: &[Found]) -> Vec<(String, Option<String>)> {
        found.iter().map(|f| (f.id[..1].to_string(), f.pod.clone())).collect()
    }

    /// Made, removed and renamed directories are followed without listing the rest again,
    /// and the result is what a full walk finds.
    #[test]
    fn follows_changes_listing_only_what_changed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let mk = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
        mk(&format!("system.slice/docker-{A}.scope"));
        mk("kubepods/burstable/pod1234-5678");
        for i in 0..50 {
            mk(&format!("user.slice/session-{i}.scope"));
        }
        let mut tree = Tree::new(root.to_path_buf());
        assert!(tree.watching());
        assert_eq!(ids(&tree.refresh()), vec![(A[..1].into(), None)]);
        assert!(tree.listed > 50, "first: a full walk ({})", tree.listed);

        assert_eq!(ids(&tree.refresh()), vec![(A[..1].into(), None)]);
        assert_eq!(tree.listed, 0, "nothing changed: nothing listed");

        mk(&format!("kubepods/burstable/pod1234-5678/{B}"));
        mk(&format!("system.slice/docker-{C}.scope/nested"));
        let found = tree.refresh();
        assert_eq!(
            ids(&found),
            vec![(B[..1].into(), Some("1234-5678".into())), (A[..1].into(), None), (C[..1].into(), None)]
        );
        assert_eq!(tree.listed, 3, "the two new directories and the one below C");
        assert_eq!(ids(&found), ids(&super::super::find(root)), "the same as a full walk");

        std::fs::remove_dir(root.join(format!("system.slice/docker-{A}.scope"))).unwrap();
        std::fs::rename(root.join("kubepods"), root.join("elsewhere")).unwrap();
        let found = tree.refresh();
        assert_eq!(ids(&found), vec![(C[..1].into(), None)], "B's pod is no longer under kubepods");
        assert_eq!(ids(&found), ids(&super::super::find(root)));
        // The renamed directory is walked again under its new name, its watches renewed.
        mk("elsewhere/burstable/x");
        tree.refresh();
        assert_eq!(tree.listed, 1, "a watch of the moved tree still reports");
    }

    #[test]
    fn without_inotify_every_refresh_walks_everything() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join(format!("docker/{A}"))).unwrap();
        let mut tree = Tree::unwatched(t.path().to_path_buf());
        assert_eq!(tree.refresh().len(), 1);
        assert_eq!(tree.listed, 3);
        std::fs::create_dir_all(t.path().join(format!("docker/{B}"))).unwrap();
        assert_eq!(tree.refresh().len(), 2);
        assert_eq!(tree.listed, 4);
    }
}
