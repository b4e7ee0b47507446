//! What this machine says about a process: whether it exists and when it
//! started, so that a recycled pid is not taken for the runner that used it;
//! and the machine's own name.

/// A process as `/proc/PID/stat` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 22: start time in clock ticks since boot.
    pub start: u64,
}

/// Reads `/proc/PID/stat`; `None` when there is no such process or no procfs.
#[cfg(target_os = "linux")]
pub(crate) fn stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Without procfs nothing is known beyond existence.
#[cfg(not(target_os = "linux"))]
pub(crate) fn stat(_pid: u32) -> Option<ProcStat> {
    None
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and `)`, so fields are counted
/// from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was the state; field 22 is 18 fields further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start })
}

/// Whether a process with this pid exists (it may be a zombie), by `kill(pid, 0)`.
///
/// Pid 0 and pids beyond `i32::MAX` are never processes: passed to `kill` they
/// would address process groups instead.
pub(crate) fn exists(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; nothing is sent.
    let rc = unsafe { libc::kill(raw, 0) };
    // EPERM: the process exists but belongs to another user.
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Start time of process `pid` in clock ticks since boot; `None` if it does
/// not exist or there is no procfs. With the pid, it names one process for
/// good: a recycled pid has another start time.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start)
}

/// This machine's hostname, or `unknown`: what resources are labelled with,
/// and what a sweep compares that label with.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // on success (we also guard against truncation by searching for the NUL).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_line() {
        let line = "21667 (cat) R 21664 21664 10264 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 264864 3133440 410 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'R',
                start: 264864
            })
        );
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_fields() {
        let line =
            "42 (evil) Z 1 (x) S 1 1 1 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 777 3133440 410";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start: 777
            })
        );
    }

    #[test]
    fn truncated_or_garbage_lines_are_none() {
        assert_eq!(parse_stat("42 (cat) R 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_exists_and_has_a_start_time() {
        assert!(exists(std::process::id()));
        let me = stat(std::process::id()).expect("own /proc/self/stat");
        assert!(me.start > 0);
        assert!(!exists(0));
        assert!(!exists(u32::MAX));
    }
}
