//! The replication protocol under a deterministic simulator (`replica::sim`): peers
//! that crash and restart, peers cut from etcd and from each other, messages delayed
//! and reordered, pages moved and peers drained (`replica::migration`), the real
//! coordinator plan and rebalancer, a host that checks every read against
//! the last acknowledged write and, at the end, every copy against it.
//!
//! `QUIRE_SIM_SEEDS=N` runs seeds 1..=N (default 60, what CI runs); `QUIRE_SIM_SEED=S`
//! replays one seed. `scripts/soak.sh` runs thousands.

use quire_appliance::replica::sim::run_seed;

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("QUIRE_SIM_SEED") {
        return vec![s.parse().expect("QUIRE_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("QUIRE_SIM_SEEDS").ok().map_or(60, |s| s.parse().expect("QUIRE_SIM_SEEDS is a number"));
    (1..=n).collect()
}

#[test]
fn replication_survives_crashes_partitions_and_reordering_on_every_seed() {
    let mut failed = Vec::new();
    let (mut acked, mut crashes, mut partitions, mut promotions, mut reads, mut moves) = (0, 0, 0, 0, 0, 0);
    let (mut rebalanced, mut load_moves) = (0, 0);
    let seeds = seeds();
    for &seed in &seeds {
        match run_seed(seed) {
            Ok(s) => {
                acked += s.acked_writes;
                crashes += s.crashes;
                partitions += s.partitions;
                promotions += s.promotions;
                reads += s.reads;
                moves += s.moves;
                rebalanced += s.rebalanced;
                load_moves += s.load_moves;
            }
            Err(e) => failed.push((seed, e)),
        }
    }
    println!(
        "{} seeds: {} clean; {acked} writes acknowledged, {reads} reads checked, {crashes} crashes, \
         {partitions} partitions, {promotions} promotions, {moves} page moves, {rebalanced} by the rebalancer \
         ({load_moves} for load)",
        seeds.len(),
        seeds.len() - failed.len()
    );
    if let Some((seed, e)) = failed.first() {
        panic!(
            "{} of {} seeds failed; first: seed {seed} (replay: QUIRE_SIM_SEED={seed}):\n{e}",
            failed.len(),
            seeds.len()
        );
    }
    // The runs did what they are for.
    assert!(
        acked > 100 * seeds.len() as u64
            && crashes > 0
            && partitions > 0
            && promotions > 0
            && moves > 0
            && rebalanced > 0
            && load_moves > 0
    );
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(7).map(|s| (s.acked_writes, s.reads, s.retries, s.plans));
    let b = run_seed(7).map(|s| (s.acked_writes, s.reads, s.retries, s.plans));
    assert_eq!(a, b);
}
