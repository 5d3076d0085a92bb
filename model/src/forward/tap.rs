//! What a pass lets an observer change: the controls that show the model gate's resolution perturb
//! one layer's q, k, v here, as a wrong kernel would.

use fusegate_kernels::Observed;

/// Sees (and may change) each layer's q, k and v as the entry's op produced them.
pub trait Tap {
    fn qkv(&mut self, layer: usize, observed: &mut Observed);
    /// Whether [`Tap::qkv`] may change `layer`'s q, k, v: a device pass copies them to the host
    /// and back only for such layers.
    fn touches(&self, _layer: usize) -> bool {
        true
    }
}

/// Changes nothing.
pub struct Untouched;

impl Tap for Untouched {
    fn qkv(&mut self, _: usize, _: &mut Observed) {}
    fn touches(&self, _: usize) -> bool {
        false
    }
}
