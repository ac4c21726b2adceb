//! Cleanup of what the harness starts, in a sandbox: programs and everything they started go
//! when their guard drops, when they are stopped, when a one-shot command ends or times out,
//! and when a test panics with a topology up.

use std::time::{Duration, Instant};

use crate::{Error, Topology, inventory, sandboxed};

/// Waits until the sandbox holds exactly `n` processes besides the test, and returns them.
fn wait_for_processes(n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = inventory().expect("inventory").processes;
        if procs.len() == n || Instant::now() >= deadline {
            return procs;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What is left in the sandbox besides the test itself (zombies included): nothing.
fn assert_no_processes(when: &str) {
    let left = wait_for_processes(0);
    assert!(left.is_empty(), "{when}: left behind {left:?}");
}

#[test]
fn a_program_and_what_it_started_go_together() {
    sandboxed(|| -> Result<(), Error> {
        let topo = Topology::builder().nodes(1).build()?;
        let ns = &topo.node(1).netns;

        // Dropped guard: the shell and both of its children.
        let p = ns.spawn(["sh", "-c", "sleep 600 & sleep 600 & wait"])?;
        assert_eq!(wait_for_processes(3).len(), 3, "sh and two sleeps");
        drop(p);
        assert_no_processes("after dropping the guard");

        // Graceful stop: SIGTERM reaches the program, what it started goes with it.
        let p = ns.spawn(["sh", "-c", "sleep 600 & wait"])?;
        assert_eq!(wait_for_processes(2).len(), 2, "sh and sleep");
        p.stop();
        assert_no_processes("after stop");

        // A one-shot that leaves a program behind returns when it exits (the leftover does
        // not hold its output open), and the leftover is gone.
        let started = Instant::now();
        let out = ns.exec(["sh", "-c", "sleep 600 & echo started"], Duration::from_secs(10))?.ok()?;
        assert_eq!(out.stdout.trim(), "started");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert_no_processes("after a one-shot that backgrounds a program");

        // A one-shot at its time limit: it and its children.
        let err = ns.exec(["sh", "-c", "sleep 600 & sleep 600; echo never"], Duration::from_millis(300));
        assert!(matches!(err, Err(Error::Timeout { .. })), "{err:?}");
        assert_no_processes("after a one-shot timed out");

        topo.teardown()?;
        let inv = inventory()?;
        assert!(inv.is_clean(), "{inv:?}");
        Ok(())
    });
}

#[test]
fn a_panic_with_a_topology_up_leaves_nothing() {
    sandboxed(|| -> Result<(), Error> {
        let ids = std::sync::Mutex::new(String::new());
        let panicked = std::panic::catch_unwind(|| {
            let topo = Topology::builder().nodes(2).build().expect("topology");
            *ids.lock().unwrap() = topo.id().to_owned();
            let pod = topo.add_pod(topo.node(1), "x", "a").expect("pod");
            let _http = pod.netns.http_server(8080, "x/a").expect("http server");
            let _iperf = topo.node(2).netns.iperf3_server(5201).expect("iperf3");
            let _sh = pod.netns.spawn(["sh", "-c", "sleep 600 & wait"]).expect("sh");
            let _capture = topo.wire().capture(crate::topology::WIRE_BRIDGE, "").expect("capture");
            assert_eq!(wait_for_processes(4).len(), 4, "iperf3, sh, sleep, tcpdump");
            panic!("deliberate panic with the topology up");
        });
        assert!(panicked.is_err());
        let inv = inventory()?;
        assert!(inv.is_clean(), "after a panic in topology {}: {inv:?}", ids.lock().unwrap());
        let state = std::path::Path::new(crate::topology::STATE_ROOT).join(ids.lock().unwrap().as_str());
        assert!(state.exists(), "logs stay for the failure message until the sandbox goes");
        Ok(())
    });
}
