//! What a process costs, from `/proc`: CPU seconds (`stat` utime + stime) and
//! memory (`status` VmRSS, VmHWM), with a sampler for a per-scenario RSS peak
//! (VmHWM is the peak over the process's whole life, so it cannot tell one
//! scenario from the one before).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the RSS sampler reads VmRSS.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU time of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after
    // the last ')'. There, index 0 is field 3 (state); utime and stime are
    // fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Busy CPU time of the whole machine (all CPUs, everything but idle and
/// iowait), in clock ticks, from `/proc/stat`.
pub fn system_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    Some(total - v.get(3)? - v.get(4)?)
}

/// A `/proc/<pid>/status` entry in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Threads of `pid` (`/proc/<pid>/status` Threads).
pub fn threads(pid: u32) -> Option<u64> {
    status_kib(pid, "Threads")
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Voluntary plus involuntary context switches of every thread of `pid`
/// (`/proc/<pid>/task/*/status`; `/proc/<pid>/status` counts the main
/// thread alone). A thread that exited in between takes its count with it.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended while we looked
        };
        for line in status.lines() {
            let value = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
            if let Some(n) = value.and_then(|v| v.trim().parse::<u64>().ok()) {
                total += n;
            }
        }
    }
    Some(total)
}

/// The RabbitMQ node's Erlang VM (`beam.smp`) with the most memory, if any.
pub fn find_broker() -> Option<u32> {
    let mut best: Option<(u64, u32)> = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "beam.smp" {
            let rss = status_kib(pid, "VmRSS").unwrap_or(0);
            if best.is_none_or(|(r, _)| rss > r) {
                best = Some((rss, pid));
            }
        }
    }
    best.map(|(_, pid)| pid)
}

/// Samples a process's VmRSS every [`SAMPLE_EVERY`] and keeps the peak.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    pid: u32,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(status_kib(pid, "VmRSS").unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if let Some(rss) = status_kib(pid, "VmRSS") {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                }
            }
        });
        Self {
            peak,
            stop,
            task,
            pid,
        }
    }

    /// Stops sampling; the peak VmRSS seen, in KiB.
    pub async fn finish(self) -> u64 {
        if let Some(rss) = status_kib(self.pid, "VmRSS") {
            self.peak.fetch_max(rss, Ordering::Relaxed);
        }
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

/// CPU seconds used by Warren, the broker, the load generator itself and the
/// whole machine between [`Meter::start`] and [`Meter::stop`], and the wall
/// time.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    pids: [Option<u32>; 3],
    started: Option<(std::time::Instant, [Option<u64>; 4])>,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// CPU seconds of Warren, the broker, this process and the machine.
    pub cpu: [Option<f64>; 4],
}

impl Meter {
    /// A meter for Warren's pid (when known) and the broker's.
    pub fn new(warren: Option<u32>, broker: Option<u32>) -> Self {
        Self {
            pids: [warren, broker, Some(std::process::id())],
            ..Default::default()
        }
    }

    fn ticks(&self) -> [Option<u64>; 4] {
        let [w, b, me] = self.pids.map(|p| p.and_then(cpu_ticks));
        [w, b, me, system_busy_ticks()]
    }

    /// Starts the measured phase.
    pub fn start(&mut self) {
        self.started = Some((std::time::Instant::now(), self.ticks()));
    }

    /// Ends the measured phase (a meter never started measures nothing).
    pub fn stop(&mut self) {
        let Some((at, before)) = self.started.take() else {
            return;
        };
        self.elapsed = at.elapsed();
        let after = self.ticks();
        let tck = clk_tck();
        for i in 0..4 {
            self.cpu[i] = match (before[i], after[i]) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / tck),
                _ => None,
            };
        }
    }

    /// CPU seconds the rest of the machine used: the busy time of all CPUs
    /// less Warren, the broker and the load generator (other work on the
    /// machine disturbs a measurement; this shows how much there was).
    pub fn other_cpu(&self) -> Option<f64> {
        let busy = self.cpu[3]?;
        let known: f64 = self.cpu[..3].iter().flatten().sum();
        Some((busy - known).max(0.0))
    }

    /// Whether the measured phase has started (and not stopped).
    pub fn running(&self) -> bool {
        self.started.is_some()
    }
}

/// Cores the rest of the machine keeps busy (everything but `pids`),
/// measured over `over`.
pub async fn other_load(pids: &[Option<u32>], over: Duration) -> Option<f64> {
    let known = || -> u64 { pids.iter().flatten().filter_map(|&p| cpu_ticks(p)).sum() };
    let (busy0, known0) = (system_busy_ticks()?, known());
    tokio::time::sleep(over).await;
    let (busy1, known1) = (system_busy_ticks()?, known());
    let other = (busy1 - busy0).saturating_sub(known1.saturating_sub(known0));
    Some(other as f64 / clk_tck() / over.as_secs_f64())
}

/// Waits until the rest of the machine uses less than `cores`, at most
/// `max`; the load when it gave up, if it did.
pub async fn wait_quiet(pids: &[Option<u32>], cores: f64, max: Duration) -> Option<f64> {
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        let load = other_load(pids, Duration::from_millis(500)).await?;
        if load < cores {
            return None;
        }
        if started.elapsed() >= max {
            return Some(load);
        }
        if !said {
            eprint!(
                "\r\x1b[2Kwaiting for other work on the machine ({load:.2} cores busy) to stop..."
            );
            said = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
        assert!(status_kib(me, "VmHWM").unwrap() > 0);
        assert!(status_kib(me, "NoSuchKey").is_none());
        assert!(threads(me).unwrap() >= 1);
        assert!(open_fds(me).unwrap() >= 3);
        assert!(context_switches(me).is_some());
        assert!(system_busy_ticks().is_some());
        assert!(alive(me));
    }
}
