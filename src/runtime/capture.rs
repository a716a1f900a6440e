//! Captured deliveries, to learn the real shapes of an account's webhooks.
//!
//! With `server.capture_dir` set, each verified delivery is kept as one JSON
//! file: `{"received_at": ms, "headers": {...}, "body": <the body, as JSON when
//! it is, else as text>}`, the signature and every credential-like header
//! removed. Files are named by arrival (`capture-<ms>-<seq>.json`), so
//! reading them in name order replays them in order; the oldest go when the
//! folder passes `server.capture_max_bytes`. Only files of that name are
//! ever trimmed: whatever else the folder holds is never touched. The folder
//! is made private (0700) and each file is written 0600: deliveries hold
//! customers' words. `flowbot replay --capture DIR FLOW` runs a flow
//! over them offline and `flowbot test new --from-capture DIR` writes a
//! conversation test from them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::time::Millis;

/// One captured delivery.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The file it was read from.
    pub file: PathBuf,
    /// When it came.
    pub received_at: Millis,
    /// Its body, as received.
    pub body: Vec<u8>,
}

/// Writes deliveries into a folder, keeping it under a size.
#[derive(Debug)]
pub(crate) struct Capture {
    dir: PathBuf,
    max_bytes: u64,
    seq: AtomicU64,
    /// Bytes written since the folder was last measured.
    written: AtomicU64,
    /// One trim at a time: two that measured the folder together would
    /// each remove the oldest files for the same excess, and the second,
    /// finding them gone, would go on to newer ones.
    trimming: std::sync::Mutex<()>,
}

impl Capture {
    /// A capture into `dir` (created if needed).
    pub(crate) fn new(dir: &Path, max_bytes: u64) -> std::io::Result<Arc<Capture>> {
        crate::files::private_dir(dir)?;
        Ok(Arc::new(Capture {
            dir: dir.to_owned(),
            max_bytes: max_bytes.max(4096),
            seq: AtomicU64::new(0),
            written: AtomicU64::new(0),
            trimming: std::sync::Mutex::new(()),
        }))
    }

    /// Keeps one delivery (in the background: the acknowledgement does not
    /// wait for the disk).
    pub(crate) fn keep(self: &Arc<Self>, headers: String, body: &[u8]) {
        let received_at = crate::time::now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let body_value = Value::from(String::from_utf8_lossy(body).into_owned());
        let record = serde_json::json!({
            "received_at": received_at,
            "headers": serde_json::from_str::<Value>(&headers).unwrap_or_default(),
            "body": body_value,
        });
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let text = record.to_string();
            let path = me
                .dir
                .join(format!("{PREFIX}{received_at:013}-{seq:08}.json"));
            if let Err(e) = crate::files::write_private(&path, text.as_bytes()) {
                tracing::warn!(error = %e, path = %path.display(), "cannot capture a delivery");
                return;
            }
            let total = me.written.fetch_add(text.len() as u64, Ordering::Relaxed);
            if total + text.len() as u64 > me.max_bytes / 4 {
                me.written.store(0, Ordering::Relaxed);
                me.trim();
            }
        });
    }

    /// Removes (or with `dry_run` counts) this capture's files written
    /// before `before`, at most `limit`.
    pub(crate) fn expire(&self, before: crate::time::Millis, limit: usize, dry_run: bool) -> u64 {
        let _one = self.trimming.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for (path, _) in files(&self.dir).into_iter().filter(|(p, _)| is_own(p)) {
            let written: Option<crate::time::Millis> = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.strip_prefix(PREFIX))
                .and_then(|f| f.get(..13))
                .and_then(|ms| ms.parse().ok());
            // In name order: the first not too old ends the scan.
            if written.is_none_or(|w| w >= before) || n as usize >= limit {
                break;
            }
            if dry_run || std::fs::remove_file(&path).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// This capture's files that hold any of `needles` (a conversation's
    /// id, a customer's number), oldest first, with their contents.
    pub(crate) fn holding(&self, needles: &[String]) -> Vec<(PathBuf, String)> {
        files(&self.dir)
            .into_iter()
            .filter(|(p, _)| is_own(p))
            .filter_map(|(p, _)| {
                let text = std::fs::read_to_string(&p).ok()?;
                needles
                    .iter()
                    .any(|n| !n.is_empty() && text.contains(n.as_str()))
                    .then_some((p, text))
            })
            .collect()
    }

    /// Removes the oldest files until the folder is under its size.
    fn trim(&self) {
        let _one = self.trimming.lock().unwrap_or_else(|e| e.into_inner());
        let mut files: Vec<(PathBuf, u64)> = files(&self.dir)
            .into_iter()
            .filter(|(path, _)| is_own(path))
            .collect();
        let mut total: u64 = files.iter().map(|(_, len)| len).sum();
        files.reverse();
        while total > self.max_bytes {
            let Some((oldest, len)) = files.pop() else {
                break;
            };
            match std::fs::remove_file(&oldest) {
                Ok(()) => total -= len,
                // Removed by hand meanwhile: it no longer counts.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= len,
                Err(_) => {}
            }
        }
    }
}

/// How the files this process writes are named: `capture-<ms>-<seq>.json`.
const PREFIX: &str = "capture-";

/// Whether `path` is a file a capture wrote (`capture-`, 13 digits, `-`, 8
/// digits, `.json`): the only files trimming may remove.
fn is_own(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(stem) = name
        .strip_prefix(PREFIX)
        .and_then(|n| n.strip_suffix(".json"))
    else {
        return false;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    matches!(stem.split_once('-'), Some((ms, seq)) if digits(ms, 13) && digits(seq, 8))
}

/// The capture files of `dir` (JSON files, such as one copied in by hand)
/// with their sizes, in name order: a capture's own oldest first.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
        .collect();
    out.sort();
    out
}

/// Reads the deliveries captured in `dir`, in arrival order. A file that is
/// not a capture is an error naming it.
pub fn read_dir(dir: &Path) -> Result<Vec<Captured>, String> {
    if !dir.is_dir() {
        return Err(format!("{}: not a folder", dir.display()));
    }
    let mut out = Vec::new();
    for (file, len) in files(dir) {
        if len > 16 * 1024 * 1024 {
            return Err(format!("{}: larger than a delivery can be", file.display()));
        }
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let record: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a captured delivery: {e}", file.display()))?;
        let body = match &record["body"] {
            Value::String(s) => s.clone().into_bytes(),
            Value::Null => return Err(format!("{}: no `body`", file.display())),
            v => v.to_string().into_bytes(),
        };
        out.push(Captured {
            received_at: record["received_at"].as_i64().unwrap_or(0),
            file,
            body,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until the capture numbered `seq` is written (the writes run in
    /// the background; the newest is never the one trimmed), however busy
    /// the machine.
    async fn written(dir: &Path, seq: u64) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let suffix = format!("-{seq:08}.json");
        while !files(dir)
            .iter()
            .any(|(p, _)| is_own(p) && p.to_string_lossy().ends_with(&suffix))
        {
            assert!(
                std::time::Instant::now() < end,
                "capture {seq} was never written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The trim that follows its write.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn the_folder_keeps_under_its_size_and_reads_back_in_order() {
        let dir = std::env::temp_dir().join(format!("flowbot-capture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let capture = Capture::new(&dir, 8 * 1024).unwrap();
        for i in 0..40 {
            let body = format!(
                "{{\"event\":\"X\",\"n\":{i},\"pad\":\"{}\"}}",
                "x".repeat(900)
            );
            capture.keep("{}".into(), body.as_bytes());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        written(&dir, 39).await;
        capture.trim();
        let total: u64 = files(&dir).iter().map(|(_, len)| len).sum();
        assert!(total <= 8 * 1024, "{total}");
        let read = read_dir(&dir).unwrap();
        assert!(!read.is_empty());
        let ns: Vec<i64> = read
            .iter()
            .map(|c| {
                serde_json::from_slice::<Value>(&c.body).unwrap()["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{ns:?}");
        assert_eq!(*ns.last().unwrap(), 39, "the newest are kept");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Trimming removes only what a capture wrote; files and the folder are
    /// private.
    #[tokio::test]
    async fn trimming_touches_only_its_own_files_and_everything_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("flowbot-capture-own-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let theirs = [
            "0-first.json",
            "aaa-notes.json",
            "zz-other.json",
            "1767225600000-00000001.json",
        ];
        for name in theirs {
            std::fs::write(
                dir.join(name),
                "x".repeat(if name.starts_with("zz") { 2 << 20 } else { 10 }),
            )
            .unwrap();
        }
        let capture = Capture::new(&dir, 8 * 1024).unwrap();
        for i in 0..40 {
            capture.keep(
                "{}".into(),
                format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(900)).as_bytes(),
            );
        }
        written(&dir, 39).await;
        capture.trim();
        for name in theirs {
            assert!(dir.join(name).is_file(), "{name} was removed");
        }
        let own: Vec<(PathBuf, u64)> = files(&dir).into_iter().filter(|(p, _)| is_own(p)).collect();
        assert!(!own.is_empty());
        assert!(own.iter().map(|(_, l)| l).sum::<u64>() <= 8 * 1024);
        for (path, _) in &own {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(&dir).ok();
    }
}
