//! The standard `process_*` metrics, read from `/proc` (Linux). Where `/proc` cannot be read
//! the families are left out rather than reported as zero.

use super::text::{Kind, Text};

/// Clock ticks per second in `/proc/<pid>/stat`: the kernel reports them in `USER_HZ`, which
/// is 100 on every architecture Linux runs user space on today.
const USER_HZ: f64 = 100.0;

/// Writes `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds` and
/// `process_start_time_seconds`.
pub fn render(t: &mut Text) {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        t.single(
            "process_cpu_seconds_total",
            "User and system CPU time spent, in seconds.",
            Kind::Counter,
            &[],
            (utime + stime) as f64 / USER_HZ,
        );
    }
    if let Some(kb) = status_kb("VmRSS:") {
        t.single(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Kind::Gauge,
            &[],
            kb * 1024,
        );
    }
    if let Some(kb) = status_kb("VmSize:") {
        t.single(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Kind::Gauge,
            &[],
            kb * 1024,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        t.single("process_open_fds", "Open file descriptors.", Kind::Gauge, &[], fds.count());
    }
    if let Some(max) = max_fds() {
        t.single("process_max_fds", "Limit on open file descriptors.", Kind::Gauge, &[], max);
    }
    if let (Some(start_ticks), Some(boot)) = (field(22), boot_time_s()) {
        t.single(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            Kind::Gauge,
            &[],
            boot as f64 + start_ticks as f64 / USER_HZ,
        );
    }
}

fn status_kb(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn boot_time_s() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let mut t = Text::default();
        render(&mut t);
        let text = t.finish();
        for name in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing:\n{text}");
        }
        let start: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_start_time_seconds "))
            .expect("start time")
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(start > 1.0e9 && start <= now + 1.0, "start {start}, now {now}");
    }
}
