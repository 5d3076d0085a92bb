//! Device buffers: 16-byte aligned allocations, uploads, downloads and fills on the backend's stream.

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, sys};

use super::{Cuda, device_err};
use crate::backend::BackendError;

/// A device buffer whose first element is 16-byte aligned: the fused kernels take their
/// 16-byte vector path (cp.async, LDG.128) only when x, W and the norm weight are, and fall back
/// to scalar loads otherwise. Allocated with 16 spare bytes and offset if the allocator's
/// pointer is not aligned.
pub(super) struct DevBuf<T> {
    buf: CudaSlice<T>,
    off: usize,
    len: usize,
}

impl<T: DeviceRepr> DevBuf<T> {
    pub(super) fn ptr(&self, stream: &CudaStream) -> sys::CUdeviceptr {
        dptr(&self.buf, stream) + (self.off * std::mem::size_of::<T>()) as u64
    }
}

/// A slice's device address. Event tracking is off for the backend's context, so the guard
/// records nothing.
pub(super) fn dptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> sys::CUdeviceptr {
    let (p, _guard) = s.device_ptr(stream);
    p
}

impl Cuda {
    pub(super) fn alloc<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<DevBuf<T>, BackendError> {
        let len = len.max(1);
        let size = std::mem::size_of::<T>();
        // SAFETY: every buffer allocated here is uploaded, poisoned or fully written by a kernel
        // before it is read back.
        let buf = unsafe { self.stream.alloc::<T>(len + 16 / size) }
            .map_err(|e| device_err(format!("allocating {what}"), e))?;
        let misalign = (dptr(&buf, &self.stream) % 16) as usize;
        let off = if misalign == 0 || !misalign.is_multiple_of(size) { 0 } else { (16 - misalign) / size };
        Ok(DevBuf { buf, off, len })
    }

    pub(super) fn upload<T: DeviceRepr>(&self, host: &[T], what: &str) -> Result<DevBuf<T>, BackendError> {
        let mut d = self.alloc::<T>(host.len(), what)?;
        self.write(&mut d, host, what)?;
        Ok(d)
    }

    /// Overwrites `d` with `host` (same length) in place: a captured graph sees the new values.
    pub(super) fn write<T: DeviceRepr>(&self, d: &mut DevBuf<T>, host: &[T], what: &str) -> Result<(), BackendError> {
        if host.len() != d.len {
            return Err(BackendError::BadInput(format!("{what}: {} elements for a buffer of {}", host.len(), d.len)));
        }
        let (off, len) = (d.off, d.len);
        self.stream
            .memcpy_htod(host, &mut d.buf.slice_mut(off..off + len))
            .map_err(|e| device_err(format!("uploading {what}"), e))
    }

    pub(super) fn download_buf<T: DeviceRepr>(&self, d: &DevBuf<T>, what: &str) -> Result<Vec<T>, BackendError> {
        self.stream
            .clone_dtoh(&d.buf.slice(d.off..d.off + d.len))
            .map_err(|e| device_err(format!("downloading {what}"), e))
    }

    pub(super) fn fill<T: DeviceRepr + Clone>(&self, d: &mut DevBuf<T>, value: T) -> Result<(), BackendError> {
        let host = vec![value; d.len];
        self.write(d, &host, "poisoned outputs")
    }
}
