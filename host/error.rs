//! One error type for the whole library. Every variant names the offending argument and carries the
//! values that made it wrong, so a caller can act on it without reading our source.

use crate::dtype::DType;

/// Which tensor of an attention call an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    Q,
    K,
    V,
    O,
    Lse,
    DO,
    DQ,
    DK,
    DV,
    AlibiSlopes,
    Sinks,
    DSinks,
    Softcap,
    /// A packed (varlen) batch's query offsets.
    CuSeqlensQ,
    /// A packed (varlen) batch's key offsets.
    CuSeqlensK,
    /// A paged cache's block table.
    BlockTable,
    /// A paged cache's cached lengths.
    CacheSeqlens,
    /// The rotary embedding tables of a paged call.
    Rotary,
}

impl std::fmt::Display for Arg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Arg::Q => "q",
            Arg::K => "k",
            Arg::V => "v",
            Arg::O => "o",
            Arg::Lse => "lse",
            Arg::DO => "d_o",
            Arg::DQ => "d_q",
            Arg::DK => "d_k",
            Arg::DV => "d_v",
            Arg::AlibiSlopes => "alibi_slopes",
            Arg::Sinks => "sinks",
            Arg::DSinks => "d_sinks",
            Arg::Softcap => "softcap",
            Arg::CuSeqlensQ => "cu_seqlens_q",
            Arg::CuSeqlensK => "cu_seqlens_k",
            Arg::BlockTable => "block_table",
            Arg::CacheSeqlens => "cache_seqlens",
            Arg::Rotary => "rotary",
        };
        f.write_str(name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{arg}: expected rank 4 [batch, seqlen, heads, head_dim], got rank {rank}")]
    BadRank { arg: Arg, rank: usize },

    #[error("{arg}: dimension {dim} ({name}) is zero; every dimension must be at least 1")]
    ZeroDim { arg: Arg, dim: usize, name: &'static str },

    #[error("{arg}: {what} is {got}, but {expected} was expected ({why})")]
    ShapeMismatch { arg: Arg, what: &'static str, got: usize, expected: usize, why: &'static str },

    #[error("heads: q has {heads_q} heads, k/v have {heads_kv}; heads_q must be a multiple of heads_kv (MQA/GQA)")]
    HeadsNotMultiple { heads_q: usize, heads_kv: usize },

    #[error("{arg}: head_dim {head_dim} is not supported; supported head dims are {supported:?}")]
    UnsupportedHeadDim { arg: Arg, head_dim: usize, supported: &'static [usize] },

    /// A paged cache whose table or lengths do not fit its pages (`cpu::paged::PagedKv`).
    #[error("{arg}: {why}")]
    BadPagedCache { arg: Arg, why: String },

    /// Sequence offsets of a packed batch that do not describe its tensors (`cpu::varlen::Varlen`).
    #[error("{arg}: {why}")]
    BadSeqlenOffsets { arg: Arg, why: String },

    /// V's head dim is not one the kernels pair with q's and k's (`problem::supported_head_dims_v`).
    #[error(
        "v: head_dim {head_dim_v} is not supported with q's and k's head_dim {head_dim}; v's may be {supported:?}"
    )]
    UnsupportedHeadDimV { head_dim: usize, head_dim_v: usize, supported: &'static [usize] },

    #[error("{arg}: dtype {dtype} is not supported by {path}; use bf16 or f16")]
    UnsupportedDtype { arg: Arg, dtype: DType, path: &'static str },

    #[error("{arg}: the last dimension must be contiguous (stride 1), got stride {stride}")]
    NonContiguousLastDim { arg: Arg, stride: usize },

    #[error("{arg}: strides {strides:?} with shape {shape:?} reach element {needed} but the buffer holds {len}")]
    BufferTooSmall { arg: Arg, shape: [usize; 4], strides: [usize; 4], needed: usize, len: usize },

    #[error("{arg}: strides {strides:?} make distinct elements of shape {shape:?} overlap in an output tensor")]
    OverlappingOutput { arg: Arg, shape: [usize; 4], strides: [usize; 4] },

    #[error("{arg}: strides {strides:?} must be multiples of {multiple} elements (16 bytes) for the fused kernels' vector loads and stores")]
    MisalignedStrides { arg: Arg, strides: [usize; 4], multiple: usize },

    #[error("{arg}: the buffer starts at device address {address:#x}, not a multiple of 16 bytes, which the kernels' vector loads and TMA copies need")]
    MisalignedBuffer { arg: Arg, address: u64 },

    #[error("{arg}: {what} = {value} exceeds the kernel's 32-bit index range")]
    TooLarge { arg: Arg, what: &'static str, value: usize },

    #[error("softmax_scale must be finite and non-zero, got {0}")]
    BadScale(f32),

    #[error("{arg}: descale factor {index} is {value}; FP8 descale factors must be finite and positive")]
    BadDescale { arg: Arg, index: usize, value: f32 },

    /// FP8 inputs rotated unlike each other (`fp8::Rotation`): the scores stay what they were only
    /// when Q and K share one rotation, and O comes out rotated when V has one.
    #[error(
        "FP8 inputs: Q and K must be rotated with the same seed and V not at all; got seeds Q {q:?}, K {k:?}, V {v:?}"
    )]
    RotationMismatch { q: Option<u32>, k: Option<u32>, v: Option<u32> },

    #[error("softcap must be finite and positive, got {0}")]
    BadSoftcap(f32),

    #[error("{arg}: this path needs a {expected} buffer, got a {got} one")]
    PerHeadLocation { arg: Arg, expected: &'static str, got: &'static str },

    #[error("{arg}: {what} is not supported by {path}")]
    UnsupportedOption { arg: Arg, what: &'static str, path: &'static str },

    #[error("{arg}: lives on device {got}, but this call runs on device {expected}")]
    DeviceMismatch { arg: Arg, got: usize, expected: usize },

    #[error("no CUDA driver: {0}")]
    NoDriver(String),

    #[error("device {ordinal}: compute capability {major}.{minor} is not supported (ironflash needs sm_80 or newer)")]
    UnsupportedDevice { ordinal: usize, major: i32, minor: i32 },

    #[error("no tile configuration fits: {0}")]
    NoTileConfig(String),

    #[error("CUDA driver call failed during {during}: {source}")]
    Driver {
        during: &'static str,
        #[source]
        source: cudarc::driver::DriverError,
    },

    #[error("cuBLAS call failed during {during}: {source}")]
    Cublas {
        during: &'static str,
        #[source]
        source: cudarc::cublas::result::CublasError,
    },

    #[error("kernel launch failed for {kernel}: {source}")]
    Launch {
        kernel: String,
        #[source]
        source: cudarc::driver::DriverError,
    },

    /// A call that allocates its outputs on a stream that is capturing a CUDA graph.
    #[error("{call} allocates its outputs, which a CUDA graph capture cannot replay; capture the `_into` call with preallocated outputs")]
    AllocatesDuringCapture { call: &'static str },

    /// `Device::for_stream` with a stream of another CUDA context.
    #[error("the stream belongs to another CUDA context than the device's")]
    ForeignStream,

    /// A tensor that must be contiguous (a ring's shard) is not.
    #[error("{arg}: strides {strides:?} for shape {shape:?}; {path} needs contiguous tensors")]
    NotContiguous { arg: Arg, shape: [usize; 4], strides: [usize; 4], path: &'static str },

    /// NCCL could not be loaded (context-parallel attention; `ring::nccl`).
    #[error("NCCL is not available: {0}")]
    NoNccl(String),

    /// An NCCL call failed.
    #[error("NCCL call failed during {during}: {message} (ncclResult {code})")]
    Nccl { during: &'static str, code: i32, message: String },

    /// A ring's rank outside `0..world`, or an empty ring.
    #[error("rank {rank} of a ring of {world}: ranks are 0..world, world at least 1")]
    BadRingRank { rank: usize, world: usize },

    /// A peer of the ring did not answer within the communicator's timeout; the communicator is aborted.
    #[error("a peer of the ring did not answer within {seconds} s during {during}; the communicator is aborted")]
    RingTimeout { during: &'static str, seconds: f64 },

    /// A call on a communicator that an earlier failure aborted.
    #[error("the ring's communicator was aborted by an earlier failure; make a new one")]
    RingAborted,

    /// Another rank of the ring refused the call (its own error says why); no transfer was made.
    #[error("rank {rank} of the ring refused the call (its inputs failed validation); no transfer was made")]
    PeerFailed { rank: usize },

    /// The ranks of a ring were called with different problems.
    #[error("rank {rank} of the ring was called with {what} {got}, this rank with {expected}")]
    RankMismatch { rank: usize, what: &'static str, got: u64, expected: u64 },

    /// The embedded PTX of this architecture has no kernel of this name (a build without it).
    #[error("kernel {kernel} is not in the embedded {arch} PTX")]
    KernelMissing { kernel: String, arch: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach "what we were doing" to a driver or cuBLAS error, as this crate's own calls do (for code that
/// drives the device next to it, such as the benchmark suite's timing).
pub trait DriverContext<T> {
    /// The error as [`Error::Driver`] (or [`Error::Cublas`]) with `during` saying what failed.
    fn during(self, during: &'static str) -> Result<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn during(self, during: &'static str) -> Result<T> {
        self.map_err(|source| Error::Driver { during, source })
    }
}

impl<T> DriverContext<T> for std::result::Result<T, cudarc::cublas::result::CublasError> {
    fn during(self, during: &'static str) -> Result<T> {
        self.map_err(|source| Error::Cublas { during, source })
    }
}
