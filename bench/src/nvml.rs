//! NVML: the card's identity and state (recorded, never changed) and this process's device memory.

use crate::schema::Conditions;
use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// NVML for device 0, or why not (never a panic: `Nvml::init` returns an error without the library).
pub struct Gpu {
    nvml: Nvml,
    pub total_memory: u64,
}

impl Gpu {
    pub fn open() -> Result<Gpu, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML unavailable: {e}"))?;
        let total_memory =
            nvml.device_by_index(0).and_then(|d| d.memory_info()).map_err(|e| format!("NVML device 0: {e}"))?.total;
        Ok(Gpu { nvml, total_memory })
    }

    pub fn driver(&self) -> String {
        self.nvml.sys_driver_version().unwrap_or_else(|e| format!("unknown ({e})"))
    }

    pub fn cuda_driver_api(&self) -> String {
        self.nvml.sys_cuda_driver_version().map_or_else(|e| format!("unknown ({e})"), |v| v.to_string())
    }

    /// Clocks, temperature, power and throttle reasons now.
    pub fn conditions(&self) -> Conditions {
        let Ok(d) = self.nvml.device_by_index(0) else { return Conditions::default() };
        let benign = ThrottleReasons::GPU_IDLE | ThrottleReasons::APPLICATIONS_CLOCKS_SETTING | ThrottleReasons::NONE;
        let reasons = d.current_throttle_reasons().map(|r| r - benign).unwrap_or(ThrottleReasons::empty());
        Conditions {
            sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            mem_clock_mhz: d.clock_info(Clock::Memory).ok(),
            temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
            power_w: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
            throttle_reasons: reasons.iter_names().map(|(n, _)| n.to_string()).collect(),
        }
    }

    /// This process's device memory in bytes, or `None` where the driver does not say (some
    /// report u64::MAX as "not available": guarded).
    pub fn process_memory(&self) -> Option<u64> {
        let pid = std::process::id();
        let d = self.nvml.device_by_index(0).ok()?;
        let procs = d.running_compute_processes().ok()?;
        procs.iter().find(|p| p.pid == pid).and_then(|p| match p.used_gpu_memory {
            UsedGpuMemory::Used(b) if b != u64::MAX && b <= self.total_memory => Some(b),
            _ => None,
        })
    }
}

/// Samples this process's device memory in the background and keeps the peak.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<JoinHandle<bool>>,
}

impl PeakSampler {
    /// Starts sampling every `period` (NVML answers in tens of microseconds).
    pub fn start(gpu: Arc<Gpu>, period: Duration) -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            let mut seen = false;
            while !s.load(Ordering::Relaxed) {
                if let Some(b) = gpu.process_memory() {
                    seen = true;
                    p.fetch_max(b, Ordering::Relaxed);
                }
                std::thread::sleep(period);
            }
            seen
        });
        PeakSampler { stop, peak, handle: Some(handle) }
    }

    /// Stops and returns the peak, or `None` if NVML never reported this process.
    pub fn finish(mut self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.handle.take().and_then(|h| h.join().ok()).unwrap_or(false);
        seen.then(|| self.peak.load(Ordering::Relaxed))
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
