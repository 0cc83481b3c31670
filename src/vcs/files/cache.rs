//! The changed files recently read, so the rules of one delivery (and the
//! deliveries of one push: a redelivery, the same commits under two
//! sources) read a comparison once. Keyed by the API and the query (the
//! repository, `before` and `after`, or a request's number and head), kept
//! for [`TTL`] (a pull request's files change with every push to it; its
//! head is in the key when the event names it), and bounded: at most
//! [`ENTRIES`] reads and [`BYTES`] bytes of paths in all, the least
//! recently used going first. One per process: replicas each read once.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use super::{ChangedFiles, FilesQuery};

/// The most reads kept.
pub const ENTRIES: usize = 256;
/// The most bytes of paths kept, over every read.
pub const BYTES: usize = 64 * 1024 * 1024;
/// How long a read is kept.
pub const TTL: Duration = Duration::from_secs(600);

type Key = (String, FilesQuery);

/// A bounded, least-recently-used cache of reads.
pub struct FilesCache {
    inner: Mutex<Inner>,
}

struct Inner {
    reads: LruCache<Key, (Instant, ChangedFiles)>,
    /// Bytes of paths kept.
    bytes: usize,
}

/// What a read weighs in the cache.
fn weight(files: &ChangedFiles) -> usize {
    files.paths.iter().map(String::len).fold(0, usize::saturating_add)
}

impl Default for FilesCache {
    fn default() -> Self {
        FilesCache {
            inner: Mutex::new(Inner {
                reads: LruCache::new(ENTRIES),
                bytes: 0,
            }),
        }
    }
}

impl FilesCache {
    /// The read of `query` on the API at `api_url`, if kept and fresh at `now`.
    pub fn get(&self, api_url: &str, query: &FilesQuery, now: Instant) -> Option<ChangedFiles> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (api_url.to_owned(), query.clone());
        let fresh = match inner.reads.get(&key) {
            Some((at, files)) if now.saturating_duration_since(*at) < TTL => return Some(files.clone()),
            Some(_) => false,
            None => return None,
        };
        if !fresh && let Some((_, old)) = inner.reads.remove(&key) {
            inner.bytes = inner.bytes.saturating_sub(weight(&old));
        }
        None
    }

    /// Keep `files`, read at `now`; a read larger than [`BYTES`] is not kept.
    pub fn put(&self, api_url: &str, query: &FilesQuery, files: &ChangedFiles, now: Instant) {
        let weight = weight(files);
        if weight > BYTES {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (api_url.to_owned(), query.clone());
        if let Some((_, old)) = inner.reads.remove(&key) {
            inner.bytes = inner.bytes.saturating_sub(self::weight(&old));
        }
        while inner.bytes.saturating_add(weight) > BYTES || inner.reads.len() >= ENTRIES {
            match inner.reads.remove_lru() {
                Some((_, (_, old))) => inner.bytes = inner.bytes.saturating_sub(self::weight(&old)),
                None => break,
            }
        }
        inner.bytes = inner.bytes.saturating_add(weight);
        inner.reads.insert(key, (now, files.clone()));
    }

    /// How many reads are kept.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).reads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::Changes;
    use super::*;

    fn query(after: &str) -> FilesQuery {
        FilesQuery {
            repository: "acme/app".into(),
            changes: Changes::Push {
                before: Some("a".repeat(40)),
                after: after.into(),
            },
        }
    }

    /// `n` paths of 8 bytes each.
    fn files(n: usize) -> ChangedFiles {
        ChangedFiles {
            paths: (0..n).map(|i| format!("f{i:07}")).collect(),
            from: "test".into(),
            requests: 1,
        }
    }

    #[test]
    fn a_read_is_kept_for_its_api_and_query_until_it_is_stale() {
        let cache = FilesCache::default();
        let t0 = Instant::now();
        cache.put("https://api.github.com", &query("b"), &files(3), t0);
        assert_eq!(
            cache
                .get("https://api.github.com", &query("b"), t0)
                .unwrap()
                .paths
                .len(),
            3
        );
        assert!(
            cache
                .get("https://ghe.example.com/api/v3", &query("b"), t0)
                .is_none()
        );
        assert!(cache.get("https://api.github.com", &query("c"), t0).is_none());
        assert!(
            cache
                .get("https://api.github.com", &query("b"), t0 + TTL)
                .is_none()
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded_in_reads_and_in_paths() {
        let cache = FilesCache::default();
        let t0 = Instant::now();
        for i in 0..ENTRIES + 10 {
            cache.put("u", &query(&i.to_string()), &files(1), t0);
        }
        assert_eq!(cache.len(), ENTRIES);
        // The least recently used went first.
        assert!(cache.get("u", &query("0"), t0).is_none());
        assert!(cache.get("u", &query(&(ENTRIES + 9).to_string()), t0).is_some());
        // Two reads of more than half the bytes cannot both stay.
        cache.put("u", &query("big1"), &files(BYTES / 16 + 1), t0);
        cache.put("u", &query("big2"), &files(BYTES / 16 + 1), t0);
        assert!(cache.get("u", &query("big1"), t0).is_none());
        assert!(cache.get("u", &query("big2"), t0).is_some());
        // Larger than the whole cache: not kept.
        cache.put("u", &query("huge"), &files(BYTES / 8 + 1), t0);
        assert!(cache.get("u", &query("huge"), t0).is_none());
    }
}
