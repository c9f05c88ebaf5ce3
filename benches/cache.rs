//! In-process benchmark of the cache's Rust API: 1M keys of 32 bytes, 100-byte values;
//! get (uniform and Zipf 0.99), set, and a 90% get / 10% set mix, on one thread. (The C
//! driver `cachebench` measures the same through libp99.so, with 1 and 2 threads, and the
//! memory overhead per item.)
//!
//! cargo bench --bench cache

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use p99::cache::{Cache, Config, Mode};

const KEYS: usize = 1_000_000;
const KEY_LEN: usize = 32;
const VALUE_LEN: usize = 100;
const BATCH: usize = 1024;

fn key(i: u32, out: &mut [u8; KEY_LEN]) {
    out[..4].copy_from_slice(b"key:");
    let mut n = i;
    for p in (4..KEY_LEN).rev() {
        out[p] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Zipf(0.99) ranks by inverse CDF, mapped through a fixed permutation of the keys.
fn zipf_sequence(n: usize, rng: &mut Rng) -> Vec<u32> {
    let mut cdf = Vec::with_capacity(KEYS);
    let mut sum = 0.0;
    for r in 0..KEYS {
        sum += 1.0 / ((r + 1) as f64).powf(0.99);
        cdf.push(sum);
    }
    let mut perm: Vec<u32> = (0..KEYS as u32).collect();
    for i in (1..KEYS).rev() {
        perm.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    (0..n)
        .map(|_| {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * sum;
            perm[cdf.partition_point(|&c| c < u).min(KEYS - 1)]
        })
        .collect()
}

fn loaded_cache() -> Cache {
    let c = Cache::new(Config {
        heap_bytes: KEYS * (KEY_LEN + VALUE_LEN + 8) * 3 / 2 + (64 << 20),
        expected_items: KEYS,
        ..Config::default()
    })
    .unwrap();
    let value = [b'v'; VALUE_LEN];
    let mut k = [0u8; KEY_LEN];
    for i in 0..KEYS as u32 {
        key(i, &mut k);
        c.set(&k, &value, 0, 0).unwrap();
    }
    c
}

fn bench(cr: &mut Criterion) {
    let cache = loaded_cache();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let uniform: Vec<u32> = (0..1 << 20).map(|_| (rng.next() % KEYS as u64) as u32).collect();
    let zipf = zipf_sequence(1 << 20, &mut rng);
    let is_set: Vec<bool> = (0..1 << 20).map(|_| rng.next() % 10 == 0).collect();
    let value = [b'w'; VALUE_LEN];

    let mut g = cr.benchmark_group("cache_1M_32B_100B");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, seq) in [("uniform", &uniform), ("zipf0.99", &zipf)] {
        let mut at = 0usize;
        g.bench_function(format!("get_{name}"), |b| {
            b.iter_batched(
                || {
                    at = (at + BATCH) % (seq.len() - BATCH);
                    at
                },
                |start| {
                    let mut k = [0u8; KEY_LEN];
                    let mut sum = 0u64;
                    for &i in &seq[start..start + BATCH] {
                        key(i, &mut k);
                        let it = cache.get(&k).unwrap().unwrap();
                        sum += u64::from(it.value()[VALUE_LEN - 1]);
                    }
                    sum
                },
                BatchSize::SmallInput,
            )
        });
        let mut at = 0usize;
        g.bench_function(format!("mix90_10_{name}"), |b| {
            b.iter_batched(
                || {
                    at = (at + BATCH) % (seq.len() - BATCH);
                    at
                },
                |start| {
                    let mut k = [0u8; KEY_LEN];
                    let mut sum = 0u64;
                    for (j, &i) in seq[start..start + BATCH].iter().enumerate() {
                        key(i, &mut k);
                        if is_set[start + j] {
                            cache.store(&k, &value, 0, 0, Mode::Set, 0).unwrap();
                        } else if let Some(it) = cache.get(&k).unwrap() {
                            sum += u64::from(it.value()[VALUE_LEN - 1]);
                        }
                    }
                    sum
                },
                BatchSize::SmallInput,
            )
        });
    }
    let mut at = 0usize;
    g.bench_function("set_uniform", |b| {
        b.iter_batched(
            || {
                at = (at + BATCH) % (uniform.len() - BATCH);
                at
            },
            |start| {
                let mut k = [0u8; KEY_LEN];
                for &i in &uniform[start..start + BATCH] {
                    key(i, &mut k);
                    let mut r = cache.reserve(&k, VALUE_LEN, 0, 0).unwrap();
                    r.write(&value).unwrap();
                    cache.commit(r, Mode::Set, 0).unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
