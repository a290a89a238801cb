//! The process metrics the OpenTelemetry Collector exposes, under its names and types
//! (`otelcol_process_uptime`, `otelcol_process_cpu_seconds`, `otelcol_process_memory_rss`),
//! and its `target_info` series (`service_name`, `service_version`, `service_instance_id`):
//! the Collector's build information. Observed when `/metrics` is scraped, as the Collector's
//! are, and written after what the recorder renders (the `metrics` crate has no float
//! counters, and these are counters in the Collector).

use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Instant;

/// When the process started, as near as the binary can tell (set by the recorder's install).
static STARTED: OnceLock<Instant> = OnceLock::new();
/// What `target_info` says, once the binary said who it is.
static IDENTITY: OnceLock<ServiceIdentity> = OnceLock::new();

/// Who the process is, for `target_info`.
#[derive(Clone, Debug)]
pub struct ServiceIdentity {
    /// `service_name`, e.g. `weir-gateway`.
    pub name: String,
    /// `service_version`: the release.
    pub version: String,
    /// `service_instance_id`: this replica.
    pub instance_id: String,
}

/// Starts the uptime clock (idempotent).
pub(crate) fn start_clock() {
    STARTED.get_or_init(Instant::now);
}

/// Sets what `target_info` says; the first call wins.
pub fn set_service_identity(identity: ServiceIdentity) {
    let _ = IDENTITY.set(identity);
}

/// Appends the process metrics (and `target_info`, once set) in Prometheus text format.
pub fn render(out: &mut String) {
    let uptime = STARTED.get().map_or(0.0, |s| s.elapsed().as_secs_f64());
    family(
        out,
        "otelcol_process_uptime",
        "counter",
        "Uptime of the process",
    );
    let _ = writeln!(out, "otelcol_process_uptime {uptime}");
    if let Some(cpu) = cpu_seconds() {
        family(
            out,
            "otelcol_process_cpu_seconds",
            "counter",
            "Total CPU user and system time in seconds",
        );
        let _ = writeln!(out, "otelcol_process_cpu_seconds {cpu}");
    }
    if let Some(rss) = memory_rss() {
        family(
            out,
            "otelcol_process_memory_rss",
            "gauge",
            "Total physical memory (resident set size)",
        );
        let _ = writeln!(out, "otelcol_process_memory_rss {rss}");
    }
    if let Some(id) = IDENTITY.get() {
        family(out, "target_info", "gauge", "Target metadata");
        let _ = writeln!(
            out,
            "target_info{{service_instance_id=\"{}\",service_name=\"{}\",service_version=\"{}\"}} 1",
            escape(&id.instance_id),
            escape(&id.name),
            escape(&id.version)
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// User plus system CPU time of the process.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        (libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0).then_some(usage)
    }?;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// Resident set size in bytes (Linux: `/proc/self/statm`).
fn memory_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|p| pages * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_collector_process_metrics_and_target_info() {
        start_clock();
        set_service_identity(ServiceIdentity {
            name: "weir-test".into(),
            version: "1.2.3".into(),
            instance_id: "pod\"1".into(),
        });
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("# TYPE otelcol_process_uptime counter\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE otelcol_process_cpu_seconds counter\n"),
            "{out}"
        );
        let rss: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("otelcol_process_memory_rss "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(rss > 1e6, "{out}");
        assert!(out.contains(
            "target_info{service_instance_id=\"pod\\\"1\",service_name=\"weir-test\",service_version=\"1.2.3\"} 1\n"
        ), "{out}");
    }
}
