//! The PTX that build.rs produced, embedded in the library, and a per-device cache of loaded modules
//! and kernel functions: the PTX is JIT-compiled by the driver once per process, on first use.

use crate::error::{DriverContext, Error, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// PTX for Ampere and Ada (and any newer GPU through the driver's JIT).
pub const PTX_SM80: &str = include_str!(concat!(env!("OUT_DIR"), "/ironflash_sm80.ptx"));
/// PTX for Hopper (`sm_90a`: may use wgmma, setmaxnreg).
pub const PTX_SM90A: &str = include_str!(concat!(env!("OUT_DIR"), "/ironflash_sm90a.ptx"));

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
}

pub(crate) struct ModuleCache {
    arch: Arch,
    module: OnceLock<Arc<CudaModule>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl ModuleCache {
    pub(crate) fn new(arch: Arch) -> Self {
        ModuleCache { arch, module: OnceLock::new(), functions: Mutex::new(HashMap::new()) }
    }

    fn module(&self, ctx: &Arc<CudaContext>) -> Result<&Arc<CudaModule>> {
        if let Some(m) = self.module.get() {
            return Ok(m);
        }
        let m = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(self.arch.ptx()))
            .during("loading the ironflash PTX module")?;
        Ok(self.module.get_or_init(|| m))
    }

    /// The kernel `name`, with its dynamic shared-memory limit raised to `smem_bytes` (needed above 48 KiB).
    pub(crate) fn function(
        &self,
        ctx: &Arc<CudaContext>,
        name: &'static str,
        smem_bytes: usize,
    ) -> Result<CudaFunction> {
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = functions.get(name) {
            if smem_bytes > 48 * 1024 {
                raise_smem(f, name, smem_bytes)?;
            }
            return Ok(f.clone());
        }
        let f = self.module(ctx)?.load_function(name).map_err(|source| Error::Launch {
            kernel: format!("{name} (not found in the {} PTX)", self.arch.name()),
            source,
        })?;
        if smem_bytes > 48 * 1024 {
            raise_smem(&f, name, smem_bytes)?;
        }
        functions.insert(name, f.clone());
        Ok(f)
    }
}

fn raise_smem(f: &CudaFunction, name: &str, smem_bytes: usize) -> Result<()> {
    f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem_bytes as i32).map_err(
        |source| Error::Launch { kernel: format!("{name} (raising dynamic shared memory to {smem_bytes} B)"), source },
    )
}
