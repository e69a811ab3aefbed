//! chordkv's microbenchmarks: one `main` configures criterion once; suites per area.
//!
//! Run: `cargo bench -p chordkv-bench` (or `-- protocol` for one suite). Targets (issue 2):
//! decoding a GET frame under 100 ns, closest preceding finger under 50 ns.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chordkv_core::chord::routing::RoutingTable;
use chordkv_core::rng::Rng;
use chordkv_protocol::{decode, decode_frame, Frame, Id, Message, NodeRef};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn frames() -> Vec<(&'static str, Frame)> {
    let key = Bytes::from_static(b"user:0000012345");
    vec![
        ("get", Frame::new(7, Message::Get { key: key.clone() })),
        (
            "put_16b",
            Frame::new(
                7,
                Message::Put {
                    key: key.clone(),
                    value: Bytes::from(vec![b'x'; 16]),
                },
            ),
        ),
        (
            "put_1kib",
            Frame::new(
                7,
                Message::Put {
                    key,
                    value: Bytes::from(vec![b'x'; 1024]),
                },
            ),
        ),
    ]
}

fn protocol(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    for (name, frame) in frames() {
        let bytes = Bytes::from(frame.to_bytes().expect("encodes"));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut out = Vec::with_capacity(4096);
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&frame).encode(&mut out).expect("encodes");
                black_box(out.len())
            })
        });
        g.bench_function(format!("decode_frame/{name}"), |b| {
            b.iter(|| decode_frame(black_box(bytes.clone())).expect("decodes"))
        });
        g.bench_function(format!("decode_stream/{name}"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&bytes[..]),
                |buf| decode(buf).expect("decodes").expect("whole frame"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hashing");
    for len in [16usize, 64] {
        let key = vec![b'k'; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("key_id/{len}b"), |b| b.iter(|| Id::hash(black_box(&key))));
    }
    g.finish();
}

/// A routing table as a node in a converged ring of `n` nodes would have it.
fn table_in_ring(n: usize, rng: &mut Rng) -> RoutingTable {
    let mut ids: Vec<Id> = (0..n)
        .map(|_| {
            let mut b = [0u8; 20];
            rng.fill(&mut b);
            Id(b)
        })
        .collect();
    ids.sort();
    let node = |i: usize| NodeRef {
        id: ids[i % n],
        addr: SocketAddr::from(([127, 0, 0, 1], (i % n) as u16)).into(),
    };
    let me = node(0);
    let mut t = RoutingTable::classic(me);
    t.set_successors((1..=8).map(node), 8);
    for f in 0..t.finger_count() {
        let start = t.finger_start(f);
        let owner = ids.partition_point(|id| *id < start) % n;
        t.set_finger(f, Some(node(owner)));
    }
    t
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    let mut rng = Rng::new(1);
    for n in [64usize, 1024, 100_000] {
        let table = table_in_ring(n, &mut rng);
        let targets: Vec<Id> = (0..1024)
            .map(|_| {
                let mut b = [0u8; 20];
                rng.fill(&mut b);
                Id(b)
            })
            .collect();
        let mut i = 0;
        g.bench_function(format!("closest_preceding/{n}_nodes"), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                table.closest_preceding(black_box(&targets[i]))
            })
        });
    }
    g.finish();
}

/// The memory store's point operations on the node's hot path (`get_with_id`, `put_with_id`:
/// the id comes from routing), at random keys of stores of 10,000 to 1,000,000 entries (16-byte
/// keys, 16-byte values): what its index costs once the data no longer fits in the caches.
/// `arc_`: a vnode's store, whose keys are those of one arc of the ring (here an eighth, from
/// 0.3 of the way round), not of the whole ring.
fn store(c: &mut Criterion) {
    use chordkv_core::store::{Entry, MemoryStore, Store};
    let mut g = c.benchmark_group("store");
    let mut rng = Rng::new(1);
    let (arc_start, arc_end) = (0.3, 0.3 + 1.0 / 8.0);
    for (n, arc) in [
        (10_000usize, false),
        (100_000, false),
        (1_000_000, false),
        (10_000, true),
        (100_000, true),
    ] {
        let store = MemoryStore::new();
        let keys: Vec<(Id, Bytes)> = (0..)
            .map(|i| {
                let key = Bytes::from(format!("key:{i:011}"));
                (Id::of_key(&key), key)
            })
            .filter(|(id, _)| !arc || (arc_start..arc_end).contains(&id.as_fraction()))
            .take(n)
            .collect();
        let n = if arc { format!("arc_{n}") } else { n.to_string() };
        let value = Bytes::from(vec![b'v'; 16]);
        for (id, key) in &keys {
            let entry = Entry::new(1, Some(value.clone()));
            store.put_with_id(id, key, entry).expect("memory store");
        }
        // A million random positions, read in order: the keys touched are spread over the store.
        let order: Vec<u32> = (0..1 << 20)
            .map(|_| rng.below(keys.len() as u64) as u32)
            .collect();
        let mut i = 0;
        g.bench_function(format!("get_with_id/{n}_keys"), |b| {
            b.iter(|| {
                i = (i + 1) & ((1 << 20) - 1);
                let (id, key) = &keys[order[i] as usize];
                store
                    .get_with_id(black_box(id), black_box(key))
                    .expect("memory store")
            })
        });
        let mut version = 2;
        g.bench_function(format!("put_with_id/{n}_keys"), |b| {
            b.iter(|| {
                i = (i + 1) & ((1 << 20) - 1);
                version += 1;
                let (id, key) = &keys[order[i] as usize];
                let entry = Entry::new(version, Some(value.clone()));
                store
                    .put_with_id(black_box(id), key, entry)
                    .expect("memory store")
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! { name = benches; config = config(); targets = protocol, hashing, routing, store }
criterion_main!(benches);
