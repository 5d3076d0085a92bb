//! A model check stopped between steps (what Ctrl-C does in `cargo xtask model-check`): no step
//! starts after the request, what finished comes back, and the run says it is not whole.

use fusegate_harness::cancel::{Cancel, Ran};
use fusegate_kernels::EntryId;
use fusegate_kernels::cpu::Cpu;
use fusegate_model::controls::CONTROLS;
use fusegate_model::gate::{self, Options, committed_goldens, default_golden_root};

fn options(models: usize) -> Options {
    let goldens: Vec<_> = committed_goldens(&default_golden_root()).into_iter().take(models).collect();
    assert_eq!(goldens.len(), models, "the committed model goldens");
    Options {
        goldens,
        checkpoint: None,
        entries: vec![EntryId::Standard.entry(), EntryId::F32.entry()],
        controls: true,
    }
}

#[test]
fn a_cancel_after_the_first_entry_stops_the_check_there() {
    let opts = options(1);
    let cancel = Cancel::new();
    // The line of the first judged entry raises the flag, as a Ctrl-C during it would.
    let hear = |line: &str| {
        if line.contains(EntryId::Standard.name()) {
            cancel.request();
        }
    };
    let ran = gate::run_until(&Cpu, &opts, &hear, &cancel).unwrap_or_else(|e| panic!("{e}"));
    let Ran::Interrupted { partial, ran, planned } = ran else { panic!("a cancelled check came back whole") };
    assert_eq!((ran, planned), (1, 2 + CONTROLS.len()));
    let [model] = partial.models.as_slice() else { panic!("{} models", partial.models.len()) };
    let judged: Vec<EntryId> = model.entries.iter().map(|e| e.entry).collect();
    assert_eq!(judged, [EntryId::Standard]);
    assert!(model.controls.is_empty(), "a control ran after the cancel");
}

#[test]
fn a_cancel_before_the_check_loads_nothing() {
    let opts = options(2);
    let cancel = Cancel::new();
    cancel.request();
    let ran = gate::run_until(&Cpu, &opts, &|line| panic!("a step ran: {line}"), &cancel).unwrap();
    let Ran::Interrupted { partial, ran: 0, planned } = ran else { panic!("{ran:?}") };
    assert_eq!(planned, 2 * (2 + CONTROLS.len()));
    assert!(partial.models.is_empty());
}
