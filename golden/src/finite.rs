//! Finiteness rules for goldens. A non-finite input row legitimately yields NaN outputs in that
//! row (HF propagates them; case nonfinite-h256-t9 pins that), so corruption is judged per row:
//! a NaN/Inf is only evidence of a broken golden where the row of x it came from is finite.

use half::bf16;

/// Per row of x [rows, h]: whether every element is finite. With h = 0 every row is (vacuously)
/// finite.
pub(crate) fn finite_rows(x: &[bf16], rows: usize, h: usize) -> Vec<bool> {
    if h == 0 {
        return vec![true; rows];
    }
    x.chunks_exact(h).map(|row| row.iter().all(|v| v.is_finite())).collect()
}

/// First element (flat index, value) that is non-finite in a row marked finite. `values` is
/// row-major with `rows` leading rows; rows beyond `row_ok` are not judged.
pub(crate) fn first_nonfinite_in_finite_row(
    values: impl ExactSizeIterator<Item = f32>,
    rows: usize,
    row_ok: &[bool],
) -> Option<(usize, f32)> {
    let len = values.len();
    if rows == 0 || len == 0 {
        return None;
    }
    let row_len = len / rows;
    values
        .enumerate()
        .find(|&(i, v)| !v.is_finite() && row_len > 0 && row_ok.get(i / row_len).copied().unwrap_or(false))
}

/// First non-finite element (flat index, value).
pub(crate) fn first_nonfinite(values: impl Iterator<Item = f32>) -> Option<(usize, f32)> {
    values.enumerate().find(|&(_, v)| !v.is_finite())
}

/// The multi-index of flat index `flat` in a row-major tensor with `dims`.
pub(crate) fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut index = vec![0; dims.len()];
    for (slot, &dim) in index.iter_mut().zip(dims).rev() {
        if dim > 0 {
            *slot = flat % dim;
            flat /= dim;
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_counts_only_in_rows_whose_input_is_finite() {
        let ok = [true, false, true];
        let v = [1.0, 2.0, f32::NAN, f32::INFINITY, 5.0, 6.0];
        assert_eq!(first_nonfinite_in_finite_row(v.into_iter(), 3, &ok), None);
        let v = [1.0, 2.0, f32::NAN, 4.0, 5.0, f32::NEG_INFINITY];
        let (i, val) = first_nonfinite_in_finite_row(v.into_iter(), 3, &ok).unwrap();
        assert_eq!((i, val), (5, f32::NEG_INFINITY));
    }

    #[test]
    fn rows_of_x_with_any_nonfinite_element_are_marked() {
        let x: Vec<bf16> = [1.0, f32::NAN, 3.0, 4.0, 5.0, f32::INFINITY].into_iter().map(bf16::from_f32).collect();
        assert_eq!(finite_rows(&x, 3, 2), [false, true, false]);
        assert_eq!(finite_rows(&[], 2, 0), [true, true]);
    }

    #[test]
    fn unravel_is_row_major() {
        assert_eq!(unravel(0, &[3, 4, 5]), [0, 0, 0]);
        assert_eq!(unravel(20 + 2 * 5 + 3, &[3, 4, 5]), [1, 2, 3]);
        assert_eq!(unravel(59, &[3, 4, 5]), [2, 3, 4]);
    }
}
