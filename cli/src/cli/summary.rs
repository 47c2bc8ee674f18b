//! How the device (or its absence) is described at the top of every job.

use ironflash::Device;

pub fn no_gpu_line(why: &str, instead: &str) {
    println!("no GPU: {why}; {instead}");
}

/// What the jobs that compute do without a GPU.
pub fn cpu_fallback() -> String {
    format!("running the CPU path ({} threads)", rayon::current_num_threads())
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// One line: name, architecture, SMs, shared memory, L2, memory, driver.
pub fn device_line(dev: &Device) -> String {
    let i = dev.info();
    let free = dev.mem_info().map(|(f, _)| format!(", {:.1} GiB free", gib(f))).unwrap_or_default();
    format!(
        "device {}: {} (sm_{}{}, {} SMs, {} KiB smem/block, L2 {} MiB, {:.1} GiB{free}), CUDA driver {}.{}",
        i.ordinal,
        i.name,
        i.compute_capability.0,
        i.compute_capability.1,
        i.sm_count,
        i.smem_per_block_optin / 1024,
        i.l2_bytes >> 20,
        gib(i.total_mem),
        i.driver_version / 1000,
        (i.driver_version % 1000) / 10
    )
}
