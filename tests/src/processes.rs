//! Processes seen from `/proc`: which children a process has, whether a pid
//! still runs. For tests that check nothing is left behind.

/// Pids of the live processes whose parent is `parent` (from /proc).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the command name, which is in parentheses: state, ppid, ...
            let Some((_, after_name)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = after_name.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|ppid| ppid.parse::<u32>().ok());
            ppid == Some(parent) && state != Some("Z")
        })
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The command line of `pid`, its arguments split (from /proc).
pub fn command_line(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|byte| *byte == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The first child of `parent` running the fanout subcommand `role`
/// (`leaf`, `merger`, `root`).
pub fn child_running(parent: u32, role: &str) -> Option<u32> {
    children_of(parent).into_iter().find(|pid| {
        command_line(*pid)
            .get(1)
            .is_some_and(|subcommand| subcommand == role)
    })
}
