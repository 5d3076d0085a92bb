//! Kernel launches: a small argument builder (no hand-built pointer arrays at call sites) and the
//! two launch forms, plain and chained (programmatic dependent launch).

use std::ffi::c_void;

use cudarc::driver::{DriverError, result as drv, sys};

#[cfg(target_endian = "big")]
compile_error!("KernelArgs stores 4-byte arguments in the low half of an 8-byte cell (little-endian only)");

/// A kernel's arguments in order, each in an 8-byte cell whose address the driver reads the
/// parameter from (`size_of` the parameter's type: 4-byte values sit in the cell's first bytes).
#[derive(Clone, Debug, Default)]
pub struct KernelArgs {
    cells: Vec<u64>,
}

impl KernelArgs {
    pub fn new() -> KernelArgs {
        KernelArgs::default()
    }
    /// A device pointer (0 for a null pointer).
    pub fn ptr(mut self, p: sys::CUdeviceptr) -> Self {
        self.cells.push(p);
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.cells.push(u64::from(v as u32));
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        self.cells.push(v as u64);
        self
    }
    pub fn f32(mut self, v: f32) -> Self {
        self.cells.push(u64::from(v.to_bits()));
        self
    }
    /// Dimensions as the kernels' `int` parameters (sizes were checked against i32 in `prepare`).
    pub fn dims(self, values: &[usize]) -> Self {
        values.iter().fold(self, |a, &v| a.i32(v as i32))
    }
    fn pointers(&mut self) -> Vec<*mut c_void> {
        self.cells.iter_mut().map(|c| (c as *mut u64).cast()).collect()
    }
}

/// The geometry of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub smem: u32,
}

/// Launches `func` on `stream`; with `chained`, with programmatic stream serialization: it may
/// start before the previous kernel on the stream has finished.
///
/// # Safety
/// As `cuLaunchKernel(Ex)`: `args` match the kernel's parameters in order and type, the buffers
/// they point to hold what the kernel reads and writes, and the geometry follows the kernel's
/// launch rule; a chained kernel must not read what the previous kernel writes before its
/// griddepcontrol.wait.
pub unsafe fn launch(
    func: sys::CUfunction,
    g: Geometry,
    stream: sys::CUstream,
    mut args: KernelArgs,
    chained: bool,
) -> Result<(), DriverError> {
    let mut ptrs = args.pointers();
    if !chained {
        // SAFETY: the caller's contract; `args` outlives the call.
        return unsafe { drv::launch_kernel(func, g.grid, (g.block, 1, 1), g.smem, stream, &mut ptrs) };
    }
    // SAFETY: an all-zero launch attribute is valid plain data; id and value are set next.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: g.grid.0,
        gridDimY: g.grid.1,
        gridDimZ: g.grid.2,
        blockDimX: g.block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: g.smem,
        hStream: stream,
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: the caller's contract; `cfg`, `attr` and `args` outlive the call.
    unsafe { sys::cuLaunchKernelEx(&cfg, func, ptrs.as_mut_ptr(), std::ptr::null_mut()) }.result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_argument_is_read_from_its_own_cell_in_its_own_width() {
        let mut a = KernelArgs::new().ptr(0xdead_beef_0000).i32(-3).f32(1.5).i64(-7).dims(&[1024, 16]);
        let p = a.pointers();
        assert_eq!(p.len(), 6);
        // SAFETY: each pointer addresses a live u64 cell of `a`; the reads use the parameter's width.
        unsafe {
            assert_eq!(*(p[0] as *const u64), 0xdead_beef_0000);
            assert_eq!(*(p[1] as *const i32), -3);
            assert_eq!(*(p[2] as *const f32), 1.5);
            assert_eq!(*(p[3] as *const i64), -7);
            assert_eq!(*(p[4] as *const i32), 1024);
            assert_eq!(*(p[5] as *const i32), 16);
        }
    }
}
