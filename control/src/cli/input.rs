//! Reading what a command is given with `-f FILE`, where `-` is stdin (apply, validate,
//! inject).

use std::io::Read;
use std::path::Path;

/// The text of `path`, or of stdin for `-`.
pub fn read(path: &Path) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
    }
}
