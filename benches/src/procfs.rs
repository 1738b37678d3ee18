//! CPU time and resident memory of a process and its descendants, read from `/proc`.
//!
//! `/proc/PID/stat` counts every thread of a process (utime and stime in clock ticks), so a
//! process tree's CPU time is the sum over its processes: for nginx, the master and its worker.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::process::Command;

/// The fields after the command name in `/proc/PID/stat`, which may itself contain spaces.
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat line"))?;
    Ok(after.split_whitespace().map(str::to_owned).collect())
}

fn field(fields: &[String], index: usize) -> io::Result<u64> {
    fields
        .get(index)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short /proc stat line"))
}

// Indices into `stat_fields`: field N of proc(5) is at N - 3.
const PPID: usize = 1;
const UTIME: usize = 11;
const STIME: usize = 12;
const CUTIME: usize = 13;
const CSTIME: usize = 14;

/// utime + stime of one process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let f = stat_fields(pid)?;
    Ok(field(&f, UTIME)? + field(&f, STIME)?)
}

/// CPU time of this process's waited-for children (cutime + cstime), in clock ticks.
pub fn children_cpu_ticks() -> io::Result<u64> {
    let f = stat_fields(std::process::id())?;
    Ok(field(&f, CUTIME)? + field(&f, CSTIME)?)
}

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(ppid) = stat_fields(p).and_then(|f| field(&f, PPID)) {
                children
                    .entry(u32::try_from(ppid).unwrap_or(0))
                    .or_default()
                    .push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// CPU ticks summed over `pid`'s process tree. Processes that vanished count zero.
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| cpu_ticks(p).ok())
        .sum()
}

/// VmRSS of one process in KiB (0 for a process without memory, such as a zombie).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    keyed(pid, "status", "VmRSS:")
}

/// Bytes the process caused to be read from storage (`read_bytes` of /proc/PID/io).
pub fn storage_read_bytes(pid: u32) -> io::Result<u64> {
    keyed(pid, "io", "read_bytes:")
}

/// The first number after `key` in /proc/PID/`file` (0 when the key is missing).
fn keyed(pid: u32, file: &str, key: &str) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// VmRSS summed over `pid`'s process tree, in KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    tree(pid).into_iter().filter_map(|p| rss_kib(p).ok()).sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that cannot run).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(rss_kib(me).unwrap() > 0);
        assert_eq!(tree(me)[0], me);
        assert!(children_cpu_ticks().is_ok());
    }
}
