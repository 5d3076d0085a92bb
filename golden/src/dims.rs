//! Shapes read from files are untrusted: `Shape::n()` and `Stage::len()` multiply without
//! overflow checks, so every shape is proven small enough before anything derives sizes from it.

use fusegate_kernels::{Dims, Shape};

/// Err(reason) when any size a weight set of dims `d` implies would overflow `usize`.
pub(crate) fn check_dims(d: &Dims) -> Result<(), String> {
    check_shape(&d.with_t(1)).map_err(|_| format!("dims {} overflow usize", describe_weights(d)))
}

/// Err(reason) when any size the op derives from `s` would overflow `usize`.
pub(crate) fn check_shape(s: &Shape) -> Result<(), String> {
    let fits = || -> Option<()> {
        let n = s.nkv.checked_mul(2)?.checked_add(s.nq)?.checked_mul(s.d)?;
        // Largest element counts of any tensor: x/a/b [t, h], qkv [n, h], q/k/v [t, <= n];
        // times 4 so that byte counts of f32 views cannot overflow either.
        for elems in [s.t.checked_mul(s.h)?, n.checked_mul(s.h)?, s.t.checked_mul(n)?] {
            elems.checked_mul(4)?;
        }
        Some(())
    };
    fits().ok_or_else(|| format!("shape t={} h={} nq={} nkv={} d={} overflows usize", s.t, s.h, s.nq, s.nkv, s.d))
}

/// Err(reason) unless a case's shape can be run: every dimension positive (a case with t = 0 has
/// nothing to compare, and the backends refuse it) and every derived size within `usize`.
pub(crate) fn check_case_shape(s: &Shape) -> Result<(), String> {
    if [s.t, s.h, s.nq, s.nkv, s.d].contains(&0) {
        return Err(format!("shape {} has a zero dimension (every dimension must be positive)", describe(s)));
    }
    check_shape(s)
}

/// "t=3 h=64 nq=4 nkv=2 d=16": how shapes appear in messages and summaries.
pub(crate) fn describe(s: &Shape) -> String {
    format!("t={} h={} nq={} nkv={} d={}", s.t, s.h, s.nq, s.nkv, s.d)
}

/// "h=64 nq=4 nkv=2 d=16": a weight set's dims (weights have no token count).
pub(crate) fn describe_weights(s: &Dims) -> String {
    format!("h={} nq={} nkv={} d={}", s.h, s.nq, s.nkv, s.d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_shapes_are_rejected_not_multiplied() {
        assert!(check_shape(&Shape::qwen3_06b(256)).is_ok());
        let huge = Shape { t: usize::MAX / 2, ..Shape::qwen3_06b(1) };
        assert!(check_shape(&huge).is_err());
        let wide = Dims { nkv: usize::MAX / 2 + 1, ..Dims::QWEN3_06B };
        assert!(check_shape(&wide.with_t(1)).is_err());
        assert!(check_dims(&wide).is_err() && check_dims(&Dims::QWEN3_06B).is_ok());
    }
}
