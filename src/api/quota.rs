//! Daily query quotas per API key, kept across restarts when `[api] quota_file` is set: the
//! day's counts by key name, written (temp file + rename) at most once a second when they
//! changed, and when the server goes away. A crash forgets at most the last second's queries.
//! One file per server process: two servers sharing one would overwrite each other's counts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::ApiError;

/// Queries used today, per key (by position in the configuration).
pub struct Quotas {
    /// (UTC day, queries used that day).
    used: Mutex<HashMap<usize, (u64, u64)>>,
    names: Vec<String>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    day: u64,
    used: HashMap<String, u64>,
}

impl Quotas {
    /// Starts from `file` when it holds today's counts (other days are over).
    pub fn load(names: Vec<String>, file: Option<PathBuf>, today: u64) -> Self {
        let mut used = HashMap::new();
        if let Some(path) = &file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<Saved>(&bytes) {
                    Ok(saved) if saved.day == today => {
                        for (i, name) in names.iter().enumerate() {
                            if let Some(n) = saved.used.get(name) {
                                used.insert(i, (today, *n));
                            }
                        }
                        tracing::info!(path = %path.display(), keys = used.len(), "API quotas: today's counts restored");
                    }
                    Ok(_) => {}
                    // Unreadable counts must not keep the API down: they start over, loudly.
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e, "API quotas: unreadable file; counts start at 0")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "API quotas: cannot read; counts start at 0")
                }
            }
        }
        Self { used: Mutex::new(used), names, file, dirty: AtomicBool::new(false) }
    }

    /// Takes one query from key `key`'s `quota` for `day`.
    pub fn charge(&self, key: usize, quota: u64, day: u64) -> Result<(), ApiError> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let u = used.entry(key).or_insert((day, 0));
        if u.0 != day {
            *u = (day, 0);
        }
        if u.1 >= quota {
            return Err(ApiError::status(
                429,
                format!("Error: quota of {quota} queries per day reached; it resets at 00:00 UTC"),
            ));
        }
        u.1 += 1;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Queries key `key` used on `day`.
    pub fn used(&self, key: usize, day: u64) -> u64 {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.get(&key).filter(|u| u.0 == day).map(|u| u.1).unwrap_or(0)
    }

    /// Writes the counts if they changed since the last write (and a file is configured).
    pub fn save(&self, today: u64) {
        let Some(path) = &self.file else { return };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let saved = Saved {
            day: today,
            used: self
                .used
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, u)| u.0 == today)
                .map(|(k, u)| (self.names[*k].clone(), u.1))
                .collect(),
        };
        if let Err(e) = write_atomically(path, &serde_json::to_vec(&saved).unwrap_or_default()) {
            self.dirty.store(true, Ordering::Release);
            tracing::warn!(path = %path.display(), error = %e, "API quotas: cannot write; retrying");
        }
    }

    pub fn persistent(&self) -> bool {
        self.file.is_some()
    }
}

/// The last counts, when the server goes away (its runtime drops the saving task).
impl Drop for Quotas {
    fn drop(&mut self) {
        let day =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) / 86_400;
        self.save(day);
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_a_restart_on_the_same_day_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("quotas.json");
        let names = vec!["a".to_string(), "b".to_string()];
        let q = Quotas::load(names.clone(), Some(file.clone()), 100);
        for _ in 0..3 {
            q.charge(1, 3, 100).unwrap();
        }
        assert_eq!(q.charge(1, 3, 100).unwrap_err().status, 429);
        q.save(100);
        // Keys reordered in the configuration: counts follow the name.
        let q = Quotas::load(vec!["b".to_string(), "a".to_string()], Some(file.clone()), 100);
        assert_eq!((q.used(0, 100), q.used(1, 100)), (3, 0));
        assert_eq!(q.charge(0, 3, 100).unwrap_err().status, 429);
        // The next day starts over.
        let q = Quotas::load(names.clone(), Some(file.clone()), 101);
        assert_eq!(q.used(1, 101), 0);
        // A damaged file does not stop the server.
        std::fs::write(&file, b"{garbage").unwrap();
        let q = Quotas::load(names, Some(file), 100);
        assert_eq!(q.used(1, 100), 0);
    }
}
