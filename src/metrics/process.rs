//! The process metrics every Prometheus client library exports (`process_*`, named as
//! in its guidelines, without the `hookgate_` prefix), read from `/proc` at each scrape
//! (the open-files limit with `rlimit`, as `cli` raises it): dashboards and alerts written
//! for them work as they are. Open files against their limit matters here (README "Open
//! files"); resident memory shows a burst's memory go back (`memory.rs`). Only at a
//! scrape: nothing on the request path.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What one scrape read; a file that could not be read leaves its metrics out.
#[derive(Debug, Default, Clone, PartialEq)]
struct ProcessSample {
    cpu_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    virtual_memory_bytes: Option<u64>,
    resident_memory_bytes: Option<u64>,
    start_time_seconds: Option<f64>,
    threads: Option<u64>,
}

impl ProcessSample {
    /// Reads this process's `/proc` files.
    #[cfg(target_os = "linux")]
    fn read() -> ProcessSample {
        use procfs::WithCurrentSystemInfo;
        use procfs::process::Process;
        let Ok(me) = Process::myself() else {
            return ProcessSample::default();
        };
        let mut sample = ProcessSample {
            open_fds: me.fd_count().ok().map(|n| n as u64),
            // As `cli` reads and raises it; an unlimited one has no number to show.
            max_fds: rlimit::Resource::NOFILE
                .get()
                .ok()
                .map(|(soft, _)| soft)
                .filter(|soft| *soft != rlimit::INFINITY),
            ..ProcessSample::default()
        };
        if let Ok(stat) = me.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            sample.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            sample.virtual_memory_bytes = Some(stat.vsize);
            sample.resident_memory_bytes = Some(stat.rss_bytes().get());
            sample.threads = u64::try_from(stat.num_threads).ok();
            sample.start_time_seconds = procfs::boot_time_secs()
                .ok()
                .map(|boot| boot as f64 + stat.starttime as f64 / ticks);
        }
        sample
    }

    /// No `/proc` off Linux: no process metrics.
    #[cfg(not(target_os = "linux"))]
    fn read() -> ProcessSample {
        ProcessSample::default()
    }
}

/// Registered on the registry's root, so its names carry no prefix.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Metric = Box<dyn EncodeMetric>;
        let count = |v: Option<u64>| -> Option<Metric> {
            let v = i64::try_from(v?).ok()?;
            Some(Box::new(ConstGauge::new(v)))
        };
        let s = ProcessSample::read();
        let families: [(&str, &str, Option<Metric>); 7] = [
            (
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                s.cpu_seconds
                    .map(|v| Box::new(ConstCounter::new(v)) as Metric),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds
                    .map(|v| Box::new(ConstGauge::new(v)) as Metric),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                count(s.open_fds),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (the soft limit)",
                count(s.max_fds),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                count(s.virtual_memory_bytes),
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                count(s.resident_memory_bytes),
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                count(s.threads),
            ),
        ];
        // A figure that could not be read leaves its family out.
        for (name, help, metric) in families {
            if let Some(m) = metric {
                let e = encoder.encode_descriptor(name, help, None, m.metric_type())?;
                m.encode(e)?;
            }
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_this_process() {
        let s = ProcessSample::read();
        let open = s.open_fds.expect("open fds");
        let max = s.max_fds.expect("a limit is set");
        assert!(open >= 3 && open <= max, "{open} of {max}");
        let rss = s.resident_memory_bytes.expect("rss");
        let vsize = s.virtual_memory_bytes.expect("vsize");
        assert!(rss > 1 << 20 && rss <= vsize, "{rss} of {vsize}");
        assert!(s.threads.expect("threads") >= 1);
        // Started within the last day, not in the future.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let started = s.start_time_seconds.expect("start");
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
        assert!(s.cpu_seconds.expect("cpu") >= 0.0);
    }
}
