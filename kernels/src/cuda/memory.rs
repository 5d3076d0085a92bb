//! Device buffers: 16-byte aligned allocations, uploads, downloads and fills on the backend's stream.

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, sys};

use super::{Cuda, device_err};
use crate::backend::BackendError;

/// A device buffer whose first element is 16-byte aligned: the fused kernels take their
/// 16-byte vector path (cp.async, LDG.128) only when x, W and the norm weight are, and fall back
/// to scalar loads otherwise. Allocated with 16 spare bytes and offset if the allocator's
/// pointer is not aligned.
pub struct DevBuf<T> {
    buf: CudaSlice<T>,
    off: usize,
    len: usize,
}

impl<T: DeviceRepr> DevBuf<T> {
    /// Elements (not counting the alignment slack).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The buffer from element `off` on, for ops that read or write part of it.
    pub fn at(&self, off: usize) -> View<'_, T> {
        View { buf: self, off }
    }
    /// The whole buffer as a view.
    pub fn all(&self) -> View<'_, T> {
        self.at(0)
    }
    pub(super) fn ptr(&self, stream: &CudaStream) -> sys::CUdeviceptr {
        dptr(&self.buf, stream) + (self.off * std::mem::size_of::<T>()) as u64
    }
}

/// Part of a device buffer: elements `off..` of `buf`. Ops check that it holds what they touch.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    buf: &'a DevBuf<T>,
    off: usize,
}

impl<T: DeviceRepr> View<'_, T> {
    /// Elements from the view's start to the buffer's end.
    pub fn len(&self) -> usize {
        self.buf.len.saturating_sub(self.off)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The device address, once `need` elements are known to fit (`what` names the operand).
    pub(super) fn checked_ptr(
        &self,
        stream: &CudaStream,
        need: usize,
        what: &str,
    ) -> Result<sys::CUdeviceptr, BackendError> {
        if self.off > self.buf.len || need > self.len() {
            return Err(BackendError::BadInput(format!(
                "{what}: {need} elements needed from offset {}, the buffer holds {}",
                self.off, self.buf.len
            )));
        }
        Ok(self.buf.ptr(stream) + (self.off * std::mem::size_of::<T>()) as u64)
    }
}

/// A slice's device address. Event tracking is off for the backend's context, so the guard
/// records nothing.
pub(super) fn dptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> sys::CUdeviceptr {
    let (p, _guard) = s.device_ptr(stream);
    p
}

impl Cuda {
    pub fn alloc<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<DevBuf<T>, BackendError> {
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

    pub fn upload<T: DeviceRepr>(&self, host: &[T], what: &str) -> Result<DevBuf<T>, BackendError> {
        let mut d = self.alloc::<T>(host.len(), what)?;
        self.write(&mut d, host, what)?;
        Ok(d)
    }

    /// Overwrites `d` with `host` (same length) in place: a captured graph sees the new values.
    pub fn write<T: DeviceRepr>(&self, d: &mut DevBuf<T>, host: &[T], what: &str) -> Result<(), BackendError> {
        if host.len() != d.len {
            return Err(BackendError::BadInput(format!("{what}: {} elements for a buffer of {}", host.len(), d.len)));
        }
        let (off, len) = (d.off, d.len);
        self.stream
            .memcpy_htod(host, &mut d.buf.slice_mut(off..off + len))
            .map_err(|e| device_err(format!("uploading {what}"), e))
    }

    pub fn download_buf<T: DeviceRepr>(&self, d: &DevBuf<T>, what: &str) -> Result<Vec<T>, BackendError> {
        self.stream
            .clone_dtoh(&d.buf.slice(d.off..d.off + d.len))
            .map_err(|e| device_err(format!("downloading {what}"), e))
    }

    /// The first `n` elements of `v`.
    pub fn download_view<T: DeviceRepr>(&self, v: View<'_, T>, n: usize, what: &str) -> Result<Vec<T>, BackendError> {
        v.checked_ptr(&self.stream, n, what)?;
        let off = v.off + v.buf.off;
        self.stream.clone_dtoh(&v.buf.buf.slice(off..off + n)).map_err(|e| device_err(format!("downloading {what}"), e))
    }

    pub fn fill<T: DeviceRepr + Clone>(&self, d: &mut DevBuf<T>, value: T) -> Result<(), BackendError> {
        let host = vec![value; d.len];
        self.write(d, &host, "poisoned outputs")
    }
}
