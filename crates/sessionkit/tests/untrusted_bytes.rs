//! Record decoding of arbitrary bytes allocates in proportion to its input (issue 14, item 1):
//! a length prefix that claims gigabytes in a few bytes must not make the process reserve them.
//!
//! Measured with a counting global allocator (this test binary only). Counts are kept per
//! thread, so the test threads running beside each other do not disturb one another.
#![allow(unsafe_code)] // the counting allocator
#![allow(clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use sessionkit::store::{Record, Value};

struct Counting;

thread_local! {
    // `const` and without destructors: touching them never allocates, so the allocator may.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn size(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

// SAFETY: every call is passed through to `System` unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(size(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(size(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-size(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(size(new_size) - size(layout.size()));
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Most bytes held at once on this thread by `f` beyond what was held before it.
fn peak_of(f: impl FnOnce()) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    usize::try_from(PEAK.with(Cell::get) - base).unwrap_or(0)
}

/// What a decode of `len` input bytes may hold at most: a generous constant factor (map nodes,
/// strings and the error value) plus a fixed allowance, far below any length a prefix can claim.
fn bound(len: usize) -> usize {
    64 * len + 64 * 1024
}

/// A record of `n` entries, encoded: valid input to splice junk into.
fn encoded(n: usize) -> Vec<u8> {
    let mut r = Record::default();
    r.meta.user_id = Some("42".into());
    r.meta.user_agent = Some("Mozilla/5.0 é".into());
    for i in 0..n {
        r.data.insert(format!("k{i}"), Value::to_json(&i).unwrap());
    }
    r.encode()
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the measurement itself: a 1 MiB buffer must show up.
    let peak = peak_of(|| {
        let v = std::hint::black_box(vec![1u8; 1 << 20]);
        drop(v);
    });
    assert!(peak >= 1 << 20, "{peak}");
}

#[test]
fn length_prefix_bombs_allocate_nothing_large() {
    // MessagePack headers claiming 4 GiB (str32, bin32) or 4 billion entries (map32, array32),
    // at the top level, as the data map, and as one value inside it.
    let bombs: Vec<Vec<u8>> = vec![
        vec![1, 0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![1, 0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![1, 0xdb, 0xff, 0xff, 0xff, 0xff],
        vec![1, 0xc6, 0xff, 0xff, 0xff, 0xff],
        vec![1, 0x92, 0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![1, 0x92, 0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![1, 0x92, 0x81, 0xa1, b'k', 0xdb, 0xff, 0xff, 0xff, 0xff],
        vec![1, 0x92, 0x80, 0xdc, 0xff, 0xff],
        vec![1, 0x92, 0x80, 0x99, 0xdb, 0xff, 0xff, 0xff, 0xff],
    ];
    for b in bombs {
        let peak = peak_of(|| assert!(Record::decode(&b).is_err()));
        assert!(peak < 64 * 1024, "{b:x?}: {peak} bytes");
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes, tagged or not: never a panic, memory bounded by the input's size.
    #[test]
    fn arbitrary_bytes_decode_in_bounded_memory(
        tagged in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let input = if tagged { [&[1u8][..], &bytes].concat() } else { bytes };
        let peak = peak_of(|| { let _ = Record::decode(&input); });
        prop_assert!(peak <= bound(input.len()), "{} bytes in, {} held", input.len(), peak);
    }

    /// Junk spliced into a valid encoding (where length prefixes sit beside real data).
    #[test]
    fn spliced_encodings_decode_in_bounded_memory(
        n in 0usize..40,
        at in any::<prop::sample::Index>(),
        cut in 0usize..8,
        ins in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut input = encoded(n);
        let at = at.index(input.len() + 1);
        let end = (at + cut).min(input.len());
        input.splice(at..end, ins);
        let peak = peak_of(|| { let _ = Record::decode(&input); });
        prop_assert!(peak <= bound(input.len()), "{} bytes in, {} held", input.len(), peak);
    }
}
