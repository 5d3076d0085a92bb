//! The forward pass's own invariants on a small synthetic model: decoding through the KV cache
//! computes, position by position, exactly what one prefill computes (every reference op is
//! row-independent and attention sees the same keys in the same order), and the entry's op is the
//! registry's (a wrong rounding point moves the output).

mod common;

use fusegate_kernels::cpu::Cpu;
use fusegate_kernels::{EntryId, registry};
use fusegate_model::forward::tap::Untouched;
use fusegate_model::forward::{Forward, ForwardPass, Logits, ModelTables};
use fusegate_model::{SynthStyle, synthesize};

#[test]
fn decoding_through_the_cache_is_the_prefill_bit_for_bit() {
    let w = synthesize(&common::small(3), 11, SynthStyle::Stable);
    let tables = ModelTables::new(&w);
    let mut f = Forward::new(&tables, &w, &Cpu, registry::baseline()).unwrap();
    let tokens = [5u32, 77, 300, 12, 499, 3, 250];
    let prefill = f.teacher_forced(&tokens, Logits::Every, &mut Untouched).unwrap();
    f.reset();
    let v = w.config.vocab_size;
    for (t, &tok) in tokens.iter().enumerate() {
        let step = f.step(&[tok], Logits::Last, &mut Untouched).unwrap();
        assert_eq!(step.logits, prefill.logits[t * v..(t + 1) * v], "logits at position {t}");
        for (l, (a, b)) in step.layers.iter().zip(&prefill.layers).enumerate() {
            let h = w.config.hidden_size;
            assert_eq!(a[..], b[t * h..(t + 1) * h], "layer {l} at position {t}");
        }
    }
    // Greedy decoding is the argmax chain of these logits.
    let greedy = f.greedy(&tokens[..3], &[0; 4], &mut Untouched).unwrap();
    assert!(!greedy.is_empty() && greedy.iter().all(|&g| (g as usize) < v));
}

#[test]
fn the_entry_in_every_layer_decides_the_numerics() {
    let w = synthesize(&common::small(2), 3, SynthStyle::Stable);
    let tables = ModelTables::new(&w);
    let tokens = [9u32, 8, 7, 6, 5];
    let run = |id: EntryId| {
        let mut f = Forward::new(&tables, &w, &Cpu, id.entry()).unwrap();
        f.teacher_forced(&tokens, Logits::Every, &mut Untouched).unwrap()
    };
    let (standard, mixed, once) = (run(EntryId::Standard), run(EntryId::Mixed), run(EntryId::MutantRoundOnce));
    assert_eq!(standard.logits, mixed.logits, "the same numerics on the CPU: the same bits");
    assert_ne!(standard.layers[0], once.layers[0], "another rounding point changes layer 0");
    // An out-of-vocabulary token is an error, not a panic.
    let mut f = Forward::new(&tables, &w, &Cpu, registry::baseline()).unwrap();
    let err = f.teacher_forced(&[512], Logits::Every, &mut Untouched).unwrap_err().to_string();
    assert!(err.contains("512") && err.contains("vocabulary"), "{err}");
}
