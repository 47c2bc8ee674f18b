//! Measuring device work: CUDA events around each call, random inputs filled on the device, the memory
//! pool's high-water mark, and the bf16 matmul peak that every row is compared with.

use cudarc::driver::sys::{self, CUevent_flags, CUmemPool_attribute, CUresult};
use cudarc::driver::{CudaEvent, CudaSlice};
use ironflash::device::Device;
use ironflash::dtype::Element;
use ironflash::error::{DriverContext, Error, Result};
use rand::Rng;

/// A timing event (cudarc's default `None` flags make events without timing).
fn timing_event(dev: &Device) -> Result<CudaEvent> {
    dev.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).during("creating a timing event")
}

/// Run `call(i)` for `i in 0..reps` back to back on the device's stream, with an event recorded before
/// each call and after the last, and return each call's time in ms. Nothing waits between calls, so as
/// long as the host keeps ahead of the device the times are device time; a call that synchronises
/// inside (or whose host work outlasts the previous call's device work) pays for its gap too.
pub fn time_calls(dev: &Device, reps: usize, mut call: impl FnMut(usize) -> Result<()>) -> Result<Vec<f64>> {
    let events = (0..=reps).map(|_| timing_event(dev)).collect::<Result<Vec<_>>>()?;
    let stream = dev.stream();
    events[0].record(stream).during("recording a timing event")?;
    for (i, end) in events[1..].iter().enumerate() {
        call(i)?;
        end.record(stream).during("recording a timing event")?;
    }
    dev.synchronize()?;
    events.windows(2).map(|w| w[0].elapsed_ms(&w[1]).map(f64::from).during("reading a timing event")).collect()
}

/// Whether an error is the device running out of memory (the standard path at long N, by design).
pub fn is_oom(e: &Error) -> bool {
    let oom = |r: &CUresult| *r == CUresult::CUDA_ERROR_OUT_OF_MEMORY;
    match e {
        Error::Driver { source, .. } | Error::Launch { source, .. } => oom(&source.0),
        Error::Cublas { source, .. } => source.0 == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED,
        _ => false,
    }
}

/// Random device buffers without generating every element on the host: one chunk of uniform values in
/// [-1, 1) is uploaded once and copied device-to-device into each buffer at shifting offsets, so buffers
/// and input sets differ from each other and nothing is zero.
pub struct RandomSource<T: Element> {
    chunk: CudaSlice<T>,
}

/// Elements per device-to-device copy; the uploaded chunk holds twice as many so that each copy can
/// start at a different offset.
const SEGMENT: usize = 4 << 20;

impl<T: Element> RandomSource<T> {
    pub fn new(dev: &Device, rng: &mut impl Rng) -> Result<Self> {
        let host: Vec<T> = (0..2 * SEGMENT).map(|_| T::from_f32(rng.random_range(-1.0f32..1.0))).collect();
        let chunk = dev.stream().clone_htod(&host).during("uploading the random source")?;
        Ok(RandomSource { chunk })
    }

    /// A buffer of `len` random elements; `salt` picks the offsets (different salts, different data).
    pub fn buffer(&self, dev: &Device, len: usize, salt: u64) -> Result<CudaSlice<T>> {
        let stream = dev.stream();
        // SAFETY: every element is written by the copies below before anything reads it.
        let mut buf = unsafe { stream.alloc::<T>(len) }.during("allocating a benchmark input")?;
        let mut start = 0;
        let mut k = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        while start < len {
            let n = SEGMENT.min(len - start);
            k = k.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let offset = (k >> 33) as usize % SEGMENT;
            let src = self.chunk.slice(offset..offset + n);
            let mut dst = buf.slice_mut(start..start + n);
            stream.memcpy_dtod(&src, &mut dst).during("filling a benchmark input")?;
            start += n;
        }
        Ok(buf)
    }
}

/// The device's default memory pool, which cudarc's stream-ordered allocations (`cuMemAllocAsync`) come
/// from: its high-water mark gives a call's peak memory exactly, frees included.
pub struct PoolWatermark {
    pool: sys::CUmemoryPool,
}

impl PoolWatermark {
    /// `None` when the device does not allocate from a pool (no stream-ordered allocator).
    pub fn new(dev: &Device) -> Option<PoolWatermark> {
        let ctx = dev.context();
        if !ctx.has_async_alloc() || ctx.bind_to_thread().is_err() {
            return None;
        }
        let mut pool = std::ptr::null_mut();
        // SAFETY: writes one pool handle for a valid device.
        let ok = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }.result().is_ok();
        ok.then_some(PoolWatermark { pool })
    }

    fn get(&self, attr: CUmemPool_attribute) -> Result<u64> {
        let mut v: u64 = 0;
        // SAFETY: the used-memory attributes are 64-bit integers.
        unsafe { sys::cuMemPoolGetAttribute(self.pool, attr, &mut v as *mut u64 as *mut _) }
            .result()
            .during("reading the memory pool")?;
        Ok(v)
    }

    /// Bytes of the pool in use now.
    pub fn used(&self) -> Result<u64> {
        self.get(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }

    /// Highest use since the last `reset`.
    pub fn high(&self) -> Result<u64> {
        self.get(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
    }

    /// Give the pool's unused memory back to the device, so that the next case (or the PyTorch peers, in
    /// another process) can have all of it. Call after a synchronisation.
    pub fn trim(&self) -> Result<()> {
        // SAFETY: a valid pool handle; trimming only releases memory no allocation holds.
        unsafe { sys::cuMemPoolTrimTo(self.pool, 0) }.result().during("trimming the memory pool")
    }

    /// Restart the high-water mark from the current use (the driver accepts only 0 here).
    pub fn reset(&self) -> Result<()> {
        let mut zero: u64 = 0;
        // SAFETY: as above.
        unsafe {
            sys::cuMemPoolSetAttribute(
                self.pool,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut zero as *mut u64 as *mut _,
            )
        }
        .result()
        .during("resetting the memory pool's high-water mark")
    }
}

/// The dense bf16 matmul rate of this device, in TFLOP/s: the median of cuBLAS 8192³ GEMMs (f32
/// accumulate) on random inputs, after warm-up. The suite divides every row's TFLOP/s by it.
pub fn measure_bf16_peak(dev: &Device, reps: usize) -> Result<f64> {
    use cudarc::cublas::{result as blas, sys as blas_sys};
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    const N: usize = 8192;
    let src = RandomSource::<half::bf16>::new(dev, &mut rand::rng())?;
    let a = src.buffer(dev, N * N, 1)?;
    let b = src.buffer(dev, N * N, 2)?;
    // SAFETY: the GEMM writes every element of C (beta = 0).
    let mut c = unsafe { dev.stream().alloc::<half::bf16>(N * N) }.during("allocating the GEMM output")?;
    let blas = dev.cublas()?;
    let (one, zero) = (1.0f32, 0.0f32);
    let ty = blas_sys::cudaDataType_t::CUDA_R_16BF;
    let mut gemm = |_| -> Result<()> {
        let (pa, _sa) = a.device_ptr(dev.stream());
        let (pb, _sb) = b.device_ptr(dev.stream());
        let (pc, _sc) = c.device_ptr_mut(dev.stream());
        let n = N as i32;
        // SAFETY: three live N x N buffers; column-major, no transposes.
        unsafe {
            blas::gemm_ex(
                *blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n,
                n,
                n,
                (&one) as *const f32 as *const _,
                pa as *const _,
                ty,
                n,
                pb as *const _,
                ty,
                n,
                (&zero) as *const f32 as *const _,
                pc as *mut _,
                ty,
                n,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .during("the peak GEMM (cuBLAS)")
    };
    time_calls(dev, 3, &mut gemm)?;
    let times = time_calls(dev, reps.max(1), &mut gemm)?;
    let median = crate::bench::stats::Summary::of(&times).map(|s| s.median).unwrap_or(f64::NAN);
    Ok(2.0 * (N as f64).powi(3) / (median * 1e-3) / 1e12)
}
