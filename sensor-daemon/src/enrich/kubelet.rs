//! Pod name, namespace and container name without credentials: the
//! kubelet's log directories name them.
//!
//! | path | written by the kubelet for |
//! |---|---|
//! | `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` | every pod on the node, named by its UID |
//! | `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` | every container, a link into the above, named by its 64-hex id |
//!
//! Namespaces, pod names and container names are DNS labels or subdomains
//! (no `_`), so the `_`-separated parts are unambiguous. [`container`]
//! finds the pod UID and container id from the cgroup path; this module
//! turns them into names. A directory is listed again only on a miss, at
//! most once per [`RESCAN`], so a connection storm from an unknown pod
//! costs one listing per second, not one per connection. The maps are
//! bounded ([`MAX_ENTRIES`]); names learned are kept while their entry
//! exists. Nothing here needs the Kubernetes API or a token.
//!
//! [`container`]: super::container

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::container::ContainerInfo;

/// Shortest time between two listings of the same directory.
pub const RESCAN: Duration = Duration::from_secs(1);
/// Most pods (and containers) remembered; far above a node's pod limit.
pub const MAX_ENTRIES: usize = 16_384;

/// A pod's identity, from its log directory name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// What a listing of one directory gave, and when.
#[derive(Debug)]
struct Listing<V> {
    entries: HashMap<String, V>,
    listed: Option<Instant>,
}

impl<V> Default for Listing<V> {
    fn default() -> Self {
        Listing {
            entries: HashMap::new(),
            listed: None,
        }
    }
}

impl<V: Clone> Listing<V> {
    /// The entry for `key`, listing `dir` again on a miss (rate-limited).
    fn get(&mut self, key: &str, dir: &Path, parse: fn(&str) -> Option<(String, V)>) -> Option<V> {
        if let Some(v) = self.entries.get(key) {
            return Some(v.clone());
        }
        if self.listed.is_some_and(|t| t.elapsed() < RESCAN) {
            return None;
        }
        self.listed = Some(Instant::now());
        let Ok(read) = std::fs::read_dir(dir) else {
            return None;
        };
        let mut fresh = HashMap::new();
        for entry in read.flatten().take(MAX_ENTRIES) {
            if let Some((k, v)) = entry.file_name().to_str().and_then(parse) {
                fresh.insert(k, v);
            }
        }
        // What the directory lists now: entries of pods that are gone go.
        self.entries = fresh;
        self.entries.get(key).cloned()
    }
}

/// `<namespace>_<pod>_<uid>`: (uid, pod).
fn pod_dir(name: &str) -> Option<(String, PodName)> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || namespace.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    let pod = PodName {
        namespace: namespace.to_owned(),
        name: pod.to_owned(),
    };
    Some((uid.to_owned(), pod))
}

/// `<pod>_<namespace>_<container>-<64 hex>.log`: (id, container name).
fn container_link(name: &str) -> Option<(String, String)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = rest.split('_');
    let (_pod, _namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || container.is_empty() {
        return None;
    }
    Some((id.to_ascii_lowercase(), container.to_owned()))
}

/// Names from the kubelet's log directories (see the module doc).
#[derive(Debug)]
pub struct KubeletLogs {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    pods: Listing<PodName>,
    containers: Listing<String>,
}

impl KubeletLogs {
    /// `pods_dir` is `/var/log/pods`, `containers_dir` `/var/log/containers`
    /// on a node (mounted at the same paths in a DaemonSet).
    pub fn new(pods_dir: &Path, containers_dir: &Path) -> Self {
        KubeletLogs {
            pods_dir: pods_dir.to_owned(),
            containers_dir: containers_dir.to_owned(),
            pods: Listing::default(),
            containers: Listing::default(),
        }
    }

    /// This node's directories.
    pub fn host() -> Self {
        Self::new(Path::new("/var/log/pods"), Path::new("/var/log/containers"))
    }

    /// The pod with this UID, if the kubelet keeps logs for it here.
    pub fn pod(&mut self, uid: &str) -> Option<PodName> {
        self.pods.get(uid, &self.pods_dir, pod_dir)
    }

    /// The name of the container with this (64-hex) id.
    pub fn container_name(&mut self, id: &str) -> Option<String> {
        let id = id.to_ascii_lowercase();
        self.containers
            .get(&id, &self.containers_dir, container_link)
    }

    /// Adds what the directories say to a container found from its cgroup.
    pub fn annotate(&mut self, info: &mut ContainerInfo) {
        if let Some(uid) = info.pod_uid.clone()
            && let Some(pod) = self.pod(&uid)
        {
            info.pod_namespace = Some(pod.namespace);
            info.pod_name = Some(pod.name);
            info.name = self.container_name(&info.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_are_split_into_their_parts() {
        let uid = "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6";
        let (got_uid, pod) =
            pod_dir(&format!("kube-system_coredns-5d78c9869d-x2x4z_{uid}")).unwrap();
        assert_eq!(got_uid, uid);
        assert_eq!(pod.namespace, "kube-system");
        assert_eq!(pod.name, "coredns-5d78c9869d-x2x4z");
        assert_eq!(pod_dir("no-underscores"), None);
        assert_eq!(pod_dir("a_b_c_d"), None);
        let id = "ab".repeat(32);
        let (got_id, name) = container_link(&format!(
            "coredns-5d78c9869d-x2x4z_kube-system_coredns-{id}.log"
        ))
        .unwrap();
        assert_eq!(got_id, id);
        assert_eq!(name, "coredns");
        // Container names may hold dashes; the id is the last part.
        let (_, name) = container_link(&format!("web-0_shop_tor-proxy-{id}.log")).unwrap();
        assert_eq!(name, "tor-proxy");
        assert_eq!(
            container_link(&format!("web-0_shop_app-{}.log", "ab".repeat(8))),
            None
        );
        assert_eq!(container_link("web-0_shop_app.txt"), None);
    }
}
