//! What a pass lets an observer change: the controls that show the model gate's resolution perturb
//! one layer's q, k, v here, as a wrong kernel would.

use fusegate_kernels::Observed;

/// Sees (and may change) each layer's q, k and v as the entry's op produced them.
pub trait Tap {
    fn qkv(&mut self, layer: usize, observed: &mut Observed);
}

/// Changes nothing.
pub struct Untouched;

impl Tap for Untouched {
    fn qkv(&mut self, _: usize, _: &mut Observed) {}
}
