//! Where a prepared entry writes q, k and v: three buffers of their own (the fused kernels), or
//! column ranges of one [T, N] buffer (the standard path: cuBLAS's output of B @ W^T, whose q, k
//! and v are views as torch's `split` of F.linear's output is, so nothing copies them apart).
//! Consumers on the device read them as strided [`Rows`]; the host gets them contiguous.

use half::bf16;

use super::Cuda;
use super::memory::{DevBuf, View};
use super::prepared::Prepared;
use crate::backend::BackendError;
use crate::op::Shape;

/// The storage behind q, k and v.
pub(super) enum Outputs {
    /// q [T, Nq*D], k and v [T, Nkv*D], each its own buffer.
    Separate([DevBuf<bf16>; 3]),
    /// One [T, N] buffer, each row q | k | v.
    Packed(DevBuf<bf16>),
}

/// One of q, k, v on the device: rows of `width` elements, `stride` elements apart.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    view: View<'a, bf16>,
    /// Elements per row.
    pub width: usize,
    /// Elements from one row's start to the next's.
    pub stride: usize,
}

impl Rows<'_> {
    /// The device address, once `t` rows are known to fit (`what` names the operand).
    pub(super) fn checked_ptr(
        &self,
        stream: &cudarc::driver::CudaStream,
        t: usize,
        what: &str,
    ) -> Result<u64, BackendError> {
        let span = t.saturating_sub(1) * self.stride + self.width;
        self.view.checked_ptr(stream, span, what)
    }
}

/// q, k and v, as buffers and errors name them.
const NAMES: [&str; 3] = ["q", "k", "v"];

/// q, k and v's widths at `s`.
fn widths(s: &Shape) -> [usize; 3] {
    [s.q_width(), s.kv_width(), s.kv_width()]
}

impl Outputs {
    /// Unset buffers for q, k and v at `s`, packed or separate.
    pub(super) fn alloc(cuda: &Cuda, s: &Shape, packed: bool) -> Result<Self, BackendError> {
        if packed {
            return Ok(Outputs::Packed(cuda.alloc(s.t * s.n(), "q|k|v")?));
        }
        let w = widths(s);
        Ok(Outputs::Separate([
            cuda.alloc(s.t * w[0], NAMES[0])?,
            cuda.alloc(s.t * w[1], NAMES[1])?,
            cuda.alloc(s.t * w[2], NAMES[2])?,
        ]))
    }

    /// q, k and v as rows at `s`.
    pub(super) fn rows(&self, s: &Shape) -> [Rows<'_>; 3] {
        let w = widths(s);
        match self {
            Outputs::Separate(bufs) => std::array::from_fn(|i| Rows { view: bufs[i].all(), width: w[i], stride: w[i] }),
            Outputs::Packed(buf) => {
                let starts = [0, w[0], w[0] + w[1]];
                std::array::from_fn(|i| Rows { view: buf.at(starts[i]), width: w[i], stride: s.n() })
            }
        }
    }

    /// Every buffer behind q, k and v (to poison them).
    pub(super) fn buffers_mut(&mut self) -> Vec<&mut DevBuf<bf16>> {
        match self {
            Outputs::Separate(bufs) => bufs.iter_mut().collect(),
            Outputs::Packed(buf) => vec![buf],
        }
    }
}

impl Cuda {
    /// q [T, Nq*D], k and v [T, Nkv*D] of `p`, copied to the host contiguous (synchronous).
    pub fn download_qkv(&self, p: &Prepared) -> Result<[Vec<bf16>; 3], BackendError> {
        let s = p.shape();
        match &p.out {
            Outputs::Separate([q, k, v]) => {
                Ok([self.download_buf(q, NAMES[0])?, self.download_buf(k, NAMES[1])?, self.download_buf(v, NAMES[2])?])
            }
            Outputs::Packed(buf) => Ok(unpack(&self.download_buf(buf, "q|k|v")?, widths(&s))),
        }
    }

    /// Overwrites q, k and v of `p` with `qkv`, each [T, width] contiguous as
    /// [`Cuda::download_qkv`] gives them (a control's perturbation).
    pub fn write_qkv(&self, p: &mut Prepared, qkv: [&[bf16]; 3]) -> Result<(), BackendError> {
        let s = p.shape();
        let w = widths(&s);
        for ((part, wi), name) in qkv.iter().zip(w).zip(NAMES) {
            if part.len() != s.t * wi {
                return Err(BackendError::BadInput(format!(
                    "{name}: {} elements written, the output holds {}",
                    part.len(),
                    s.t * wi
                )));
            }
        }
        match &mut p.out {
            Outputs::Separate(bufs) => {
                for ((buf, part), name) in bufs.iter_mut().zip(qkv).zip(NAMES) {
                    self.write(buf, part, name)?;
                }
                Ok(())
            }
            Outputs::Packed(buf) => self.write(buf, &pack(qkv, w, s.t), "q|k|v"),
        }
    }
}

/// Rows of q | k | v (widths `w`) into q, k and v, each contiguous.
fn unpack(all: &[bf16], w: [usize; 3]) -> [Vec<bf16>; 3] {
    let n = w.iter().sum::<usize>();
    let mut out = w.map(|wi| Vec::with_capacity(all.len() / n.max(1) * wi));
    for row in all.chunks_exact(n) {
        let (q, kv) = row.split_at(w[0]);
        let (k, v) = kv.split_at(w[1]);
        for (o, part) in out.iter_mut().zip([q, k, v]) {
            o.extend_from_slice(part);
        }
    }
    out
}

/// q, k and v (`t` rows each, widths `w`) into rows of q | k | v: [`unpack`]'s inverse.
fn pack(qkv: [&[bf16]; 3], w: [usize; 3], t: usize) -> Vec<bf16> {
    let mut all = Vec::with_capacity(t * w.iter().sum::<usize>());
    for row in 0..t {
        for (part, wi) in qkv.iter().zip(w) {
            all.extend_from_slice(&part[row * wi..(row + 1) * wi]);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element of a packed [T, N] buffer tagged with its row and column (exact in bf16).
    fn tagged(t: usize, n: usize) -> Vec<bf16> {
        (0..t * n).map(|i| bf16::from_f32((1 + (i / n) * 64 + i % n) as f32)).collect()
    }

    #[test]
    fn unpack_takes_each_output_from_its_column_range_of_every_row() {
        let (t, w) = (3, [6, 2, 2]);
        let all = tagged(t, 10);
        let [q, k, v] = unpack(&all, w);
        assert_eq!((q.len(), k.len(), v.len()), (18, 6, 6));
        let tag = |row: usize, col: usize| bf16::from_f32((1 + row * 64 + col) as f32);
        assert_eq!((q[0], q[5], q[6], q[17]), (tag(0, 0), tag(0, 5), tag(1, 0), tag(2, 5)));
        assert_eq!((k[0], k[1], k[2], k[5]), (tag(0, 6), tag(0, 7), tag(1, 6), tag(2, 7)));
        assert_eq!((v[0], v[3], v[5]), (tag(0, 8), tag(1, 9), tag(2, 9)));
    }

    #[test]
    fn pack_is_unpacks_inverse() {
        let (t, w) = (4, [8, 4, 4]);
        let all = tagged(t, 16);
        let [q, k, v] = unpack(&all, w);
        assert_eq!(pack([&q, &k, &v], w, t), all);
    }
}
