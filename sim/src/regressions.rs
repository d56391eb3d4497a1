//! Failing seeds, kept: `scenarios/regressions.txt` lists `scenario-file seed` lines that the
//! scenario tests run before anything else, so a bug found once is checked forever.

use std::io::Write as _;
use std::path::Path;

/// Reads the regressions file (missing file: none). Blank lines and `#` comments are skipped.
pub fn load(path: &Path) -> Result<Vec<(String, u64)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(n, line)| {
            let mut words = line.split_whitespace();
            match (
                words.next(),
                words.next().map(str::parse::<u64>),
                words.next(),
            ) {
                (Some(file), Some(Ok(seed)), None) => Ok((file.to_owned(), seed)),
                _ => Err(format!(
                    "{}:{}: expected `scenario-file seed`, got {line:?}",
                    path.display(),
                    n + 1
                )),
            }
        })
        .collect()
}

/// Appends a failing seed unless it is already listed.
pub fn record(path: &Path, scenario_file: &str, seed: u64) -> Result<(), String> {
    if load(path)?
        .iter()
        .any(|(f, s)| f == scenario_file && *s == seed)
    {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(file, "{scenario_file} {seed}").map_err(|e| format!("{}: {e}", path.display()))
}
