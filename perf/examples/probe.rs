//! Connects to an NVMe/TCP target, identifies it, writes and reads back a few blocks.
//! Usage: probe ADDR:PORT [SUBNQN]
// Test constants are small; a truncation would fail an assertion.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
use quire_perf::initiator::{self, Controller, ControllerOptions, DataDir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().ok_or("usage: probe ADDR:PORT [SUBNQN]")?.parse()?;
    let mut o = ControllerOptions::new(addr, args.next());
    o.digests.header = std::env::var("HDGST").is_ok();
    o.digests.data = std::env::var("DDGST").is_ok();
    let mut c = Controller::connect(&o)?;
    println!("connected: {} cntlid {} vs {:#x} cap {:#x}", c.subnqn(), c.cntlid(), c.version(), c.cap());
    println!("{:?}", c.identity());
    let ns = c.active_namespaces()?;
    println!("namespaces {ns:?}");
    let id = c.identify_namespace(ns[0])?;
    println!("ns {:?}", id);
    println!("queues granted {}", c.set_num_queues(2)?);
    c.keep_alive()?;
    let mut q = c.connect_io_queue(1, 8, 128 << 10)?;
    println!("io queue: digests {:?} maxh2c {} icd {}", q.digests(), q.maxh2cdata(), q.in_capsule_max());
    let bs = id.block_size;
    for &len in &[bs, 8 * bs, 32 * bs] {
        let nlb = len / bs;
        q.submit(initiator::write(ns[0], 100, nlb), DataDir::ToController, len, 1, |b| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = (i % 251) as u8
            }
        })?;
        wait(&mut q, |_| ())?;
        q.submit(initiator::read(ns[0], 100, nlb), DataDir::FromController, len, 2, |_| ())?;
        wait(&mut q, |d| assert!(d.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8), "data mismatch"))?;
        println!("write+read {len} ok");
    }
    q.submit(initiator::flush(ns[0]), DataDir::None, 0, 3, |_| ())?;
    wait(&mut q, |_| ())?;
    q.submit(initiator::write_zeroes(ns[0], 100, 8), DataDir::None, 0, 3, |_| ())?;
    wait(&mut q, |_| ())?;
    let (cmd, data) = initiator::dsm_deallocate(ns[0], &[initiator::DsmRange { slba: 108, nlb: 8 }]);
    q.submit(cmd, DataDir::ToController, data.len() as u32, 4, |b| b.copy_from_slice(&data))?;
    wait(&mut q, |_| ())?;
    q.submit(initiator::read(ns[0], 100, 16), DataDir::FromController, 16 * bs, 2, |_| ())?;
    wait(&mut q, |d| println!("after wz/dsm: nonzero bytes {}", d.iter().filter(|&&x| x != 0).count()))?;
    q.close();
    c.shutdown()?;
    println!("shut down");
    Ok(())
}

fn wait(q: &mut initiator::Connection, mut f: impl FnMut(&[u8])) -> Result<(), Box<dyn std::error::Error>> {
    let t = std::time::Instant::now();
    loop {
        let mut st = None;
        q.poll(&mut |d, data| {
            st = Some(d.status);
            f(data)
        })?;
        if let Some(s) = st {
            if !s.is_success() {
                return Err(format!("status {s}").into());
            }
            return Ok(());
        }
        if t.elapsed().as_secs() > 10 {
            return Err("timeout".into());
        }
    }
}
