//! Files flowbot writes that hold customers' words or credentials (the
//! database, captured deliveries, the demo's folder): created private to the user that runs the
//! bot, folders 0700 and files 0600, whatever the umask says.

use std::io::Write;
use std::path::Path;

/// Creates `dir` (and its missing parents) and makes it private (0700).
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

fn options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Writes `bytes` to a new or emptied file readable by this user only.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    options().truncate(true).open(path)?.write_all(bytes)
}

/// Makes `path` if it does not exist yet, readable by this user only (a
/// database SQLite then opens: its journal files take the same mode).
pub(crate) fn touch_private(path: &Path) -> std::io::Result<()> {
    options().truncate(false).open(path).map(drop)
}

/// A new folder under the system's temporary folder, only this user can
/// enter (0700), named `prefix` and random characters (never a guessable
/// path another user could plant a link at), removed when dropped.
pub(crate) fn private_temp_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    builder.tempdir()
}
