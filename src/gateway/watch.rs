//! Live reload from files: the config file's folder, every descriptor and mapping path and
//! the TLS files (the listener's certificate and key, upstreams' CAs and client
//! certificates) are watched, and a change reloads the gateway (refused when bad, like any reload).
//!
//! Files change in awkward ways: editors write a temp file and rename it over the original,
//! files are deleted and re-created, Kubernetes swaps a `..data` symlink under a ConfigMap
//! volume. So folders are watched, not files (a watch on a file follows its inode, which a
//! rename-over replaces), watches are re-registered after every batch of events (a folder
//! may have been replaced), and whether anything changed is decided by reading what the
//! loader reads, through symlinks, and comparing a fingerprint. Temp files, swap files and
//! a touched-but-unchanged file therefore do not reload.
//!
//! A watched folder may hold files that change all the time and that the loader never
//! reads (the gateway's own log next to its config file, say): events that only concern
//! such files are ignored, or every write would make the watcher read every file again.

use crate::config::GatewayConfig;
use crate::gateway::Gateway;
use notify::RecursiveMode;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Quiet time after the last event before a batch is handled: an editor's save or a
/// ConfigMap swap is several events within a few milliseconds.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The running watcher; dropping it stops watching.
pub struct FileWatch {
    task: JoinHandle<()>,
    batches: Arc<AtomicU64>,
}

impl FileWatch {
    /// Batches of file events handled so far (each one reads the files once).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching the gateway's files. When the platform cannot watch (for example the
/// inotify watch limit is reached), a warning is logged and SIGHUP and `POST
/// /admin/reload` remain the ways to reload.
pub fn spawn(gateway: Arc<Gateway>) -> FileWatch {
    let batches = Arc::new(AtomicU64::new(0));
    FileWatch {
        task: tokio::spawn(run(gateway, batches.clone())),
        batches,
    }
}

/// Whether an event can mean changed content. Opening and reading files is reported too
/// (inotify `IN_OPEN`), and the watcher and the loader read every watched file: reacting
/// to those would read them again, forever.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

async fn run(gateway: Arc<Gateway>, batches: Arc<AtomicU64>) {
    // Capacity 1: events that arrive while a reload runs coalesce into one more look.
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let look_again = tx.clone();
    let mut sources = Sources::of(&gateway.table().config);
    // What the loader reads, for the watcher's thread to sort events by.
    let read = Arc::new(RwLock::new(sources.clone()));
    let debouncer = new_debouncer(DEBOUNCE, None, {
        let read = read.clone();
        move |result: DebounceEventResult| match result {
            Ok(events) => {
                let read = read.read().unwrap_or_else(|e| e.into_inner());
                if events
                    .iter()
                    .any(|e| is_change(&e.kind) && read.may_concern(&e.paths))
                {
                    let _ = tx.try_send(());
                }
            }
            Err(errors) => {
                for error in errors {
                    tracing::warn!(%error, "file watch error");
                }
                // Events may have been lost (queue overflow): look at the files anyway.
                let _ = tx.try_send(());
            }
        }
    });
    let mut debouncer = match debouncer {
        Ok(debouncer) => debouncer,
        Err(error) => {
            tracing::warn!(%error, "cannot watch configuration files; reload with SIGHUP or POST /admin/reload");
            return;
        }
    };
    let config_path = gateway.config_path().to_path_buf();
    let mut watched: Vec<PathBuf> = Vec::new();
    rewatch(&mut debouncer, &mut watched, &sources);
    let mut last = sources.clone().fingerprint().await;
    tracing::debug!(paths = ?watched, "watching configuration files");

    while rx.recv().await.is_some() {
        batches.fetch_add(1, Ordering::Relaxed);
        // A watched folder may have been deleted and re-created (a new inode): watch anew.
        rewatch(&mut debouncer, &mut watched, &sources);
        let now = sources.clone().fingerprint().await;
        if now == last {
            continue;
        }
        if !config_path.exists() {
            // Mid-way through a delete and re-create: wait for the file to be back rather
            // than report an error that the next event would clear.
            tracing::info!(config = %config_path.display(), "configuration file is gone; waiting for it to return");
            continue;
        }
        last = now;
        tracing::info!("configuration files changed: reloading");
        if gateway.reload().await.is_ok() {
            // The new config may name other folders and files.
            let new_sources = Sources::of(&gateway.table().config);
            if new_sources != sources {
                sources = new_sources;
                *read.write().unwrap_or_else(|e| e.into_inner()) = sources.clone();
                rewatch(&mut debouncer, &mut watched, &sources);
                // A file in a newly named folder may have changed after the reload read it
                // and before its folder was watched: that event is lost. Look once more; the
                // fingerprint (over the old set) differs, so this reloads what is there now.
                let _ = look_again.try_send(());
            }
        }
    }
}

/// What the loader reads: the config file, the descriptor and mapping paths it names,
/// and the single files it names (TLS certificates and keys).
#[derive(Clone, PartialEq, Eq)]
struct Sources {
    config: PathBuf,
    descriptors: Vec<PathBuf>,
    mappings: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Sources {
    fn of(config: &GatewayConfig) -> Self {
        let mut files = Vec::new();
        if let Some(tls) = &config.tls {
            files.extend([tls.cert.clone(), tls.key.clone()]);
        }
        for upstream in config.upstreams.values() {
            let upstream = &upstream.value;
            let grpc = upstream.grpc.as_ref().and_then(|g| g.tls.as_ref());
            let amqp = upstream.amqp.as_ref().and_then(|a| a.tls.as_ref());
            files.extend(
                grpc.into_iter()
                    .chain(amqp)
                    .flat_map(|t| t.files().cloned()),
            );
        }
        Self {
            config: config.path.clone(),
            descriptors: config.descriptors.clone(),
            mappings: config.mappings.clone(),
            files,
        }
    }

    /// Folders to watch: the config file's folder, each descriptor or mapping folder (and
    /// its parent, to see the folder itself replaced), each named file's folder.
    fn folders(&self) -> BTreeMap<PathBuf, RecursiveMode> {
        let mut folders = BTreeMap::new();
        let mut add = |path: PathBuf, mode: RecursiveMode| {
            let entry = folders.entry(path).or_insert(mode);
            if mode == RecursiveMode::Recursive {
                *entry = mode;
            }
        };
        add(parent(&self.config), RecursiveMode::NonRecursive);
        for path in self.descriptors.iter().chain(&self.mappings) {
            if path.is_dir() {
                add(path.clone(), RecursiveMode::Recursive);
            }
            add(parent(path), RecursiveMode::NonRecursive);
        }
        for file in &self.files {
            add(parent(file), RecursiveMode::NonRecursive);
        }
        folders
    }

    /// Whether a change to `paths` may change what the loader reads: a path it reads, a
    /// path inside or above a descriptor or mapping path, or anything that is not a plain
    /// file (a folder or symlink replaced, as a ConfigMap update does; a file gone). Only
    /// events on other plain files (logs, editors' swap files) are left out.
    fn may_concern(&self, paths: &[PathBuf]) -> bool {
        // An event without paths (the watcher rescanned): look.
        paths.is_empty() || paths.iter().any(|path| self.may_read(path))
    }

    fn may_read(&self, path: &Path) -> bool {
        let path = plain(path);
        let read = std::iter::once(&self.config)
            .chain(&self.files)
            .any(|file| plain(file) == path);
        let under_or_above = self.descriptors.iter().chain(&self.mappings).any(|tree| {
            let tree = plain(tree);
            path.starts_with(&tree) || tree.starts_with(&path)
        });
        read || under_or_above
            || !std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file())
    }

    /// A hash of every file the loader would read (paths and contents, read through
    /// symlinks); a file that cannot be read hashes as its error kind.
    async fn fingerprint(self) -> u64 {
        tokio::task::spawn_blocking(move || {
            let mut errors = crate::config::LoadErrors::default();
            let mut files = vec![self.config.clone()];
            files.extend(self.files.iter().cloned());
            let mut descriptor_exts = vec!["proto"];
            descriptor_exts.extend_from_slice(crate::schema::DESCRIPTOR_SET_EXTENSIONS);
            files.extend(crate::config::collect_files(
                &self.descriptors,
                &descriptor_exts,
                &mut errors,
            ));
            files.extend(crate::config::collect_files(
                &self.mappings,
                &["yaml", "yml"],
                &mut errors,
            ));
            let mut hasher = DefaultHasher::new();
            for file in files {
                file.hash(&mut hasher);
                match std::fs::read(&file) {
                    Ok(bytes) => bytes.hash(&mut hasher),
                    Err(e) => format!("{:?}", e.kind()).hash(&mut hasher),
                }
            }
            // Missing folders change the outcome of a load too.
            for error in &errors.0 {
                error.to_string().hash(&mut hasher);
            }
            hasher.finish()
        })
        .await
        .unwrap_or_default()
    }
}

/// `path` without `.` components: the watcher reports `./x` for a file `x` of a folder
/// watched as `.`.
fn plain(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

type Debouncer = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// Drops every watch and registers the folders of `sources` again.
fn rewatch(debouncer: &mut Debouncer, watched: &mut Vec<PathBuf>, sources: &Sources) {
    for path in watched.drain(..) {
        // Fails when the folder is gone, which is why it is being watched anew.
        let _ = debouncer.unwatch(&path);
    }
    for (path, mode) in sources.folders() {
        match debouncer.watch(&path, mode) {
            Ok(()) => watched.push(path),
            // A folder that does not exist yet is seen from its parent's watch when it
            // appears, and registered on the next batch.
            Err(error) => tracing::debug!(path = %path.display(), %error, "not watched"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_files_the_loader_never_reads_are_left_out() {
        let root = &std::env::temp_dir().join(format!("sb-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(root);
        std::fs::create_dir(root).expect("temp dir");
        std::fs::create_dir(root.join("mappings")).expect("mappings");
        std::fs::create_dir(root.join("..2026_01_01")).expect("timestamped folder");
        std::os::unix::fs::symlink("..2026_01_01", root.join("..data")).expect("..data");
        for file in [
            "switchboard.yaml",
            "gateway.log",
            "cert.pem",
            "mappings/a.yaml",
        ] {
            std::fs::write(root.join(file), "x").expect("write");
        }
        let sources = Sources {
            config: root.join("switchboard.yaml"),
            descriptors: vec![root.join("protos")],
            mappings: vec![root.join("mappings")],
            files: vec![root.join("cert.pem")],
        };
        let concerns = |name: &str| sources.may_concern(&[root.join(name)]);
        assert!(!concerns("gateway.log"), "a busy log next to the config");
        for read in [
            "switchboard.yaml",
            "cert.pem",
            "mappings/a.yaml",
            "mappings",
            "protos",
            "protos/shop/v1/shop.proto",
            "..data",
            "..2026_01_01",
            "gone.yaml",
        ] {
            assert!(concerns(read), "{read}");
        }
        assert!(sources.may_concern(&[]), "a rescan");
        assert!(
            sources.may_concern(&[root.join("gateway.log"), root.join("switchboard.yaml")]),
            "a rename over the config file"
        );

        // A config named relative to the working folder, which is watched as `.`.
        let relative = Sources {
            config: PathBuf::from("switchboard.yaml"),
            descriptors: vec![],
            mappings: vec![PathBuf::from("mappings")],
            files: vec![],
        };
        assert!(relative.may_concern(&[PathBuf::from("./switchboard.yaml")]));
        assert!(relative.may_concern(&[PathBuf::from("./mappings/b.yaml")]));
        let _ = std::fs::remove_dir_all(root);
    }
}
