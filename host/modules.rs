//! The PTX that build.rs produced, embedded in the library, and a per-device cache of kernel functions.
//! Each kernel is its own module (the PTX's common part plus its entry, `ironflash_kernels::ptx_split`),
//! JIT-compiled by the driver the first time a call needs it: a process compiles only the kernels it
//! uses (the driver's JIT cache keeps them for the next process).

use crate::error::{Error, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// PTX for Ampere and Ada (and any newer GPU through the driver's JIT): the common part, then every
/// kernel entry (a complete module with all the kernels).
pub const PTX_SM80: &str = include_str!(concat!(env!("OUT_DIR"), "/ironflash_sm80.ptx"));
/// PTX for Hopper (`sm_90a`: may use wgmma, setmaxnreg), laid out as `PTX_SM80`.
pub const PTX_SM90A: &str = include_str!(concat!(env!("OUT_DIR"), "/ironflash_sm90a.ptx"));

/// Where the common part ends and each kernel entry sits in the PTX, per architecture (build.rs).
mod sm80 {
    include!(concat!(env!("OUT_DIR"), "/ironflash_sm80_entries.rs"));
}
mod sm90a {
    include!(concat!(env!("OUT_DIR"), "/ironflash_sm90a_entries.rs"));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Sm80,
    Sm90a,
}

impl Arch {
    pub fn ptx(self) -> &'static str {
        match self {
            Arch::Sm80 => PTX_SM80,
            Arch::Sm90a => PTX_SM90A,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::Sm80 => "sm_80",
            Arch::Sm90a => "sm_90a",
        }
    }
    fn index(self) -> (usize, &'static [(&'static str, usize, usize)]) {
        match self {
            Arch::Sm80 => (sm80::COMMON_LEN, sm80::ENTRIES),
            Arch::Sm90a => (sm90a::COMMON_LEN, sm90a::ENTRIES),
        }
    }
    /// The kernels of this architecture's PTX, in PTX order.
    pub fn kernels(self) -> impl Iterator<Item = &'static str> {
        self.index().1.iter().map(|e| e.0)
    }
    /// The module of one kernel: the PTX's common part and the kernel's entry; `None` when this
    /// architecture's PTX has no kernel of that name.
    pub fn kernel_module(self, name: &str) -> Option<String> {
        let (common_len, entries) = self.index();
        let &(_, start, end) = entries.iter().find(|e| e.0 == name)?;
        let ptx = self.ptx();
        Some([&ptx[..common_len], &ptx[start..end]].concat())
    }
}

pub(crate) struct ModuleCache {
    arch: Arch,
    /// Loaded kernels by name (each holds its module).
    functions: Mutex<HashMap<&'static str, Loaded>>,
}

impl ModuleCache {
    pub(crate) fn new(arch: Arch) -> Self {
        ModuleCache { arch, functions: Mutex::new(HashMap::new()) }
    }

    /// Loads (JIT-compiles) the module of kernel `name`.
    fn load(&self, ctx: &Arc<CudaContext>, name: &'static str) -> Result<CudaFunction> {
        let Some(ptx) = self.arch.kernel_module(name) else {
            return Err(Error::KernelMissing { kernel: name.into(), arch: self.arch.name() });
        };
        let module: Arc<CudaModule> = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(|source| {
            Error::Launch { kernel: format!("{name} (loading its {} module)", self.arch.name()), source }
        })?;
        module.load_function(name).map_err(|source| Error::Launch {
            kernel: format!("{name} (not found in its {} module)", self.arch.name()),
            source,
        })
    }

    /// The kernel `name`, with its dynamic shared-memory limit raised to `smem_bytes` (needed above 48 KiB;
    /// a driver call made once per kernel and size, not per launch).
    pub(crate) fn function(
        &self,
        ctx: &Arc<CudaContext>,
        name: &'static str,
        smem_bytes: usize,
    ) -> Result<CudaFunction> {
        let lock = || self.functions.lock().unwrap_or_else(|e| e.into_inner());
        // A loaded kernel (every call but the first): one lock.
        if let Some(loaded) = lock().get_mut(name) {
            return loaded.with_smem(name, smem_bytes);
        }
        // The lock is not held while the driver compiles a kernel (a fraction of a second): other
        // threads' calls go on meanwhile. Two threads that both miss compile it twice; the first
        // insert stays.
        let function = self.load(ctx, name)?;
        lock().entry(name).or_insert(Loaded { function, smem_limit: 48 * 1024 }).with_smem(name, smem_bytes)
    }
}

/// A loaded kernel and the dynamic shared memory its launches may use so far.
struct Loaded {
    function: CudaFunction,
    smem_limit: usize,
}

impl Loaded {
    /// The kernel, its limit raised to `smem_bytes` first where that is more than so far.
    fn with_smem(&mut self, name: &str, smem_bytes: usize) -> Result<CudaFunction> {
        if smem_bytes > self.smem_limit {
            raise_smem(&self.function, name, smem_bytes)?;
            self.smem_limit = smem_bytes;
        }
        Ok(self.function.clone())
    }
}

fn raise_smem(f: &CudaFunction, name: &str, smem_bytes: usize) -> Result<()> {
    f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem_bytes as i32).map_err(
        |source| Error::Launch { kernel: format!("{name} (raising dynamic shared memory to {smem_bytes} B)"), source },
    )
}
